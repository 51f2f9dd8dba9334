"""Every request the tests and the benchmarks make to a server: HTTP or HTTPS on a connection of its
own or on one kept alive, bytes sent as they are on a bare socket and slow clients (for the hostile
ones), a free port, and the wait until a server answers. Loopback only: 127.0.0.1, or ::1 if asked."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

LOOPBACK = "127.0.0.1"
LOOPBACKS = (LOOPBACK, "::1")


class Listening(Protocol):
    """A server started in the test's process: its first address is (host, port, ...)."""

    server_address: tuple


Target = int | Listening  # a port on the loopback address, or a server listening on one


def port_of(target: Target) -> int:
    return target if isinstance(target, int) else target.server_address[1]


def _loopback(host: str) -> str:
    if host not in LOOPBACKS:
        raise ValueError(f"{host}: the tests and benchmarks talk to loopback addresses only")
    return host


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Answer:
    """One answer, read whole: status, headers and body; over TLS also (protocol version, cipher)."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes
    tls: tuple[str, str] | None = None

    def getheader(self, name: str, default: str | None = None) -> str | None:
        """As http.client's: every value of `name` joined by ", ", else `default`."""
        values = self.headers.get_all(name)
        return ", ".join(values) if values else default

    def getheaders(self) -> list[tuple[str, str]]:
        return list(self.headers.items())


def connection(target: Target, *, host: str = LOOPBACK, timeout: float | None = 10.0,
               context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    """A connection to `target` that stays open from one `exchange` to the next until closed; over
    TLS when a `context` is given."""
    port = port_of(target)
    if context is not None:
        return http.client.HTTPSConnection(_loopback(host), port, timeout=timeout, context=context)
    return http.client.HTTPConnection(_loopback(host), port, timeout=timeout)


def exchange(conn: http.client.HTTPConnection, path: str = "/", *, method: str = "GET",
             headers: dict[str, str] | None = None) -> Answer:
    """One request on `conn` and its answer, read whole; `conn` stays open for the next."""
    conn.request(method, path, headers=headers or {})
    sock = conn.sock  # before the answer: one that closes the connection takes the socket along
    resp = conn.getresponse()
    body = resp.read()
    tls = (sock.version(), sock.cipher()[0]) if isinstance(sock, ssl.SSLSocket) else None
    return Answer(resp.status, resp.reason, resp.msg, body, tls)


def request(target: Target, path: str = "/", *, method: str = "GET", headers: dict[str, str] | None = None,
            timeout: float | None = 10.0, host: str = LOOPBACK, context: ssl.SSLContext | None = None) -> Answer:
    """One request on a connection of its own, closed after the answer; over TLS when a `context` is given."""
    conn = connection(target, host=host, timeout=timeout, context=context)
    try:
        return exchange(conn, path, method=method, headers=headers)
    finally:
        conn.close()


class NotUp(RuntimeError):
    """A server that did not answer in time, or whose process ended first."""


def wait_up(target: Target, path: str = "/healthz", *, proc: subprocess.Popen | None = None, timeout: float = 60.0,
            log: Callable[[], str] | None = None, headers: dict[str, str] | None = None, host: str = LOOPBACK,
            context: ssl.SSLContext | None = None) -> Answer:
    """Ask `path` until it answers 200, and return that answer. NotUp when `timeout` seconds pass, or
    the server's process `proc` ends, first; its message ends with the tail of `log()` when given."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = request(target, path, headers=headers, host=host, context=context,
                             timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            if answer.status == 200:
                return answer
        except (OSError, http.client.HTTPException):  # not listening yet, or not ready to answer
            pass
        ended = proc is not None and proc.poll() is not None
        if ended or time.monotonic() > deadline:
            who = proc.args[0] if proc is not None else f"{host}:{port_of(target)}"
            why = f"ended ({proc.returncode})" if ended else f"did not answer {path} with 200 in {timeout:g} s"
            raise NotUp(f"{who} {why}" + (f":\n{log()[-2000:]}" if log is not None else ""))
        time.sleep(0.05)


def connect(target: Target, *, host: str = LOOPBACK, timeout: float | None = 10.0) -> socket.socket:
    """A bare TCP connection to `target`, for a client that writes its own bytes."""
    return socket.create_connection((_loopback(host), port_of(target)), timeout=timeout)


def raw(target: Target, data: bytes | Sequence[bytes], *, host: str = LOOPBACK, timeout: float = 5.0,
        pause: float = 0.0, until_closed: bool = False) -> bytes:
    """Send `data` as it is (a sequence part by part, `pause` seconds after each) on a connection of
    its own, then read until the server closes it. What came by `timeout` is returned, a reset ending
    the read as a close does; with `until_closed` the server must close it: a timeout or a reset raises."""
    with connect(target, host=host, timeout=timeout) as s:
        for part in [data] if isinstance(data, bytes) else data:
            s.sendall(part)
            if pause:
                time.sleep(pause)
        out = b""
        deadline = time.monotonic() + timeout
        while until_closed or time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                if until_closed:
                    raise
                break
            if not chunk:
                break
            out += chunk
        return out


@contextlib.contextmanager
def trickling(target: Target, count: int, head: bytes, *, drip: bytes = b"x", every: float = 1.0,
              host: str = LOOPBACK, timeout: float = 5.0, refused_ok: bool = False) -> Iterator[list[socket.socket]]:
    """`count` slow clients: connections that sent `head`, then `drip` every `every` seconds, never a
    whole request; closed on leaving. A connection refused raises, or with `refused_ok` is left out."""
    socks: list[socket.socket] = []
    stop = threading.Event()

    def dripping() -> None:
        while not stop.wait(every):
            for s in socks:
                try:
                    s.send(drip, socket.MSG_DONTWAIT)
                except OSError:
                    pass

    try:
        for _ in range(count):
            try:
                s = connect(target, host=host, timeout=timeout)
                socks.append(s)
                s.sendall(head)
            except OSError:
                if not refused_ok:
                    raise
        threading.Thread(target=dripping, daemon=True).start()
        yield socks
    finally:
        stop.set()
        for s in socks:
            s.close()
