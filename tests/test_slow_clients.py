"""Slow and hostile clients against the real server on 127.0.0.1: trickling connections, a header
deadline, the connection bound, a failing accept, and clients that go away mid-answer."""

from __future__ import annotations

import logging
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from passthrough_exporter.serving.connections import MAX_CONNECTIONS, RESERVED_FDS
from passthrough_exporter.serving.refresher import Refresher
from passthrough_exporter.serving.server import ExporterServer
from tests.support.client import connect, request, trickling
from tests.support.parse import every_record
from tests.support.process import cpu_seconds, exporter, raise_own_file_limit
from tests.support.sysfs_builder import SysfsTree

HEAD_START = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever the clients do, nothing is logged at warning level or above, and no traceback."""
    caplog.set_level(logging.DEBUG)
    yield
    records = every_record(caplog)
    assert not [r for r in records if r.levelno >= logging.WARNING], caplog.text[-2000:]
    assert not [r for r in records if r.exc_info], caplog.text[-2000:]


def closed_by_server(s: socket.socket) -> bool:
    """True when the server has closed `s` (EOF or reset), without waiting."""
    s.settimeout(0)  # with a timeout set, Python would wait for data despite MSG_DONTWAIT
    try:
        return s.recv(65536, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def answer(s: socket.socket) -> bytes:
    """One whole HTTP answer read from `s` (headers, then Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"\r\nContent-Length: (\d+)", head, re.I).group(1))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def readable(s: socket.socket, timeout: float) -> bool:
    poller = select.poll()  # not select(): descriptors above 1024 in the many-connection test
    poller.register(s, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def seconds_until_closed(s: socket.socket, drip: bytes | None, limit: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if drip is not None:
            try:
                s.send(drip)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - t0
        if readable(s, 0.2):
            try:
                if s.recv(65536) == b"":
                    return time.monotonic() - t0
            except ConnectionResetError:
                return time.monotonic() - t0
    return float("inf")


def test_1100_trickling_connections_under_1024_files_do_not_stop_a_scrape(host: SysfsTree) -> None:
    """The open-file limit systemd gives a service, and more slow connections than it allows: a
    scrape still gets in, because the connection that waited longest makes room."""
    raise_own_file_limit(1400)
    with exporter(host.sys, host.proc, nofile=1024) as running:
        # One byte per connection per second: never a complete request.
        with trickling(running.port, 1100, HEAD_START, drip=b"x", every=1, timeout=5) as socks:
            time.sleep(1.5)
            for _ in range(3):
                t0 = time.monotonic()
                resp = request(running.port, "/metrics", timeout=10)
                took = time.monotonic() - t0
                body = resp.body
                assert resp.status == 200 and body.endswith(b"\n") and b"passthrough_exporter_build_info" in body
                assert took < 2, took
            closed = sum(closed_by_server(s) for s in socks)
            # The bound is the file limit less the exporter's own descriptors: the rest were closed.
            assert closed >= 1100 - (1024 - RESERVED_FDS), closed
        time.sleep(0.5)
        assert request(running.port, "/healthz").status == 200
    log = running.log()
    assert "level=error" not in log and "level=warn" not in log and "Traceback" not in log, log[-2000:]


def test_header_deadline(quiet: None, refresher: Refresher, start_server: Callable[..., ExporterServer]) -> None:
    httpd = start_server(refresher, header_timeout=1.0)
    with connect(httpd, timeout=5) as s:  # one byte every 0.2 s
        s.sendall(HEAD_START)
        assert 0.9 <= seconds_until_closed(s, b"x", 5) <= 2.5
    with connect(httpd, timeout=5) as s:  # nothing at all
        assert 0.9 <= seconds_until_closed(s, None, 5) <= 2.5
    with connect(httpd, timeout=5) as s:  # slow, but within the deadline
        for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            s.sendall(piece)
            time.sleep(0.2)
        assert answer(s).startswith(b"HTTP/1.1 200 ")
        # Idle between requests is not under the header deadline (keep-alive across scrapes).
        time.sleep(1.6)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(s).startswith(b"HTTP/1.1 200 ")
        # The next request's deadline starts with its first byte.
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert 0.9 <= seconds_until_closed(s, None, 5) <= 2.5
    assert httpd.pool.expired == 3


def test_at_the_connection_bound_the_longest_waiting_connection_makes_room(
        quiet: None, refresher: Refresher, start_server: Callable[..., ExporterServer]) -> None:
    httpd = start_server(refresher, bound=16)
    socks = []
    try:
        for _ in range(16):
            socks.append(connect(httpd, timeout=5))
            time.sleep(0.01)  # a distinct age for each
        time.sleep(0.2)
        assert len(httpd.pool.conns) == 16
        t0 = time.monotonic()
        assert request(httpd, "/metrics").status == 200
        assert time.monotonic() - t0 < 1
        time.sleep(0.1)
        assert [closed_by_server(s) for s in socks] == [True] + [False] * 15  # the oldest one, only
        assert httpd.pool.evicted == 1 and len(httpd.pool.conns) <= 16
    finally:
        for s in socks:
            s.close()


HOG = r"""
import os, sys
from passthrough_exporter.logs import setup
from passthrough_exporter.serving.refresher import Refresher
from passthrough_exporter.serving.server import serve
from passthrough_exporter.serving.webconfig import WebConfig

setup(sys.argv[3])
refresher = Refresher(["serve", "--path.sysfs", sys.argv[1], "--path.procfs", sys.argv[2]], 3600)
refresher.start_worker()
refresher.refresh()
httpd = serve(("127.0.0.1", 0), refresher, WebConfig())
print(httpd.server_address[1], flush=True)
sys.stdin.readline()
hog = []
try:  # every descriptor left, as a leak elsewhere in the process would take them
    while True:
        hog.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
print(len(hog), flush=True)
sys.stdin.readline()
for fd in hog:
    os.close(fd)
print("released", flush=True)
sys.stdin.readline()
httpd.shutdown()
"""


def test_a_failing_accept_is_logged_once_and_does_not_spin(host: SysfsTree) -> None:
    proc = subprocess.Popen(["prlimit", "--nofile=256:256", "--", sys.executable, "-c", HOG, str(host.sys),
                             str(host.proc), "debug"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())
        keep = connect(port, timeout=10)
        ask = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        keep.sendall(ask)
        assert answer(keep).startswith(b"HTTP/1.1 200 ")
        proc.stdin.write("hog\n")
        proc.stdin.flush()
        assert int(proc.stdout.readline()) > 100
        time.sleep(1)
        # No descriptor left, but no connection waiting either: the ones open are left alone.
        keep.sendall(ask)
        assert answer(keep).startswith(b"HTTP/1.1 200 ")
        client = connect(port, timeout=10)  # waits in the listen backlog
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(2)
        spent = cpu_seconds(proc.pid) - cpu0
        assert spent < 0.5, spent  # a loop retrying accept would take a core: 2 s
        proc.stdin.write("release\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "released\n"
        try:
            got = answer(client)
        except OSError as exc:
            got = repr(exc).encode()
        client.close()
        assert request(port, "/healthz").status == 200  # a new connection, with descriptors to spare
        keep.close()
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=20)
        assert got.startswith(b"HTTP/1.1 200 "), err  # answered once descriptors are back
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = err.splitlines()
    assert len([ln for ln in lines if "cannot accept connections" in ln]) == 1, err[-2000:]
    assert [ln for ln in lines if "cannot accept connections" in ln][0].startswith("ts=")
    assert "level=warn" in [ln for ln in lines if "cannot accept connections" in ln][0]
    assert len([ln for ln in lines if "accepting connections again" in ln]) == 1
    assert "Traceback" not in err and "level=error" not in err


def test_clients_that_go_away_are_not_errors(quiet: None, refresher: Refresher,
                                             start_server: Callable[..., ExporterServer]) -> None:
    """Closing mid-headers, resetting with answers still to send, timing out: debug lines at most."""
    httpd = start_server(refresher, header_timeout=0.5)
    with connect(httpd, timeout=None) as s:
        s.sendall(HEAD_START)
    for _ in range(3):
        s = connect(httpd, timeout=None)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /api/devices HTTP/1.1\r\nHost: x\r\n\r\n" * 200)  # pipelined, never read
        time.sleep(0.2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # reset
    with connect(httpd, timeout=None) as s:
        s.sendall(HEAD_START)
        assert seconds_until_closed(s, None, 3) < 2  # timed out
    time.sleep(0.3)
    assert request(httpd, "/healthz").status == 200


def test_the_systemd_unit_allows_the_connection_bound() -> None:
    """LimitNOFILE in the unit is the bound plus the exporter's own descriptors."""
    unit = (os.path.dirname(__file__) + "/../deploy/passthrough-exporter.service")
    limits = [ln.split("=", 1)[1] for ln in open(unit).read().splitlines() if ln.startswith("LimitNOFILE=")]
    assert limits == [str(MAX_CONNECTIONS + RESERVED_FDS)]
