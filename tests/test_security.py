"""Security: methods, hostile requests, escaping, basic-auth timing and where the textfile command writes."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import statistics
import subprocess
import time
from pathlib import Path

import bcrypt
import hosts
import pytest
from prometheus_client.parser import text_string_to_metric_families
from reliability import inspector, request, serve_quick, served
from sysfs_builder import SysfsTree
from helpers import EXE

from passthrough_exporter.refresher import Refresher
from passthrough_exporter.server import ExporterServer
from passthrough_exporter.sources.sysfs import SysfsSource
from passthrough_exporter.webconfig import WebConfig

ROUTES = ("/", "/metrics", "/api/devices", "/api/devices/pci_0000_01_00_0", "/api/findings", "/healthz", "/nowhere")
# A driver name and a USB product string as hostile as a file name and an attribute can be.
EVIL_DRIVER = 'evil"drv\\x\nnext_metric{a="b"} 1'
EVIL_PRODUCT = 'Mouse "pro" \\ </script><b>\ttab'


@pytest.fixture
def host(tree: SysfsTree) -> SysfsTree:
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    hosts.usb_tree(tree)
    return tree


@pytest.fixture
def server(host: SysfsTree, caplog: pytest.LogCaptureFixture) -> ExporterServer:
    caplog.set_level(logging.DEBUG)
    refresher = Refresher(SysfsSource(str(host.sys), str(host.proc)), inspector(), interval=3600)
    refresher.refresh()
    httpd = serve_quick(refresher)
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    # Whatever the requests were, nothing was logged at error level and no traceback anywhere.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]


def raw(httpd: ExporterServer, data: bytes, timeout: float = 5) -> bytes:
    """Send bytes as they are and read until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", httpd.server_address[1]), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out


def status_of(response: bytes) -> int:
    if response.startswith(b"HTTP/"):
        return int(response.split(b" ", 2)[1])
    # A request line too broken to carry a version is answered HTTP/0.9-style: the body alone.
    match = re.search(rb"<p>Error code: (\d{3})</p>", response)
    assert match, response[:200]
    return int(match.group(1))


# --- methods ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOO", "get"])
def test_only_get_and_head_on_every_route(server: ExporterServer, method: str) -> None:
    for path in ROUTES:
        out = raw(server, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status_of(out) == 405, (method, path, out[:80])
        assert b"\r\nAllow: GET, HEAD\r\n" in out
    for path in ROUTES[:-1]:
        assert request(server, path, method="HEAD")[0] in (200, 503)


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_request_body_cannot_smuggle_a_second_request(server: ExporterServer, method: str) -> None:
    """The body is never read; the connection ends instead of parsing it as the next request."""
    smuggled = b"GET /api/findings HTTP/1.1\r\nHost: x\r\n\r\n"
    out = raw(server, f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n".encode()
              + smuggled)
    assert out.count(b"HTTP/1.1 ") == 1 and b"\r\nConnection: close\r\n" in out
    assert status_of(out) == (405 if method == "POST" else 200)


# --- oversized and malformed requests --------------------------------------------------------------

HOSTILE = {
    "request line of 70 kB": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", {414}),
    "200 headers": (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", {431}),
    "header line of 70 kB": (b"GET /metrics HTTP/1.1\r\nX-A: " + b"b" * 70_000 + b"\r\n\r\n", {431}),
    "query of 3 kB": (b"GET /api/devices?cap=" + b"p" * 3000 + b" HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    "garbage": (b"GARBAGE\r\n\r\n", {400}),
    "binary": (b"\x00\xff\xfe GET \x01\r\n\r\n", {400}),
    "TLS hello to plain port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", {400}),
    "bad version": (b"GET /metrics HTTP/9.9\r\n\r\n", {505}),
    "version garbage": (b"GET /metrics HTTP/x.y\r\n\r\n", {400}),
    "four words": (b"GET /metrics HTTP/1.1 extra\r\n\r\n", {400}),
    "header without colon": (b"GET /metrics HTTP/1.1\r\nnocolon\r\nConnection: close\r\n\r\n", {200, 400}),
    "negative length": (b"GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n", {200}),
    "bad percent escapes": (b"GET /api/devices/%ff%00%22%zz HTTP/1.1\r\nConnection: close\r\n\r\n", {404}),
    "bad auth header, no users": (b"GET /metrics HTTP/1.1\r\nAuthorization: Basic !!\r\nConnection: close\r\n\r\n",
                                  {200}),
    "bad flag": (b"GET /api/devices?passthrough=%ff HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    # Absolute-form is valid HTTP/1.1; the host part is ignored, never fetched.
    "absolute URI": (b"GET http://evil.example/metrics HTTP/1.1\r\nConnection: close\r\n\r\n", {200}),
    "path traversal": (b"GET /../../etc/passwd HTTP/1.1\r\nConnection: close\r\n\r\n", {404}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_requests_are_refused_cleanly(server: ExporterServer, case: str) -> None:
    data, statuses = HOSTILE[case]
    out = raw(server, data)
    head = out.split(b"\r\n", 1)[0]
    assert status_of(out) in statuses, (case, head)
    assert b"Traceback" not in out and b'File "' not in out and b"root:" not in out
    # The server is still fine afterwards.
    assert request(server, "/metrics")[0] == 200


# --- escaping ------------------------------------------------------------------------------------

def test_label_values_and_json_are_escaped(host: SysfsTree) -> None:
    drivers = host.sys / "bus" / "pci" / "drivers"
    (drivers / EVIL_DRIVER).mkdir(parents=True)
    gpu = host.pci_path("0000:01:00.0")
    (gpu / "driver").unlink()
    host.link(gpu / "driver", drivers / EVIL_DRIVER)
    mouse = (host.sys / "bus" / "usb" / "devices" / "1-1.2").resolve()
    (mouse / "product").write_text(EVIL_PRODUCT + "\n")
    (mouse / "manufacturer").write_text('Logi"\\tech\n')

    with served(host) as httpd:
        status, body = request(httpd, "/metrics")
        _, devices = request(httpd, "/api/devices")
        _, one = request(httpd, "/api/devices/" + "usb_1_1_2")
        _, missing = request(httpd, '/api/devices/a%22%0A%5C%3Cb%3E')
    assert status == 200
    text = body.decode()
    assert 'driver="evil\\"drv\\\\x\\nnext_metric{a=\\"b\\"} 1"' in text  # one escaped label value
    assert not any(line.startswith("next_metric") for line in text.splitlines())  # no injected line
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "next_metric" not in families
    info = [s for s in families["passthrough_device_info"].samples if s.labels["device"] == "pci_0000_01_00_0"]
    assert info[0].labels["driver"] == EVIL_DRIVER  # round-trips exactly through a Prometheus parser

    by_name = {d["name"]: d for d in json.loads(devices)}
    assert by_name["pci_0000_01_00_0"]["driver"] == EVIL_DRIVER
    assert by_name["usb_1_1_2"]["product"] == EVIL_PRODUCT and by_name["usb_1_1_2"]["vendor"] == 'Logi"\\tech'
    assert json.loads(one)["product"] == EVIL_PRODUCT
    assert json.loads(missing) == {"error": "Node device 'a\"\n\\<b>' not found"}


def test_json_answers_are_never_html(server: ExporterServer) -> None:
    for path in ("/api/devices", "/api/devices/%3Cscript%3E", "/api/findings", "/healthz"):
        conn_out = raw(server, f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        assert b"\r\nContent-Type: application/json\r\n" in conn_out
        assert b"\r\nX-Content-Type-Options: nosniff\r\n" in conn_out


# --- basic auth ----------------------------------------------------------------------------------

def _auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_unknown_user_costs_as_much_as_a_wrong_password() -> None:
    """The dummy hash checked for unknown users has the configured cost: timing does not tell who exists.

    Users hashed at cost 12 against the old fixed cost-10 dummy differed 4x (0.42 s vs 0.11 s).
    """
    cfg = WebConfig(users={"alice": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=11))})
    cfg._dummy_hash()  # as load() does

    def timed(user: str, i: int) -> float:
        t0 = time.perf_counter()
        assert cfg.check_authorization(_auth(user, f"guess{i}")) is False  # fresh guesses: never cached
        return time.perf_counter() - t0

    known = statistics.median(timed("alice", i) for i in range(5))
    unknown = statistics.median(timed("mallory", i) for i in range(5))
    assert 0.6 < unknown / known < 1.6, (known, unknown)
    assert cfg.check_authorization(_auth("alice", "right"))


def test_auth_edge_cases() -> None:
    cfg = WebConfig(users={"alice": bcrypt.hashpw(b"pa:ss", bcrypt.gensalt(rounds=4))})
    assert cfg.check_authorization(_auth("alice", "pa:ss"))  # only the first colon splits
    for header in (None, "", "Basic", "Basic ", "Bearer x", "Basic " + "A" * 10_000, "Basic w6k=",
                   "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), _auth("alice", "pa:s"),
                   _auth("", ""), _auth("alice\x00", "pa:ss")):
        assert cfg.check_authorization(header) is False, header
    for i in range(1100):  # a guessing client cannot grow the verified cache without bound
        cfg._verified[("u", str(i).encode())] = False
    cfg.check_authorization(_auth("alice", "nope"))
    assert len(cfg._verified) <= 1026


# --- the textfile command writes its target and nothing else ----------------------------------------

def _state(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def test_textfile_writes_only_its_target(host: SysfsTree, tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    for d in ("out", "cwd", "home", "tmp", "elsewhere"):
        (watched / d).mkdir(parents=True)
    sentinel = watched / "elsewhere" / "precious"
    sentinel.write_text("keep me\n")
    target = watched / "out" / "passthrough.prom"
    target.symlink_to(sentinel)  # a planted link: replaced, never written through
    (watched / "out" / "other.prom").write_text("another collector's file\n")
    env = {**os.environ, "HOME": str(watched / "home"), "TMPDIR": str(watched / "tmp"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    before, sys_before = _state(watched), _state(host.root)
    out = subprocess.run([EXE, "textfile", str(target), "--path.sysfs", str(host.sys), "--path.procfs",
                          str(host.proc)], capture_output=True, text=True, timeout=60, cwd=watched / "cwd", env=env)
    assert out.returncode == 0, out.stderr
    after = _state(watched)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    # The target's directory changes (temp file created, renamed over the target); nothing else does.
    assert changed == {"out", "out/passthrough.prom"}
    assert sorted(os.listdir(watched / "out")) == ["other.prom", "passthrough.prom"]
    assert not target.is_symlink() and target.read_text().startswith("# HELP")
    assert sentinel.read_text() == "keep me\n"
    assert _state(host.root) == sys_before  # sysfs is only read

    # A target directory that cannot be written: it fails, and leaves nothing behind anywhere.
    before = _state(watched)
    out = subprocess.run([EXE, "textfile", str(watched / "missing" / "x.prom"), "--path.sysfs", str(host.sys),
                          "--path.procfs", str(host.proc)], capture_output=True, text=True, timeout=60,
                         cwd=watched / "cwd", env=env)
    assert out.returncode != 0
    assert _state(watched) == before
