"""Connections the exporter accepts: bounded in number, with a deadline for a request's headers.

The HTTP is server.py's (h11); this module owns what comes before and around it:

- Accepting. One task accepts; while the bound is reached it first closes the connection that has
  waited longest on its client (a request trickling in, an idle keep-alive connection, a response
  the client does not read), so a scrape that arrives while slow clients hold every slot still gets
  in. A failing accept (no file descriptors left) is logged once, and retried after a pause
  instead of spinning.
- A deadline for a request's headers (and the TLS handshake), counted from the first byte of the
  request (from the accept for the first one), not per byte: a client sending one byte a second
  is closed after HEADER_TIMEOUT like one sending nothing.
- A response the client stops reading for SEND_STALL is abandoned.

The bound comes from the open-file limit: every connection is a descriptor, and the exporter keeps
RESERVED_FDS for its own (sysfs reads, the libvirt socket, logs).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 1024
RESERVED_FDS = 64
HEADER_TIMEOUT = 10.0  # seconds from a request's first byte (or the accept) to its last header line
SEND_STALL = 30.0  # seconds a response may wait on a client that does not read it
SWEEP_INTERVAL = 0.5
ACCEPT_RETRY = 0.1  # pause after a failed accept: the listening socket stays readable, so no busy loop
# Errors of accept(2) that mean this process (or the system) is out of a resource, not that one
# client went away.
RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


# What Go's net/http answers plain HTTP sent to its TLS port with, byte for byte, and the first five
# bytes it takes for HTTP rather than a TLS record (tlsRecordHeaderLooksLikeHTTP).
PLAIN_HTTP_TO_TLS = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
HTTP_STARTS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")
PEEK_RETRY = 0.05  # seconds between looks at a first record that has not fully arrived
CLOSE_GRACE = 0.5  # seconds to wait for a client's end after answering and closing ours


async def _speaks_plain_http(client: socket.socket) -> bool:
    """Whether the first five bytes on a connection to the TLS port are an HTTP request's, looked
    at without taking them (the TLS handshake reads them next). The header deadline bounds the wait."""
    while True:
        await ConnectionPool._readable(client)
        try:
            head = client.recv(len(HTTP_STARTS[0]), socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not head or len(head) == len(HTTP_STARTS[0]):
            return head in HTTP_STARTS
        await asyncio.sleep(PEEK_RETRY)  # part of it so far: the rest is on its way, or the deadline comes


async def _answer_and_close(client: socket.socket, answer: bytes) -> None:
    """Send `answer`, then close so that the client reads it: our side first, then, after the
    client's end (or CLOSE_GRACE), the socket; closing with its request unread would reset the
    connection and could throw the answer away."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(client, answer)
        client.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(CLOSE_GRACE):
            while await loop.sock_recv(client, 65536):
                pass
    except (OSError, TimeoutError):
        pass
    finally:
        client.close()


def connection_bound() -> int:
    """Connections to allow: MAX_CONNECTIONS, or fewer when the open-file limit is lower."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft - RESERVED_FDS))


class State(enum.Enum):
    READING = "reading"  # waiting for (the rest of) a request's headers: under the header deadline
    BUSY = "busy"  # headers complete, the answer is being produced
    SENDING = "sending"  # the answer is being written; `since` moves with every chunk the client takes
    IDLE = "idle"  # keep-alive between requests


class Conn:
    __slots__ = ("peer", "state", "since", "transport", "task", "data_while_busy", "closed")

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.state = State.READING
        self.since = time.monotonic()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None  # the TLS handshake (or plain setup) until connected
        self.data_while_busy = False
        self.closed = False

    def set(self, state: State) -> None:
        self.state = state
        self.since = time.monotonic()

    def on_data(self) -> None:
        if self.state is State.IDLE:
            self.set(State.READING)  # a new request begins: its header deadline starts now
        elif self.state is not State.READING:
            self.data_while_busy = True  # a pipelined request; its deadline starts when this one ends

    def begin_request(self) -> None:
        self.data_while_busy = False
        self.set(State.BUSY)

    def progress(self) -> None:
        self.set(State.SENDING)

    def end_request(self) -> None:
        self.set(State.READING if self.data_while_busy else State.IDLE)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        elif self.task is not None:
            self.task.cancel()  # still in the TLS handshake: cancelling closes the socket


class Guard(asyncio.Protocol):
    """Sits between the transport and the HTTP protocol (server.HTTPProtocol), telling the pool when
    a request begins."""

    def __init__(self, pool: ConnectionPool, conn: Conn, inner: asyncio.Protocol) -> None:
        self.pool, self.conn, self.inner = pool, conn, inner
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.conn.transport = transport
        if self.conn.closed:
            transport.abort()
            return
        if not self.pool.accept_peer(transport):
            log.debug("closing the connection from %s: its client certificate names none of client_allowed_sans",
                      self.conn.peer)
            self.conn.abort()
            return
        # A client that does not read costs at most this much buffered beside the shared body.
        transport.set_write_buffer_limits(high=64 * 1024)
        self.made = True
        self.pool.by_protocol[self.inner] = self.conn
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.made:
            self.conn.on_data()
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.made else None

    def pause_writing(self) -> None:
        if self.made:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.made:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self.conn)
        if self.made:
            self.pool.by_protocol.pop(self.inner, None)
            self.inner.connection_lost(exc)


class ConnectionPool:
    """Accepts on each of `socks` and hands each connection to a protocol made by `factory`; the
    bound and the deadlines cover the connections of every listening socket together."""

    def __init__(self, socks: Sequence[socket.socket], factory: Callable[[], asyncio.Protocol],
                 ssl_context: ssl.SSLContext | None = None,
                 accept_peer: Callable[[asyncio.Transport], bool] = lambda t: True,
                 bound: int | None = None, header_timeout: float = HEADER_TIMEOUT,
                 send_stall: float = SEND_STALL) -> None:
        self.socks = list(socks)
        self.factory = factory
        self.ssl_context = ssl_context
        self.accept_peer = accept_peer
        self.bound = bound if bound is not None else connection_bound()
        self.header_timeout = header_timeout
        self.send_stall = send_stall
        self.conns: dict[Conn, None] = {}  # insertion-ordered set
        self.by_protocol: dict[asyncio.Protocol, Conn] = {}
        self.evicted = 0
        self.expired = 0
        self._accept_failing = False
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        for sock in self.socks:
            sock.setblocking(False)
        self._tasks = [*(asyncio.create_task(self._accept_loop(sock), name="accept") for sock in self.socks),
                       asyncio.create_task(self._sweep_loop(), name="sweep")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self.conns):
            conn.abort()
        for sock in self.socks:
            sock.close()

    def forget(self, conn: Conn) -> None:
        conn.closed = True
        self.conns.pop(conn, None)

    # --- accepting -------------------------------------------------------------------------------

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        failures = 0  # accepts failed in a row for want of a descriptor
        made_room = False  # a connection was closed for the one being accepted
        while True:
            try:
                client, peer = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRNOS:  # the client gave up before we accepted (ECONNABORTED, ...)
                    log.debug("accept failed: %s", exc)
                    continue
                if not self._accept_failing:
                    log.warning("cannot accept connections: %s; closing the longest-waiting ones to make room "
                                "(raise the open-file limit or expect fewer clients)", exc.strerror)
                    self._accept_failing = True
                failures += 1
                if failures == 1:
                    # Linux fails accept for want of a descriptor even when no connection is queued:
                    # wait for one (without spinning), then try again as it is.
                    await self._readable(sock)
                elif self._evict_one("no file descriptor left"):
                    made_room = True
                    await asyncio.sleep(0)  # the evicted connection's descriptor is freed on this turn
                else:  # the descriptors are held elsewhere: nothing to close, so wait
                    await asyncio.sleep(ACCEPT_RETRY)
                continue
            if self._accept_failing and not made_room:
                log.info("accepting connections again")
                self._accept_failing = False
            failures, made_room = 0, False
            conn = Conn(peer)
            evicted = len(self.conns) >= self.bound and self._evict_one(f"connection limit ({self.bound}) reached")
            self.conns[conn] = None
            conn.task = asyncio.create_task(self._connect(conn, client))
            # sock_accept returns at once while connections are queued: yield, so that the evicted
            # one is closed (its descriptor freed) and the others get their turn.
            await asyncio.sleep(0)
            if evicted:
                await asyncio.sleep(0)

    @staticmethod
    async def _readable(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())

    async def _connect(self, conn: Conn, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        ours = True  # the socket is ours to close until a transport takes it
        try:
            if conn.closed:  # evicted before it started
                return
            ssl_context = self.ssl_context  # the one in force when the connection came (a reload may swap it)
            if ssl_context is not None and await _speaks_plain_http(client):
                log.debug("answered 400 to plain HTTP from %s on the TLS port", conn.peer)
                await _answer_and_close(client, PLAIN_HTTP_TO_TLS)
                ours = False
                self.forget(conn)
                return
            ours = False
            # An answer goes out as its headers, then its body: with Nagle's algorithm the body would
            # wait for the client's delayed ACK of the headers, 40 ms a small answer (aiohttp set it too).
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.connect_accepted_socket(
                lambda: Guard(self, conn, self.factory()), client, ssl=ssl_context,
                ssl_handshake_timeout=self.header_timeout if ssl_context else None)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError, ssl.SSLError) as exc:
            # Once the transport exists it owns the socket and has closed it; closing it here too
            # could, once its number is reused, close someone else's.
            log.debug("connection from %s ended before its first request: %r", conn.peer, exc)
            self.forget(conn)
        finally:
            if ours:
                client.close()
            conn.task = None

    def _evict_one(self, reason: str) -> bool:
        """Close the connection that has waited longest on its client; none that is being answered."""
        oldest: Conn | None = None
        for conn in self.conns:
            if conn.state is not State.BUSY and (oldest is None or conn.since < oldest.since):
                oldest = conn
        if oldest is not None:
            log.debug("%s: closing the connection from %s (%s for %.1f s)",
                      reason, oldest.peer, oldest.state.value, time.monotonic() - oldest.since)
            self.evicted += 1
            oldest.abort()
            self.forget(oldest)
        return oldest is not None

    # --- deadlines -------------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self.conns):
                if conn.state is State.READING and now - conn.since > self.header_timeout:
                    log.debug("closing the connection from %s: no complete request headers in %.0f s",
                              conn.peer, self.header_timeout)
                elif conn.state is State.SENDING and now - conn.since > self.send_stall:
                    log.debug("closing the connection from %s: it stopped reading its answer for %.0f s",
                              conn.peer, self.send_stall)
                else:
                    continue
                self.expired += 1
                conn.abort()
                self.forget(conn)
