"""Security: smuggling and malformed requests, escaping, basic auth (bcrypt calls counted) and textfile writes."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from passthrough_exporter.serving.refresher import Refresher
from passthrough_exporter.serving.server import ExporterServer
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.serving.webconfig import WebConfig, WebConfigError, load
from tests.support.client import raw, request
from tests.support.local import inspector, local_refresher, serve_quick, served
from tests.support.parse import every_record, log_messages
from tests.support.process import EXE, exporter
from tests.support.sysfs_builder import SysfsTree

ROUTES = ("/", "/metrics", "/api/devices", "/api/devices/pci_0000_01_00_0", "/api/findings", "/healthz", "/nowhere")
# A driver name and a USB product string as hostile as a file name and an attribute can be.
EVIL_DRIVER = 'evil"drv\\x\nnext_metric{a="b"} 1'
EVIL_PRODUCT = 'Mouse "pro" \\ </script><b>\ttab'


@pytest.fixture
def server(refresher: Refresher, caplog: pytest.LogCaptureFixture) -> Iterator[ExporterServer]:
    caplog.set_level(logging.DEBUG)
    httpd = serve_quick(refresher)
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    # Whatever the requests were, nothing was logged at error level and no traceback anywhere.
    records = every_record(caplog)
    assert not [r for r in records if r.levelno >= logging.ERROR]
    assert not [r for r in records if r.exc_info]


def closes_after_answer(httpd: ExporterServer, data: bytes) -> tuple[bytes, float]:
    """The answer to `data`, and how long the server took to close the connection after sending it."""
    t0 = time.monotonic()
    out = raw(httpd, data, timeout=5)
    return out, time.monotonic() - t0


def statuses(response: bytes) -> list[int]:
    """Every status line in what came back; each must be a real one (HTTP/1.x NNN)."""
    lines = re.findall(rb"(?:^|\r\n\r\n|\n)(HTTP/[^\r\n]*)\r\n", response)
    for line in lines:
        assert re.fullmatch(rb"HTTP/1\.[01] \d{3} [^\r\n]*", line), line
    return [int(line.split(b" ")[1]) for line in lines]


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:200]  # a status line, never a bare page
    return statuses(response)[0]


# --- methods ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"])
def test_only_get_and_head_on_every_route(server: ExporterServer, method: str) -> None:
    for path in ROUTES:
        out = raw(server, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status_of(out) == 405, (method, path, out[:80])
        assert b"\r\nAllow: GET, HEAD\r\n" in out
    for path in ROUTES[:-1]:
        assert request(server, path, method="HEAD").status == 200


@pytest.mark.parametrize("method", ["FOO", "get"])
def test_any_other_method_token_is_not_allowed(server: ExporterServer, method: str) -> None:
    """A method is any token (methods are case-sensitive: `get` is not GET): 405 with Allow, as for
    the registered ones, and the connection closed."""
    out, took = closes_after_answer(server, f"{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert statuses(out) == [405] and b"\r\nAllow: GET, HEAD\r\n" in out and took < 2


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_request_body_cannot_smuggle_a_second_request(server: ExporterServer, method: str) -> None:
    """The body is never read; the connection ends instead of parsing it as the next request."""
    smuggled = b"GET /api/findings HTTP/1.1\r\nHost: x\r\n\r\n"
    out = raw(server, f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n".encode()
              + smuggled)
    assert statuses(out) == [405 if method == "POST" else 200] and b"\r\nConnection: close\r\n" in out


# --- smuggling, malformed and oversized requests ---------------------------------------------------

SMUGGLED = b"GET /api/findings HTTP/1.1\r\nHost: x\r\n\r\n"
CL = str(len(SMUGGLED)).encode()
# Each is answered with exactly one status line and the connection is closed: what follows (a second
# request hidden where a proxy would see a body) is never answered.
HOSTILE = {
    "duplicate Content-Length": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: "
                                 + CL + b"\r\n\r\n" + SMUGGLED, 400),
    "Content-Length : N": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length : " + CL + b"\r\n\r\n" + SMUGGLED, 400),
    "empty Transfer-Encoding": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\nContent-Length: " + CL
                                + b"\r\n\r\n" + SMUGGLED, 400),
    "empty Transfer-Encoding alone": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n" + SMUGGLED, 400),
    "chunked GET": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "folded header": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n" + SMUGGLED, 400),
    "bare LF line ends": (b"GET /metrics HTTP/1.1\nHost: x\n\n" + SMUGGLED, 400),
    "HTTP/2.0 request line": (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "HTTP/2.0 request line and more": (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n" + SMUGGLED, 505),
    "HTTP/0.9 request line": (b"GET /metrics\r\n\r\n", 505),
    "FOO/1.1 request line": (b"GET /metrics FOO/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    "HTTP/9.9": (b"GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n", 505),  # a version, not ours (as in Go)
    "version garbage": (b"GET /metrics HTTP/x.y\r\nHost: x\r\n\r\n", 400),
    "four words": (b"GET /metrics HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    "garbage": (b"GARBAGE\r\n\r\n", 400),
    "binary": (b"\x00\xff\xfe GET \x01\r\n\r\n", 400),
    "TLS hello to plain port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),
    # Too much header, the request line included, is 431 as in Go's net/http.
    "request line of 70 kB": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    "200 headers": (b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
    "header line of 70 kB": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 70_000 + b"\r\n\r\n", 431),
    "header without colon": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", 400),
    "negative length": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    "HTTP/1.1 without Host": (b"GET /metrics HTTP/1.1\r\n\r\n" + SMUGGLED, 400),
    "two Host headers": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" + SMUGGLED, 400),
    # Refused before its end arrives: the line is too long already.
    "unfinished request line of 70 kB": (b"GET /" + b"a" * 70_000, 431),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_requests_get_one_status_line_and_the_connection_closes(server: ExporterServer, case: str) -> None:
    data, expected = HOSTILE[case]
    out, took = closes_after_answer(server, data)
    assert statuses(out) == [expected], (case, out[:300])
    assert took < 2  # closed by the server, not by our read timeout
    assert b"Traceback" not in out and b'File "' not in out and b"root:" not in out
    assert request(server, "/metrics").status == 200  # and it is still fine afterwards


# Requests that are odd but well-formed, answered normally (connection closed when asked to).
ODD = {
    "query of 3 kB": (b"GET /api/devices?cap=" + b"p" * 3000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400),
    "bad percent escapes": (b"GET /api/devices/%ff%00%22%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    "bad auth header, no users": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic !!\r\nConnection: close\r\n\r\n",
                                  200),
    "bad flag": (b"GET /api/devices?passthrough=%ff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400),
    # Absolute-form is valid HTTP/1.1; the host part is ignored, never fetched.
    "absolute URI": (b"GET http://evil.example/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200),
    "path traversal": (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    "HTTP/1.0 without Host": (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_requests_are_answered_cleanly(server: ExporterServer, case: str) -> None:
    data, expected = ODD[case]
    out = raw(server, data)
    assert statuses(out) == [expected], (case, out[:300])
    assert b"Traceback" not in out and b"root:" not in out


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
        metrics = request(httpd, "/metrics")
        devices = request(httpd, "/api/devices").body
        one = request(httpd, "/api/devices/" + "usb_1_1_2").body
        missing = request(httpd, '/api/devices/a%22%0A%5C%3Cb%3E').body
    assert metrics.status == 200
    text = metrics.body.decode()
    # One label value: the newline written out (\x0a, as every control character in a label), then
    # the exposition's escapes.
    assert 'driver="evil\\"drv\\\\x\\\\x0anext_metric{a=\\"b\\"} 1"' in text
    assert not any(line.startswith("next_metric") for line in text.splitlines())  # no injected line
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "next_metric" not in families
    info = [s for s in families["passthrough_device_info"].samples if s.labels["device"] == "pci_0000_01_00_0"]
    # Through a Prometheus parser: the text exactly, the newline as its visible escape.
    assert info[0].labels["driver"] == EVIL_DRIVER.replace("\n", "\\x0a")

    by_name = {d["name"]: d for d in json.loads(devices)}
    assert by_name["pci_0000_01_00_0"]["driver"] == EVIL_DRIVER
    assert by_name["usb_1_1_2"]["product"] == EVIL_PRODUCT and by_name["usb_1_1_2"]["vendor"] == 'Logi"\\tech'
    assert json.loads(one)["product"] == EVIL_PRODUCT
    assert json.loads(missing) == {"error": "Node device 'a\"\n\\<b>' not found"}


def test_json_answers_are_never_html(server: ExporterServer) -> None:
    for path in ("/api/devices", "/api/devices/%3Cscript%3E", "/api/findings", "/healthz"):
        conn_out = raw(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert b"\r\nContent-Type: application/json\r\n" in conn_out
        assert b"\r\nX-Content-Type-Options: nosniff\r\n" in conn_out


# --- basic auth ----------------------------------------------------------------------------------

def _auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class CountingBcrypt:
    """bcrypt.checkpw, counting its calls and the hashes it was given."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = []

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.hashes.append(hashed)
        return bcrypt.checkpw(password, hashed)


def _cost(hashed: bytes) -> int:
    return int(hashed.split(b"$")[2])


def test_an_unknown_user_costs_one_bcrypt_check_at_the_highest_configured_cost() -> None:
    """Response time cannot tell who exists: an unknown user pays what a wrong password pays."""
    alice, bob = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=5)), bcrypt.hashpw(b"other", bcrypt.gensalt(rounds=6))
    cfg = WebConfig(users={"alice": alice, "bob": bob})
    cfg.checkpw = counting = CountingBcrypt()
    assert cfg.check_authorization(_auth("mallory", "right")) is False
    assert len(counting.hashes) == 1 and _cost(counting.hashes[0]) == 6
    assert counting.hashes[0] not in (alice, bob)
    assert cfg.check_authorization(_auth("mallory", "right")) is False  # failures are not remembered
    assert len(counting.hashes) == 2
    assert cfg.check_authorization(_auth("alice", "wrong")) is False
    assert counting.hashes[2:] == [alice]
    assert cfg.check_authorization(_auth("alice", "right")) is True
    assert cfg.check_authorization(_auth("alice", "right")) is True  # from the verified cache
    assert counting.hashes[3:] == [alice]


def test_a_password_over_72_bytes_never_matches_and_costs_no_bcrypt() -> None:
    """bcrypt reads 72 bytes: accepting a longer one would accept a different password."""
    password = "p" * 72
    cfg = WebConfig(users={"alice": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))})
    cfg.checkpw = counting = CountingBcrypt()
    assert cfg.check_authorization(_auth("alice", password + "X")) is False
    assert cfg.check_authorization(_auth("alice", "é" * 37)) is False  # 74 bytes in 37 characters
    assert counting.hashes == []
    assert cfg.check_authorization(_auth("alice", password)) is True


def test_a_password_over_72_bytes_is_401_over_http(host: SysfsTree, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = WebConfig(users={"alice": bcrypt.hashpw(b"ok", bcrypt.gensalt(rounds=4))})
    refresher = local_refresher(SysfsSource(str(host.sys), str(host.proc)), inspector(), interval=3600)
    refresher.refresh()
    httpd = serve_quick(refresher, cfg)
    try:
        for path in ("/metrics", "/api/devices", "/healthz?full"):
            status = request(httpd, path, headers={"Authorization": _auth("alice", "x" * 100)}).status
            assert status == (401 if path != "/healthz?full" else 200)  # /healthz says only "ready"
        assert request(httpd, "/metrics", headers={"Authorization": _auth("alice", "ok")}).status == 200
    finally:
        httpd.shutdown()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_auth_edge_cases() -> None:
    hashed = bcrypt.hashpw(b"pa:ss", bcrypt.gensalt(rounds=4))
    cfg = WebConfig(users={"alice": hashed})
    assert cfg.check_authorization(_auth("alice", "pa:ss"))  # only the first colon splits
    for header in (None, "", "Basic", "Basic ", "Bearer x", "Basic " + "A" * 10_000, "Basic w6k=",
                   "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Basic " + base64.b64encode(b"nocolon").decode(),
                   _auth("alice", "pa:s"), _auth("", ""), _auth("alice\x00", "pa:ss")):
        assert cfg.check_authorization(header) is False, header


def test_the_verified_cache_is_bounded() -> None:
    """1,100 users who each logged in once: the cache keeps the last 1,024, the first one pays again."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))
    cfg = WebConfig(users={f"u{i}": hashed for i in range(1100)})
    for i in range(1100):
        assert cfg.check_authorization(_auth(f"u{i}", "pw"))
    assert len(cfg._verified) == 1024
    cfg.checkpw = counting = CountingBcrypt()
    assert cfg.check_authorization(_auth("u1099", "pw")) and counting.hashes == []
    assert cfg.check_authorization(_auth("u0", "pw")) and counting.hashes == [hashed]


HASH_TAIL = "$" + "N9qo8uLOickgx2ZMRZoMye" + "IjZAgcfl7p92ldGxad68LJZdL17lhWy"  # salt + digest, 53 characters


@pytest.mark.parametrize("hashed, message", [
    ("$2b$99" + HASH_TAIL, "bcrypt cost of user 'alice' is 99; use 4 to 14"),
    ("$2b$15" + HASH_TAIL, "bcrypt cost of user 'alice' is 15; use 4 to 14"),
    ("$2b$03" + HASH_TAIL, "bcrypt cost of user 'alice' is 3; use 4 to 14"),
    ("$2b$10$short", "password of user 'alice' is not a bcrypt hash"),
    ("$2x$10" + HASH_TAIL, "password of user 'alice' is not a bcrypt hash"),
    ("$2b$10$" + "A" * 53, "bcrypt hash of user 'alice' has an invalid salt"),
    ("plaintext", "password of user 'alice' is not a bcrypt hash"),
])
def test_a_bad_bcrypt_hash_is_refused_at_start(tmp_path: Path, hashed: str, message: str) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    t0 = time.monotonic()
    with pytest.raises(WebConfigError) as err:
        load(str(cfg))
    assert time.monotonic() - t0 < 2  # refused, not computed
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_absurd_bcrypt_cost_stops_serve_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_text("basic_auth_users:\n  alice: '$2b$99" + HASH_TAIL + "'\n")
    out = subprocess.run([EXE, "serve", "--web.config.file", str(cfg), "--web.listen-address", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert log_messages(out.stderr) == [f"web config {cfg}: basic_auth_users: the bcrypt cost of "
                                        "user 'alice' is 99; use 4 to 14 (each step doubles the time of every login; "
                                        "10-12 is usual)"]


def test_password_guessing_does_not_delay_a_verified_scraper(host: SysfsTree, tmp_path: Path) -> None:
    """500 wrong passwords from 50 clients at once, against the real `serve` on 2 bcrypt threads:
    the scraper whose credentials were verified before is answered within a second throughout."""
    cfg = tmp_path / "web.yml"
    cfg.write_text("basic_auth_users:\n  prometheus: '" + bcrypt.hashpw(b"scrape", bcrypt.gensalt(rounds=10)).decode()
                   + "'\n")
    with exporter(host.sys, host.proc, "--web.config.file", str(cfg)) as running:
        legit = {"Authorization": _auth("prometheus", "scrape")}
        assert request(running.port, "/metrics", headers=legit).status == 200  # verified once, remembered from now on
        answers: list[int] = []
        lock = threading.Lock()

        def guess(n: int) -> None:
            for i in range(10):
                wrong = {"Authorization": _auth("prometheus", f"guess-{n}-{i}")}
                status = request(running.port, "/metrics", headers=wrong).status
                with lock:
                    answers.append(status)

        attackers = [threading.Thread(target=guess, args=(n,)) for n in range(50)]
        for t in attackers:
            t.start()
        latencies = []
        while any(t.is_alive() for t in attackers) and len(latencies) < 200:
            t0 = time.monotonic()
            resp = request(running.port, "/metrics", headers=legit)
            latencies.append(time.monotonic() - t0)
            assert resp.status == 200 and b"passthrough_device_info" in resp.body
            time.sleep(0.05)
        for t in attackers:
            t.join(120)
        print(f"\n{len(answers)} guesses: {answers.count(401)} checked (401), {answers.count(429)} turned away (429); "
              f"scraper: {len(latencies)} scrapes, slowest {max(latencies) * 1000:.0f} ms")
        assert len(answers) == 500 and set(answers) <= {401, 429} and answers.count(401) >= 8
        assert len(latencies) >= 3 and max(latencies) < 1.0
        assert "level=error" not in running.log() and "Traceback" not in running.log()


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
    target.symlink_to(sentinel)  # a planted link: refused, neither written through nor replaced
    (watched / "out" / "other.prom").write_text("another collector's file\n")
    env = {**os.environ, "HOME": str(watched / "home"), "TMPDIR": str(watched / "tmp"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    before, sys_before = _state(watched), _state(host.root)
    textfile = [EXE, "textfile", str(target), "--path.sysfs", str(host.sys), "--path.procfs", str(host.proc)]
    out = subprocess.run(textfile, capture_output=True, text=True, timeout=60, cwd=watched / "cwd", env=env)
    assert out.returncode == 1
    assert out.stderr == f"passthrough-exporter: cannot write {target}: it is a symlink, not replaced; give a regular file's name\n"
    assert _state(watched) == before and sentinel.read_text() == "keep me\n"

    target.unlink()
    before = _state(watched)
    out = subprocess.run(textfile, capture_output=True, text=True, timeout=60, cwd=watched / "cwd", env=env)
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
