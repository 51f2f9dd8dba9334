"""The exporter over real HTTP on 127.0.0.1: routes, errors, TLS, basic auth, snapshot serving."""

from __future__ import annotations

import base64
import gzip
import json
import ssl
import subprocess
import sys
import threading
import time
import zlib

import bcrypt
import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.serving.server import parse_listen_address, serve
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.serving.webconfig import WebConfig, WebConfigError, load
from tests.support.client import connection, exchange, free_port, request, wait_up
from tests.support.local import local_refresher
from tests.support.parse import log_messages, without_process_metrics
from tests.support.process import EXE


class SlowSysfs(SysfsSource):
    """The real sysfs source, held at a gate so a test can keep a refresh running."""

    def __init__(self, *args):
        super().__init__(*args)
        self.gate = threading.Event()
        self.gate.set()
        self.reading = threading.Event()

    def read(self):
        self.reading.set()
        self.gate.wait(30)
        return super().read()




def start(tree, web=None, interval=3600.0):
    source = SlowSysfs(str(tree.sys), str(tree.proc))
    refresher = local_refresher(source, Inspector(), interval)
    refresher.refresh()
    httpd = serve(("127.0.0.1", 0), refresher, web or WebConfig())
    return httpd, refresher, source


@pytest.fixture
def server(host):
    httpd, refresher, source = start(host)
    yield httpd
    httpd.shutdown()
    httpd.server_close()




def test_metrics_plain_and_gzip(server):
    resp = request(server, "/metrics")
    body = resp.body
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    assert b'passthrough_device_eligible{device="pci_0000_01_00_0",type="pci"} 1.0' in body
    resp = request(server, "/metrics", headers={"Accept-Encoding": "gzip"})
    zipped = resp.body
    assert resp.getheader("Content-Encoding") == "gzip"
    # One gzip member (a reader that stops after the first gets it all), the same text but for the
    # process's own figures, which move from one scrape to the next.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    unzipped = inflater.decompress(zipped)
    assert inflater.eof and inflater.unused_data == b"" and unzipped == gzip.decompress(zipped)
    assert without_process_metrics(unzipped) == without_process_metrics(body)
    assert b"\nprocess_resident_memory_bytes " in unzipped and b"\nprocess_resident_memory_bytes " in body


def test_api_devices_filters(server):
    resp = request(server, "/api/devices")
    names = [d["name"] for d in json.loads(resp.body)]
    assert resp.status == 200 and names == sorted(names) and "computer" in names
    body = request(server, "/api/devices?cap=usb_device&passthrough=true").body
    assert [d["name"] for d in json.loads(body)] == ["usb_1_1_2", "usb_1_1_4"]
    body = request(server, "/api/devices?affected_by=pci_0000_01_00_0").body
    assert [d["name"] for d in json.loads(body)] == ["pci_0000_01_00_1"]


@pytest.mark.parametrize("query, status, message", [
    ("?affected_by=pci_0000_01_00_0&cap=pci", 400, "Conflicting flag filters specified."),
    ("?affected_by=pci_0000_01_00_0&passthrough=true", 400, "Conflicting flag filters specified."),
    ("?affected_by=pci_0000_77_00_0", 404, "Node device 'pci_0000_77_00_0' not found"),
    ("?passthrough=maybe", 400, "passthrough must be true or false"),
    ("?cap=gpu", 400, "unknown type 'gpu'; choose from system, pci, usb_device, usb, scsi_host, scsi_target, scsi"),
])
def test_api_errors(server, query, status, message):
    resp = request(server, "/api/devices" + query)
    assert (resp.status, json.loads(resp.body)) == (status, {"error": message})


def test_one_device_findings_health_landing(server):
    resp = request(server, "/api/devices/pci_0000_01_00_0")
    obj = json.loads(resp.body)
    assert resp.status == 200 and obj["name"] == "pci_0000_01_00_0" and obj["affected"] == ["pci_0000_01_00_1"]
    resp = request(server, "/api/devices/nope")
    assert (resp.status, json.loads(resp.body)) == (404, {"error": "Node device 'nope' not found"})
    resp = request(server, "/api/findings")
    assert resp.status == 200 and isinstance(json.loads(resp.body), list)
    resp = request(server, "/healthz")
    assert resp.status == 200 and json.loads(resp.body)["ready"] is True
    resp = request(server, "/")
    assert resp.status == 200 and b'href="/metrics"' in resp.body
    resp = request(server, "/nowhere")
    assert resp.status == 404


def test_only_get_and_head(server):
    resp = request(server, "/metrics", method="HEAD")
    assert resp.status == 200 and resp.body == b"" and int(resp.getheader("Content-Length")) > 0
    for method in ("POST", "PUT", "DELETE"):
        resp = request(server, "/metrics", method=method)
        assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"


def test_scrape_during_slow_refresh_gets_previous_snapshot_at_once(host):
    httpd, refresher, source = start(host)
    try:
        before = request(httpd, "/metrics").body
        source.gate.clear()
        source.reading.clear()
        worker = threading.Thread(target=refresher.refresh)
        worker.start()
        assert source.reading.wait(5)
        t0 = time.monotonic()
        resp = request(httpd, "/metrics")
        assert resp.status == 200 and without_process_metrics(resp.body) == without_process_metrics(before)
        assert time.monotonic() - t0 < 2  # did not wait for the 30 s gate
        assert refresher.refresh() is False  # a second refresh does not start beside the first
        source.gate.set()
        worker.join(10)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_failed_refresh_keeps_previous_snapshot_and_marks_source_down(host, tmp_path):
    httpd, refresher, source = start(host)
    try:
        host.sys.rename(tmp_path / "moved")  # the source root disappears
        refresher.refresh()
        body = request(httpd, "/metrics").body
        assert b'passthrough_source_up{source="sysfs"} 0.0' in body
        assert b'passthrough_collect_errors_total{kind="source_error"} 1.0' in body
        assert b'device="pci_0000_01_00_0"' in body  # the previous devices are still served
        (tmp_path / "moved").rename(host.sys)
        refresher.refresh()
        body = request(httpd, "/metrics").body
        assert b'passthrough_source_up{source="sysfs"} 1.0' in body
        assert b'passthrough_collect_errors_total{kind="source_error"} 1.0' in body  # a counter: never goes back
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_stale_snapshot_is_refreshed_early_at_scrape(host):
    source = SysfsSource(str(host.sys), str(host.proc))
    refresher = local_refresher(source, Inspector(), interval=0.2)
    refresher.start()
    try:
        deadline = time.monotonic() + 5
        while not refresher.current().ready and time.monotonic() < deadline:
            time.sleep(0.02)
        first = refresher.current().status.finished_at
        time.sleep(0.5)
        refresher.current()  # stale: wakes the refresher
        deadline = time.monotonic() + 5
        while refresher.current().status.finished_at == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert refresher.current().status.finished_at > first
    finally:
        refresher.stop()


# --- TLS and basic auth ----------------------------------------------------------------------


def test_tls_and_basic_auth(host, certs, tmp_path):
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"tls_server_config:\n  cert_file: {certs}/server.crt\n  key_file: {certs}/server.key\n"
                   f"basic_auth_users:\n  alice: '{hashed}'\n")
    httpd, _, _ = start(host, load(str(cfg)))
    ctx = ssl.create_default_context(cafile=str(certs / "server.crt"))
    auth = lambda user, pw: {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}  # noqa: E731
    try:
        resp = request(httpd, "/metrics", context=ctx)
        assert resp.status == 401 and resp.getheader("WWW-Authenticate").startswith("Basic")
        resp = request(httpd, "/metrics", headers=auth("alice", "wrong"), context=ctx)
        assert resp.status == 401
        resp = request(httpd, "/metrics", headers=auth("mallory", "s3cret"), context=ctx)
        assert resp.status == 401
        resp = request(httpd, "/api/devices", headers={"Authorization": "Basic !!notbase64"}, context=ctx)
        assert resp.status == 401
        for _ in range(2):  # the second time from the verified cache
            resp = request(httpd, "/metrics", headers=auth("alice", "s3cret"), context=ctx)
            assert resp.status == 200 and b"passthrough_device_info" in resp.body
        resp = request(httpd, "/metrics")  # plain HTTP to a TLS port: answered as Go answers it
        assert (resp.status, resp.body) == (400, b"Client sent an HTTP request to an HTTPS server.\n")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_web_config_errors(tmp_path, certs):
    bad = tmp_path / "bad.yml"
    bad.write_text("basic_auth_users:\n  bob: plaintext\n")
    with pytest.raises(WebConfigError, match="not a bcrypt hash"):
        load(str(bad))
    bad.write_text("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n")
    with pytest.raises(WebConfigError, match="cannot load certificate"):
        load(str(bad))
    bad.write_text("tls_config: {}\n")
    with pytest.raises(WebConfigError, match="unknown key tls_config"):
        load(str(bad))
    with pytest.raises(WebConfigError, match="cannot read web config"):
        load(str(tmp_path / "missing.yml"))


def test_listen_address_parsing():
    assert parse_listen_address(":9839") == ("", 9839)  # every address, IPv6 and IPv4
    assert parse_listen_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_listen_address("[::1]:9839") == ("::1", 9839)
    assert parse_listen_address("[::]:9839") == ("::", 9839)
    assert parse_listen_address("localhost:9839") == ("localhost", 9839)
    for bad in ("9839x", "::1:9839", "[127.0.0.1]:9839", "host:", "host:70000"):
        with pytest.raises(ValueError):
            parse_listen_address(bad)


# --- the serve and textfile commands -------------------------------------------------------


def test_serve_command_end_to_end_and_port_in_use(host):
    port = free_port()
    args = [EXE, "serve", "--web.listen-address", f"127.0.0.1:{port}", "--path.sysfs", str(host.sys),
            "--path.procfs", str(host.proc)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_up(port, proc=proc, timeout=15)
        second = subprocess.run(args, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert log_messages(second.stderr, "error") == [f"cannot listen on 127.0.0.1:{port}: Address already in use"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "level=info" in err and "listening on 127.0.0.1" in err  # logfmt logs
    assert log_messages(err)[-1] == "shutting down (SIGTERM)"


def test_serve_refuses_bad_web_config_and_unknown_source(host, tmp_path):
    cfg = tmp_path / "web.yml"
    cfg.write_text("basic_auth_users: [1, 2]\n")
    out = subprocess.run([EXE, "serve", "--web.config.file", str(cfg), "--web.listen-address", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "basic_auth_users must be a mapping, not a list" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([EXE, "serve", "--source", "snmp", "--web.listen-address", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    # A usage error of serve is a log line like the rest. Python 3.12.8 and newer print the choices
    # without quotes: compare without them.
    assert [m.replace("'", "") for m in log_messages(out.stderr, "error")] == [
        "argument --source: invalid choice: snmp (choose from sysfs, libvirt) (see passthrough-exporter serve --help)"]


def test_textfile_is_written_whole(host, tmp_path):
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "passthrough.prom"
    target.write_text("old content\n")
    out = subprocess.run([EXE, "textfile", str(target), "--path.sysfs", str(host.sys), "--path.procfs",
                          str(host.proc)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = target.read_text()
    assert text.startswith("# HELP passthrough_device_info") and text.endswith("\n")
    assert 'passthrough_device_eligible{device="usb_1_1_2",type="usb_device"} 1.0' in text
    assert [p.name for p in target.parent.iterdir()] == ["passthrough.prom"]  # no temp file left behind
    assert oct(target.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "-5s", "0"])
def test_refresh_interval_must_be_positive_and_finite(value):
    out = subprocess.run([EXE, "serve", f"--refresh-interval={value}", "--web.listen-address", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "positive, finite" in out.stderr


def test_refresher_thread_survives_an_unexpected_error(host):
    """A refresh that raises outside the source (a bug) is logged and retried; the thread lives on."""
    source = SysfsSource(str(host.sys), str(host.proc))
    refresher = local_refresher(source, Inspector(), interval=0.05)
    calls = []
    real = refresher._refresh

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        real()

    refresher._refresh = flaky
    refresher.start()
    try:
        deadline = time.monotonic() + 10
        while not refresher.current().ready and time.monotonic() < deadline:
            time.sleep(0.02)
        assert refresher.current().ready and len(calls) >= 2
        assert refresher.current().status.errors_total.get("refresh_error") == 1
    finally:
        refresher.stop()


def test_textfile_into_a_missing_directory_is_one_line(host, tmp_path):
    out = subprocess.run([EXE, "textfile", str(tmp_path / "nope" / "x.prom"), "--path.sysfs", str(host.sys),
                          "--path.procfs", str(host.proc)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"passthrough-exporter: cannot write {tmp_path}/nope/x.prom")


def test_gzip_only_when_the_client_accepts_it():
    from passthrough_exporter.serving.server import _accepts_gzip

    assert _accepts_gzip("gzip") and _accepts_gzip("identity, gzip;q=0.5") and _accepts_gzip("*")
    assert not _accepts_gzip("") and not _accepts_gzip("gzip;q=0") and not _accepts_gzip("br, deflate")


def test_unknown_metric_device_type_is_refused(host, tmp_path):
    out = subprocess.run([EXE, "textfile", str(tmp_path / "x.prom"), "--metrics.device-types", "pci,usbdevice",
                          "--path.sysfs", str(host.sys), "--path.procfs", str(host.proc)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "unknown type usbdevice" in out.stderr
    assert not (tmp_path / "x.prom").exists()


# --- before the first refresh, and bodies rendered once per snapshot --------------------------------


def test_api_answers_503_before_the_first_refresh(host):
    source = SlowSysfs(str(host.sys), str(host.proc))
    refresher = local_refresher(source, Inspector(), 3600)  # never refreshed
    httpd = serve(("127.0.0.1", 0), refresher, WebConfig())
    try:
        for path in ("/api/devices", "/api/devices?cap=pci", "/api/devices?affected_by=pci_0000_01_00_0",
                     "/api/devices/pci_0000_01_00_0", "/api/findings"):
            resp = request(httpd, path)
            assert resp.status == 503 and resp.getheader("Content-Type") == "application/json", path
            assert json.loads(resp.body) == {"error": "no snapshot yet: the first refresh has not finished"}
        resp = request(httpd, "/healthz")
        assert resp.status == 503 and json.loads(resp.body)["ready"] is False
        refresher.refresh()
        assert request(httpd, "/api/devices").status == 200
    finally:
        httpd.shutdown()


def test_each_body_is_rendered_once_per_snapshot(host):
    httpd, refresher, _ = start(host)
    try:
        first = refresher.current()
        plain = {request(httpd, "/api/devices").body for _ in range(10)}
        zipped = {request(httpd, "/api/devices", headers={"Accept-Encoding": "gzip"}).body for _ in range(10)}
        assert len(plain) == 1 and len(zipped) == 1 and gzip.decompress(zipped.pop()) == plain.pop()
        for _ in range(5):
            request(httpd, "/api/devices?cap=pci&passthrough=true")
            request(httpd, "/api/devices?passthrough=true&cap=pci&utm_source=x")  # same documented filters
            request(httpd, "/api/devices/pci_0000_01_00_0")
            request(httpd, "/api/findings")
            request(httpd, "/api/devices/nope")  # an error: nothing to keep
        assert first.bodies.renders == 4 and len(first.bodies) == 4
        refresher.refresh()  # the host reads as before: the same record, and the bodies made from it
        same = refresher.current()
        assert same is not first and same.rendered is first.rendered and same.bodies is first.bodies
        request(httpd, "/api/devices")
        assert first.bodies.renders == 4
        (host.pci_path("0000:01:00.1") / "numa_node").write_text("0\n")  # a change: a new record
        refresher.refresh()
        second = refresher.current()
        assert second.rendered is not first.rendered
        resp = request(httpd, "/api/devices")
        assert resp.status == 200 and second.bodies.renders == 1 and first.bodies.renders == 4
    finally:
        httpd.shutdown()


def test_parallel_first_requests_share_one_render(host):
    httpd, refresher, _ = start(host)
    try:
        published = refresher.current()
        results = []
        threads = [threading.Thread(target=lambda: results.append(request(httpd, "/api/devices").body)) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 16 and len(set(results)) == 1 and published.bodies.renders == 1
    finally:
        httpd.shutdown()


def test_probes_reach_healthz_when_basic_auth_is_on(host):
    """The kubelet has no credentials: /healthz tells it whether the exporter is ready, nothing more."""
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4))
    source = SlowSysfs(str(host.sys), str(host.proc))
    refresher = local_refresher(source, Inspector(), 3600)
    httpd = serve(("127.0.0.1", 0), refresher, WebConfig(users={"alice": hashed}))
    auth = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
    try:
        resp = request(httpd, "/healthz")
        assert (resp.status, json.loads(resp.body)) == (503, {"ready": False})
        refresher.refresh()
        resp = request(httpd, "/healthz")
        assert (resp.status, json.loads(resp.body)) == (200, {"ready": True})
        resp = request(httpd, "/healthz", headers=auth)
        assert resp.status == 200 and json.loads(resp.body)["devices"] == len(refresher.current().rendered.index)
        for path in ("/metrics", "/api/devices", "/api/findings", "/"):
            assert request(httpd, path).status == 401
    finally:
        httpd.shutdown()


def _families(text: str) -> dict[str, tuple[str, str, float]]:
    """name -> (type, help, value) of an exposition of one-sample families, as Prometheus parses it."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        (sample,) = family.samples
        out[sample.name] = (family.type, family.documentation, sample.value)
    return out


def test_process_metrics_are_client_pythons():
    """The serving process's own figures, read without prometheus_client, are the families its
    ProcessCollector gives: the same names, types, help texts and order, and the same values but
    for what moves between the two reads."""
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

    from passthrough_exporter.serving.server import ProcessMetrics

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    theirs_text = generate_latest(registry).decode()
    ours_text = ProcessMetrics().render().decode()
    shape = lambda text: [ln if ln.startswith("#") else ln.split(" ")[0] for ln in text.splitlines()]  # noqa: E731
    assert shape(ours_text) == shape(theirs_text)
    ours, theirs = _families(ours_text), _families(theirs_text)
    assert list(ours) == ["process_virtual_memory_bytes", "process_resident_memory_bytes",
                          "process_start_time_seconds", "process_cpu_seconds_total", "process_open_fds",
                          "process_max_fds"]
    for name, (kind, doc, value) in theirs.items():
        assert ours[name][:2] == (kind, doc)
        tolerance = {"process_virtual_memory_bytes": 64 << 20, "process_resident_memory_bytes": 16 << 20,
                     "process_cpu_seconds_total": 0.5, "process_open_fds": 4}.get(name, 0)
        assert abs(ours[name][2] - value) <= tolerance, (name, ours[name][2], value)


# Modules the serving process has no need of: the old HTTP library, the metrics library (the
# exposition is rendered by the refresh, the process figures here), the plugin manager and the XML
# parser (both for reading and judging a host, which the refresh does); and of the package, what
# reads and judges a host (the refresh worker's part) beside the index that answers device queries.
NOT_IN_THE_SERVER = ("aiohttp", "prometheus_client", "pluggy", "lxml", "passthrough_exporter.reading",
                     "passthrough_exporter.plugins", "passthrough_exporter.judging.inspector",
                     "passthrough_exporter.judging.snapshot", "passthrough_exporter.judging.facts",
                     "passthrough_exporter.commands.cli")
# What `serve` loads in its own process: the command, the refresher and the server.
SERVE_PROCESS = ("passthrough_exporter.commands.serve", "passthrough_exporter.serving.refresher",
                 "passthrough_exporter.serving.server")


def test_the_serving_process_imports_nothing_it_does_not_need():
    probe = (f"import importlib, sys; [importlib.import_module(m) for m in {SERVE_PROCESS!r}]; "
             "print(' '.join(sys.modules))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split())
    assert "passthrough_exporter.judging.query" in loaded  # the probe sees the package's modules
    assert sorted(loaded & set(NOT_IN_THE_SERVER)) == []


def test_answers_are_not_held_back_by_nagle(server):
    """An answer is written as its headers, then its body: with Nagle's algorithm on, the body waits
    for the client's delayed acknowledgement of the headers (40 ms a scrape on Linux)."""
    import socket

    conn = connection(server, timeout=10)
    try:
        exchange(conn, "/healthz")  # the connection stays open: its socket can be looked at
        sockets = [proto.transport.get_extra_info("socket") for proto in list(server.pool.by_protocol)]
        assert sockets and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)
    finally:
        conn.close()
