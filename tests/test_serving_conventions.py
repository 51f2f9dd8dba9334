"""`serve` as node_exporter and the Prometheus exporter-toolkit behave, over real sockets on 127.0.0.1
and ::1: several listen addresses and `:PORT` on IPv6 and IPv4, a telemetry path of choice, JSON logs
from the first line to the last, quiet steady refreshes, process_* metrics, our own answer to requests
that do not parse and Go's to plain HTTP on the TLS port, SIGHUP reloading the web config and the
policy, and the revision in --version and build_info."""

from __future__ import annotations

import base64
import errno
import gzip
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from passthrough_exporter import __version__
from passthrough_exporter.serving import server
from passthrough_exporter.rendering.bodies import gzip_append, gzipped_open
from passthrough_exporter.buildinfo import git_revision, revision
from passthrough_exporter.rendering.metrics import MetricOptions
from passthrough_exporter.serving.refresher import Refresher
from passthrough_exporter.serving.server import ExporterServer, ListenError, serve
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.serving.webconfig import WebConfig, load
from tests.support import hosts
from tests.support.client import connect, free_port, raw, request
from tests.support.local import inspector, local_refresher
from tests.support.parse import log_messages, logfmt
from tests.support.process import EXE, exporter
from tests.support.sysfs_builder import SysfsTree

ROOT = Path(__file__).resolve().parents[1]
GO_PLAIN_HTTP_TO_TLS = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this host")


def wait_until(check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


@pytest.fixture
def running() -> Iterator[list[ExporterServer]]:
    """Servers a test starts, shut down after it."""
    servers: list[ExporterServer] = []
    yield servers
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def started(servers: list[ExporterServer], address, refresher: Refresher, web: WebConfig | None = None,
            **kw) -> ExporterServer:
    httpd = serve(address, refresher, web or WebConfig(), **kw)
    servers.append(httpd)
    return httpd


# --- listen addresses ---------------------------------------------------------------------------

def test_two_listen_addresses_both_answer(refresher: Refresher, running: list[ExporterServer]) -> None:
    httpd = started(running, [("127.0.0.1", 0), ("127.0.0.1", 0)], refresher)
    ports = [address[1] for address in httpd.server_addresses]
    assert len(set(ports)) == 2
    for port in ports:
        assert request(port, "/healthz").status == 200


def test_an_address_that_cannot_be_listened_on_leaves_none_open(refresher: Refresher) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = free_port()
        with pytest.raises(ListenError) as caught:
            ExporterServer([("127.0.0.1", free), ("127.0.0.1", port)], refresher, WebConfig())
        assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
        assert caught.value.errno == errno.EADDRINUSE
    with pytest.raises(ConnectionRefusedError):  # the first address was let go too
        connect(free, timeout=5).close()


def test_port_alone_answers_on_ipv4(refresher: Refresher, running: list[ExporterServer]) -> None:
    httpd = started(running, ("", 0), refresher)
    assert request(httpd.server_address[1], "/healthz").status == 200


@needs_ipv6
def test_port_alone_is_one_socket_for_ipv6_and_ipv4(refresher: Refresher, running: list[ExporterServer]) -> None:
    httpd = started(running, ("", 0), refresher)
    (sock,) = httpd.sockets
    assert sock.family == socket.AF_INET6 and sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    port = httpd.server_address[1]
    assert request(port, "/healthz", host="::1").status == 200
    assert request(port, "/healthz").status == 200


@needs_ipv6
def test_a_loopback_address_is_listened_on_as_given(refresher: Refresher, running: list[ExporterServer]) -> None:
    v6 = started(running, ("::1", 0), refresher)
    assert request(v6.server_address[1], "/healthz", host="::1").status == 200
    v4 = started(running, ("127.0.0.1", 0), refresher)
    assert v4.sockets[0].family == socket.AF_INET and request(v4.server_address[1], "/healthz").status == 200


def test_port_alone_falls_back_to_ipv4_without_ipv6(refresher: Refresher, running: list[ExporterServer],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = server._bound

    def no_ipv6(family: socket.AddressFamily, address: tuple[str, int], dual_stack: bool = False) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real(family, address, dual_stack)

    monkeypatch.setattr(server, "_bound", no_ipv6)
    httpd = started(running, ("", 0), refresher)
    assert httpd.sockets[0].family == socket.AF_INET
    assert request(httpd.server_address[1], "/healthz").status == 200


def test_serve_listens_on_every_address_given(host: SysfsTree) -> None:
    second = free_port()
    with exporter(host.sys, host.proc, "--web.listen-address", f"127.0.0.1:{second}") as run:
        assert request(run.port, "/healthz").status == 200 and request(second, "/healthz").status == 200
        wait_until(lambda: f"127.0.0.1:{run.port}, 127.0.0.1:{second}" in run.log(), what="the listening line")


# --- telemetry path --------------------------------------------------------------------------------

def test_the_telemetry_path_moves_the_metrics(host: SysfsTree, running: list[ExporterServer]) -> None:
    options = MetricOptions(telemetry_path="/x/metrics")
    refresher = local_refresher(SysfsSource(str(host.sys), str(host.proc)), inspector(), 3600, options)
    refresher.refresh()
    httpd = started(running, ("127.0.0.1", 0), refresher, telemetry_path="/x/metrics")
    port = httpd.server_address[1]
    resp = request(port, "/x/metrics")
    assert resp.status == 200 and b"passthrough_device_info{" in resp.body
    assert request(port, "/metrics").status == 404
    resp = request(port, "/")
    page = resp.body
    assert resp.status == 200 and b'<a href="/x/metrics">/x/metrics</a>' in page and b'href="/metrics"' not in page


def test_serve_takes_the_telemetry_path_and_refuses_a_taken_one(host: SysfsTree) -> None:
    with exporter(host.sys, host.proc, "--web.telemetry-path", "/prom") as run:
        assert request(run.port, "/prom").status == 200
        assert request(run.port, "/metrics").status == 404
        assert b'href="/prom"' in request(run.port, "/").body
    for bad, why in (("metrics", "expected a path such as /metrics"), ("/healthz", "that path serves something else")):
        out = subprocess.run([EXE, "serve", "--web.telemetry-path", bad, "--web.listen-address", "127.0.0.1:0"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and log_messages(out.stderr) == [f"--web.telemetry-path {bad!r}: {why}"]


# --- logs ----------------------------------------------------------------------------------------------

def json_lines(stderr: str) -> list[dict]:
    """Every line of `stderr` as a JSON log object; a line that is not one fails the test."""
    lines = [json.loads(line) for line in stderr.splitlines()]
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= line.keys() and line["level"] in ("debug", "info", "warn", "error")
    return lines


def test_json_logs_from_a_start_up_error(host: SysfsTree) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([EXE, "--log.format", "json", "serve", "--web.listen-address", f"127.0.0.1:{port}",
                              "--path.sysfs", str(host.sys), "--path.procfs", str(host.proc)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    lines = json_lines(out.stderr)
    assert [line["msg"] for line in lines if line["level"] == "error"] == [
        f"cannot listen on 127.0.0.1:{port}: Address already in use"]
    # A policy file that cannot be read stops serve before anything starts: one line, JSON too.
    out = subprocess.run([EXE, "serve", "--log.format", "json", "--policy", str(host.sys / "nope.toml"),
                          "--web.listen-address", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    (line,) = json_lines(out.stderr)
    assert out.returncode == 1 and line["level"] == "error" and "nope.toml" in line["msg"]


def test_json_logs_from_start_to_shutdown(host: SysfsTree) -> None:
    with exporter(host.sys, host.proc, "--log.format", "json", log_level="debug") as run:
        assert request(run.port, "/metrics").status == 200
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(15) == 0
    lines = json_lines(run.final_log)
    messages = [line["msg"] for line in lines]
    assert any(m.startswith("listening on 127.0.0.1:") for m in messages)
    assert any(m.startswith("refreshed ") for m in messages)
    assert messages[-1] == "shutting down (SIGTERM)"
    assert all(line["ts"].endswith("Z") for line in lines)


def test_a_steady_refresh_is_quiet_at_info(tree: SysfsTree, caplog: pytest.LogCaptureFixture) -> None:
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    caplog.set_level(logging.DEBUG, logger="passthrough_exporter.serving.refresher")
    refresher = local_refresher(SysfsSource(str(tree.sys), str(tree.proc)), inspector(), interval=3600)

    def refreshes() -> list[int]:
        """The levels of the refresh lines logged since the last call."""
        levels = [r.levelno for r in caplog.records if r.getMessage().startswith("refreshed ")]
        caplog.clear()
        return levels

    refresher.refresh()
    assert refreshes() == [logging.INFO]  # the first tells what was found
    for _ in range(3):
        refresher.refresh()
    assert refreshes() == [logging.DEBUG] * 3  # nothing changed: nothing to tell at info
    hosts.sriov_nic(tree)  # devices (and findings) come
    refresher.refresh()
    refresher.refresh()
    assert refreshes() == [logging.INFO, logging.DEBUG]


def test_the_refresh_worker_is_quiet_at_info_too(host: SysfsTree, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="passthrough_exporter.serving.refresher")
    refresher = Refresher(["serve", "--path.sysfs", str(host.sys), "--path.procfs", str(host.proc)], interval=3600)
    refresher.start_worker()
    try:
        for _ in range(3):
            refresher.refresh()
    finally:
        refresher.stop()
    assert [r.levelno for r in caplog.records if r.getMessage().startswith("refreshed ")] == [
        logging.INFO, logging.DEBUG, logging.DEBUG]


# --- process metrics ---------------------------------------------------------------------------

def test_process_metrics_are_served_per_scrape_and_pass_promtool(refresher: Refresher,
                                                                  running: list[ExporterServer]) -> None:
    httpd = started(running, ("127.0.0.1", 0), refresher)
    port = httpd.server_address[1]
    body = request(port, "/metrics").body
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "process_max_fds",
                 "process_start_time_seconds", "process_virtual_memory_bytes"):
        assert name in families, name
    assert families["process_resident_memory_bytes"].samples[0].value > 1e6
    assert families["process_open_fds"].samples[0].value >= 3
    start = families["process_start_time_seconds"].samples[0].value
    assert time.time() - 3600 < start <= time.time()
    # The same whether gzipped or not: one gzip member joined from the refresh's and this scrape's.
    zipped = request(port, "/metrics", headers={"Accept-Encoding": "gzip"}).body
    assert b"process_open_fds " in gzip.decompress(zipped)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    for text in (body, gzip.decompress(zipped)):
        out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert out.returncode == 0 and out.stdout == b"" and out.stderr == b"", out


def test_gzip_append_makes_one_member_without_compressing_the_first_part_again() -> None:
    first = b"".join(b"passthrough_device_info{device=\"pci_%d\"} 1.0\n" % i for i in range(5000))
    extra = b"process_open_fds 7.0\n"
    member = gzipped_open(first)
    assert gzip.decompress(member) == first
    head, tail = gzip_append(member, extra)
    assert bytes(head) == member[:len(head)] and len(tail) < 64
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert inflater.decompress(bytes(head) + tail) == first + extra
    assert inflater.eof and inflater.unused_data == b""
    assert gzip.decompress(b"".join(gzip_append(gzipped_open(b""), b""))) == b""


# --- requests that do not parse ----------------------------------------------------------------------

def test_a_20_kb_request_line_gets_our_own_431_without_echo(refresher: Refresher,
                                                           running: list[ExporterServer]) -> None:
    httpd = started(running, ("127.0.0.1", 0), refresher)
    port = httpd.server_address[1]
    marker = b"echo-me-" * 2500  # 20 kB
    out = raw(port, b"GET /api/devices/" + marker + b" HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10, until_closed=True)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ", 1)[1] == b"431 Request Header Fields Too Large"
    assert body == b"Request Header Fields Too Large\n"
    assert b"echo-me" not in out and b"bytearray" not in out and b"Got more than" not in out
    headers = head.decode().lower()
    assert "server: passthrough-exporter/" in headers and "x-content-type-options: nosniff" in headers
    assert request(port, "/healthz").status == 200  # and it serves on


@pytest.mark.parametrize("request_bytes", [
    b"GET /echo-me\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Echo-Me: a\x00b\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\necho-me\r\n\r\n",
    b"ECHO(ME) /metrics HTTP/1.1\r\nHost: x\r\n\r\n",  # no token: no method (a token one is 405)
])
def test_a_malformed_request_gets_our_own_400_without_echo(refresher: Refresher, running: list[ExporterServer],
                                                          request_bytes: bytes) -> None:
    httpd = started(running, ("127.0.0.1", 0), refresher)
    out = raw(httpd, request_bytes, timeout=10, until_closed=True)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ", 1)[1] == b"400 Bad Request" and body == b"Bad Request\n"
    assert b"echo" not in out.lower()


# --- plain HTTP to the TLS port --------------------------------------------------------------------

def tls_config(certs: Path, tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"tls_server_config:\n  cert_file: {certs}/server.crt\n  key_file: {certs}/server.key\n{extra}")
    return cfg


@pytest.mark.parametrize("request_bytes", [
    [b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"],
    [b"HEAD / HTTP/1.0\r\n\r\n"],
    [b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"],
    [b"GE", b"T / HTTP/1.1\r\nHost: x\r\n\r\n"],  # the first five bytes in two segments
])
def test_plain_http_to_the_tls_port_gets_gos_answer(refresher: Refresher, running: list[ExporterServer],
                                                   certs: Path, tmp_path: Path, request_bytes: list[bytes]) -> None:
    httpd = started(running, ("127.0.0.1", 0), refresher, load(str(tls_config(certs, tmp_path))))
    port = httpd.server_address[1]
    assert raw(port, request_bytes, pause=0.2, timeout=10, until_closed=True) == GO_PLAIN_HTTP_TO_TLS
    context = ssl.create_default_context(cafile=str(certs / "server.crt"))
    assert request(port, "/healthz", context=context).status == 200  # TLS clients are served as before


def test_what_is_neither_http_nor_tls_on_the_tls_port_is_closed(refresher: Refresher, running: list[ExporterServer],
                                                                 certs: Path, tmp_path: Path) -> None:
    httpd = started(running, ("127.0.0.1", 0), refresher, load(str(tls_config(certs, tmp_path))))
    assert raw(httpd, b"BREW /pot HTCPCP/1.0\r\n\r\n", timeout=10, until_closed=True) == b""


# --- SIGHUP ----------------------------------------------------------------------------------------

def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def users(**passwords: str) -> str:
    return "basic_auth_users:\n" + "".join(
        f"  {user}: '{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}'\n" for user, pw in passwords.items())


def test_sighup_reloads_the_web_config_and_a_broken_one_keeps_the_old(host: SysfsTree, tmp_path: Path) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_text(users(alice="first"))
    with exporter(host.sys, host.proc, "--web.config.file", str(cfg)) as run:
        assert request(run.port, "/metrics", headers=basic("alice", "first")).status == 200
        cfg.write_text(users(alice="second"))
        run.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded the web config from" in run.log(), what="the reload")
        assert request(run.port, "/metrics", headers=basic("alice", "second")).status == 200
        assert request(run.port, "/metrics", headers=basic("alice", "first")).status == 401
        cfg.write_text("basic_auth_users: [broken\n")
        run.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "cannot reload the web config" in run.log(), what="the failed reload")
        assert run.proc.poll() is None
        assert request(run.port, "/metrics", headers=basic("alice", "second")).status == 200
        assert request(run.port, "/metrics", headers=basic("alice", "first")).status == 401
    errors = [logfmt(line) for line in run.final_log.splitlines() if "level=error" in line]
    assert len(errors) == 1 and errors[0]["msg"].startswith(f"cannot reload the web config, keeping the one in force: "
                                                            f"web config {cfg}")


def test_sighup_can_turn_tls_on(host: SysfsTree, tmp_path: Path, certs: Path) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_text("{}\n")
    with exporter(host.sys, host.proc, "--web.config.file", str(cfg)) as run:
        tls_config(certs, tmp_path)
        run.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded the web config" in run.log(), what="the reload")
        ctx = ssl.create_default_context(cafile=str(certs / "server.crt"))
        assert request(run.port, "/healthz", context=ctx).status == 200
        assert raw(run.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10, until_closed=True) == GO_PLAIN_HTTP_TO_TLS


def gpu_reasons(port: int) -> list[str]:
    return json.loads(request(port, "/api/devices/pci_0000_01_00_0").body)["reasons"]


def test_sighup_reloads_the_policy_and_a_broken_one_keeps_the_old(host: SysfsTree, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    rule = '[[rule]]\naction = "deny"\nreason = "{}"\naddress = "0000:01:00.0"\n'
    policy.write_text(rule.format("kept for the host"))
    with exporter(host.sys, host.proc, "--policy", str(policy)) as run:
        assert "site policy: kept for the host" in gpu_reasons(run.port)
        policy.write_text(rule.format("kept for the render farm"))
        run.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "site policy: kept for the render farm" in gpu_reasons(run.port), what="the new policy")
        assert "reloaded: a new refresh worker" in run.log()
        policy.write_text("[[rule]]\naction = 'maybe'\n")
        run.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload failed, refreshing as before" in run.log(), what="the failed reload")
        assert run.proc.poll() is None
        assert "site policy: kept for the render farm" in gpu_reasons(run.port)
        assert b'passthrough_source_up{source="sysfs"} 1.0' in request(run.port, "/metrics").body
    (error,) = log_messages(run.final_log, "error")
    assert error.startswith("reload failed, refreshing as before: ") and str(policy) in error


def test_sigterm_and_sigint_stop_serve(host: SysfsTree) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with exporter(host.sys, host.proc) as run:
            run.proc.send_signal(sig)
            assert run.proc.wait(15) == 0
        assert log_messages(run.final_log)[-1] == f"shutting down ({sig.name})"


# --- version and build info ----------------------------------------------------------------------

def test_version_names_the_commit(host: SysfsTree) -> None:
    out = subprocess.run([EXE, "--version"], capture_output=True, text=True, timeout=60)
    first, second = out.stdout.splitlines()
    assert out.returncode == 0 and first == f"passthrough-exporter {__version__} (revision: {revision()})"
    assert second.startswith("  python: ")
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        head = subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        if head.returncode == 0:
            assert revision() == head.stdout.strip()


def test_build_info_carries_version_and_revision(refresher: Refresher, running: list[ExporterServer]) -> None:
    httpd = started(running, ("127.0.0.1", 0), refresher)
    body = request(httpd, "/metrics").body
    (family,) = [f for f in text_string_to_metric_families(body.decode()) if f.name == "passthrough_exporter_build_info"]
    assert [s.labels for s in family.samples] == [{"version": __version__, "revision": revision()}]


SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("layout", ["loose", "packed", "detached", "worktree"])
def test_the_revision_is_read_from_a_checkout_without_git(tmp_path: Path, layout: str) -> None:
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    top = repo
    if layout == "loose":
        (repo / ".git" / "refs" / "heads" / "main").write_text(SHA + "\n")
    elif layout == "packed":
        (repo / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled fully-peeled sorted\n{SHA} refs/heads/main\n")
    elif layout == "detached":
        (repo / ".git" / "HEAD").write_text(SHA + "\n")
    else:  # a worktree: HEAD in its own directory, the branch in the repository's
        wt = repo / ".git" / "worktrees" / "wt"
        wt.mkdir(parents=True)
        (wt / "HEAD").write_text("ref: refs/heads/feature\n")
        (wt / "commondir").write_text("../..\n")
        (repo / ".git" / "refs" / "heads" / "feature").write_text(SHA + "\n")
        top = tmp_path / "wt"
        top.mkdir()
        (top / ".git").write_text(f"gitdir: {wt}\n")
    assert git_revision(top) == SHA


def test_no_revision_from_what_is_not_a_checkout(tmp_path: Path) -> None:
    assert git_revision(tmp_path) is None
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: ../../../etc/passwd\n")
    assert git_revision(tmp_path) is None
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/gone\n")
    assert git_revision(tmp_path) is None


def test_the_scrape_tail_is_made_once_a_second_and_anew_for_each_refresh(refresher: Refresher,
                                                                          running: list[ExporterServer]) -> None:
    """A flood of scrapes costs bytes sent: the process figures are read at most once a second, but a
    new refresh is served from the first scrape after it."""
    httpd = started(running, ("127.0.0.1", 0), refresher)
    port = httpd.server_address[1]
    reads = []
    real = httpd.app.process.render
    httpd.app.process.render = lambda: reads.append(1) or real()
    bodies = [request(port, "/metrics").body for _ in range(20)]
    assert 1 <= len(reads) <= 2 and len(set(bodies)) == len(reads)  # a second boundary may fall in between
    before = refresher.current().status.finished_at
    time.sleep(0.01)
    refresher.refresh()
    body = request(port, "/metrics").body
    from passthrough_exporter.rendering.exposition import go_float

    assert f"passthrough_last_refresh_timestamp_seconds {go_float(before)}\n".encode() not in body
    assert f"passthrough_last_refresh_timestamp_seconds {go_float(refresher.current().status.finished_at)}\n".encode() in body
