"""The HTTP server: /metrics, the JSON API, /healthz and the host page, served from the last refresh.

How a request flows:

1. connections.py accepts the connection (bounded in number, TLS when configured) and puts a
   `Guard` between its transport and an `HTTPProtocol` made here, one per connection. The event
   loop runs in one thread, so an idle connection costs a descriptor and a few kilobytes.
2. `HTTPProtocol.data_received` keeps the bytes, and `_take_head` cuts the next request's header
   block out of them (up to its empty line). It refuses at once what h11 would let through or only
   notice late: bare LF line ends and folded header lines (400), a request or header line over
   MAX_LINE bytes or more than MAX_HEADERS header lines (431, as Go counts the request line among
   the header bytes).
3. h11 (the sans-IO HTTP/1.1 parser and state machine of httpcore and uvicorn) reads the block into
   a request, or refuses it (duplicate or malformed Content-Length, a bad request line or header,
   HTTP/1.1 without Host; a second Host is refused here): 400 with our own few words, never
   quoting the request back.
4. `App.answer` turns the request into an `Answer` from the published refresh (`Rendered`: its bodies
   rendered once, by the refresh), so no request waits on the source: the version (505 but for
   1.0 and 1.1), Transfer-Encoding (400: no request body is read, and an odd one is how requests
   are smuggled past proxies), the method (405 but for GET and HEAD), the rate limit, basic auth
   (checks run on a few threads, bounded in number and queue; verified credentials are
   remembered), then the route. A device list for a filter is stitched from the refresh's device
   objects once per refresh and filter (bodies.py), off the event loop.
5. `HTTPProtocol._send` has h11 write the status line and headers (the web config's and `Server`
   on every answer, errors included), then sends the body in CHUNK slices, each once the transport
   has room again (pause_writing/resume_writing): a slow or greedy client costs bytes sent, not
   work or memory. The connection's `Conn` hears of each slice taken, for the send-stall rule.
6. Then the connection is closed (an error, a request body, `Connection: close`, HTTP/1.0) or h11
   starts its next cycle and the next request already received (pipelined) is taken, in order;
   an idle connection is closed after KEEPALIVE.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import html
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from .. import __version__
from ..judging.query import QueryError
from ..rendering import jsonout
from ..rendering.exposition import DEFAULT_TELEMETRY_PATH, go_float
from .connections import CLOSE_GRACE, Conn, ConnectionPool, connection_bound
from .webconfig import WebConfig

if TYPE_CHECKING:  # annotations only: importing the refresh machinery costs the server's memory
    from .refresher import Published, Refresher

log = logging.getLogger(__name__)

MAX_QUERY = 2048  # bytes of query string; device names are short
MAX_LINE = 8190  # bytes of a request line or a header line, its CRLF not counted
MAX_HEADERS = 100  # header lines of a request
MAX_HEAD = (MAX_HEADERS + 1) * (MAX_LINE + 2) + 2  # the largest header block, its empty line included
# The classic text format every Prometheus version parses (our names are plain ASCII).
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"
# Bytes handed to the transport at a time; the next slice waits until the client has taken the
# previous ones. One slice is all a slow reader can make the exporter buffer beside the shared body.
CHUNK = 64 * 1024
KEEPALIVE = 120.0  # idle keep-alive: longer than the usual scrape intervals (15-60 s)
SERVER = f"passthrough-exporter/{__version__}"
BCRYPT_THREADS = max(1, min(os.cpu_count() or 1, 4))
BCRYPT_QUEUE = 4 * BCRYPT_THREADS  # checks waiting or running; beyond it a login attempt gets 429
NOT_READY = "no snapshot yet: the first refresh has not finished"
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
TRANSFER_ENCODING_REFUSED = b"Transfer-Encoding is not accepted\n"


def not_ready_page(telemetry_path: str) -> bytes:
    """The host page before the first refresh: what is missing, and where the metrics are meanwhile."""
    link = html.escape(telemetry_path)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>passthrough-exporter</title></head>"
            f"<body><p>{NOT_READY}; this page reloads in a few seconds when refreshed.</p>"
            f"<p>metrics: <a href=\"{link}\">{link}</a></p></body></html>\n").encode()


Body = bytes | memoryview | list[bytes | memoryview]  # one buffer, or parts sent one after another


class ProcessMetrics:
    """This (the serving) process's memory, CPU, descriptors and start time, as client_python's
    ProcessCollector exposes them: the same families, help texts, types and order, read from
    /proc/self per scrape (a few reads, tens of microseconds). Written here because importing
    prometheus_client would cost the serving process more memory than the rest of the server."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        try:
            self.ticks = float(os.sysconf("SC_CLK_TCK"))
        except (ValueError, OSError):
            self.ticks = 100.0
        self.pagesize = os.sysconf("SC_PAGESIZE")
        self.btime = 0.0  # as client_python: no figures at all where /proc/stat cannot be read
        try:
            with open(f"{proc}/stat", "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self.btime = float(line.split()[1])
                        break
        except OSError:
            pass

    def render(self) -> bytes:
        if not self.btime:
            return b""
        out: list[str] = []

        def family(name: str, kind: str, doc: str, value: float) -> None:
            out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n{name} {go_float(value)}\n")

        try:
            with open(f"{self.proc}/self/stat", "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", float(parts[20]))
            family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                   float(parts[21]) * self.pagesize)
            family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
                   float(parts[19]) / self.ticks + self.btime)
            family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
                   float(parts[11]) / self.ticks + float(parts[12]) / self.ticks)
        except OSError:
            pass
        try:
            max_fds = None
            with open(f"{self.proc}/self/limits", "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open file"):
                        max_fds = float(line.split()[3])
                        break
            open_fds = len(os.listdir(f"{self.proc}/self/fd"))
            family("process_open_fds", "gauge", "Number of open file descriptors.", open_fds)
            if max_fds is not None:
                family("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds)
        except (OSError, ValueError):
            pass
        return "".join(out).encode()


class BadRequest(QueryError):
    status = 400


def _flag(value: str, name: str) -> bool:
    value = value.lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise BadRequest(f"{name} must be true or false")


# The documented filters of /api/devices and how to read each; together they are the cache key, so
# undocumented parameters can neither change a body nor grow the cache.
FILTERS: dict[str, Callable[[str, str], Any]] = {
    "cap": lambda v, n: v or None,
    "passthrough": _flag,
    "affected_by": lambda v, n: v,
    "available": _flag,
}


def _accepts_gzip(header: str) -> bool:
    """`gzip` (or `*`) listed in Accept-Encoding without q=0."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower().removeprefix("q=")
            try:
                return not params.strip() or float(q) > 0
            except ValueError:
                return False
    return False


def _json(obj: Any) -> bytes:
    return (jsonout.dumps(obj) + "\n").encode()


def _error_body(message: str) -> bytes:
    return _json({"error": message})


@dataclass(slots=True)
class Request:
    """What the routes read of a request h11 has parsed."""

    method: str
    target: str  # as sent: for the log
    path: str  # percent-decoded
    query_string: str  # as sent
    version: bytes  # b"1.1", b"1.0", or another h11 read (b"2.0", ...)
    headers: dict[str, str]  # lower-case name: its first value

    @classmethod
    def of(cls, event: h11.Request) -> Request:
        headers: dict[str, str] = {}
        for name, value in event.headers:  # names lower-cased by h11
            headers.setdefault(name.decode("ascii"), value.decode("latin-1"))
        target = event.target.decode("ascii")  # h11 takes visible ASCII only
        # origin-form (/path?query) as scrapers send it; absolute-form (http://host/path) is valid
        # too, its host part ignored. A fragment is no part of a request.
        without_fragment = target.partition("#")[0]
        if without_fragment.startswith("/"):
            path, _, query = without_fragment.partition("?")
        else:
            parts = urlsplit(without_fragment)
            path, query = parts.path or "/", parts.query
        try:
            path = unquote(path, errors="strict")
        except UnicodeDecodeError:
            pass  # escapes that are no UTF-8: the path as sent (a 404)
        return cls(event.method.decode("ascii"), target, path, query, event.http_version, headers)


@dataclass(slots=True)
class Answer:
    status: int
    body: Body
    headers: dict[str, str]  # all but the framing ones (Content-Length, Date, Connection), added when sent
    close: bool = False  # close the connection after it


class TokenBucket:
    """rate_limit of the web config, as Go's rate.Limiter: `burst` requests, one more per `interval`."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval, self.burst = interval, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) / self.interval)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class App:
    """Requests to answers; runs on the event loop thread and sends nothing itself (HTTPProtocol does)."""

    def __init__(self, refresher: Refresher, web_config: WebConfig,
                 telemetry_path: str = DEFAULT_TELEMETRY_PATH) -> None:
        self.refresher = refresher
        self.telemetry_path = telemetry_path
        self.not_ready_page = not_ready_page(telemetry_path)
        self.process = ProcessMetrics()
        # The published state the expositions below were made from, and (gzip, second) -> their parts:
        # see _metrics. Only the state in force is held.
        self._exposition: tuple[Published | None, dict[tuple[bool, int], list]] = (None, {})
        self.renderer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="render")
        self.hasher = concurrent.futures.ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt")
        self.bcrypt_pending = 0
        self.use_web_config(web_config)

    def use_web_config(self, web_config: WebConfig) -> None:
        """Answer by `web_config` from the next request on (on the event loop's thread)."""
        self.web = web_config
        self.limiter = TokenBucket(web_config.rate_limit.interval, web_config.rate_limit.burst) \
            if web_config.rate_limit else None
        self.extra_headers = {"X-Content-Type-Options": "nosniff", **web_config.headers, "Server": SERVER}

    def close(self) -> None:
        self.renderer.shutdown(wait=False, cancel_futures=True)
        self.hasher.shutdown(wait=False, cancel_futures=True)

    def _reply(self, status: int, body: Body, content_type: str, headers: dict[str, str] | None = None,
               close: bool = False) -> Answer:
        return Answer(status, body, {**self.extra_headers, **(headers or {}), "Content-Type": content_type}, close)

    def unparsable(self, status: int) -> Answer:
        """The answer to a request that could not be read: its status's words, and the connection closed."""
        if status == HTTPStatus.NOT_IMPLEMENTED:  # h11's answer to a Transfer-Encoding other than chunked
            return self._reply(400, TRANSFER_ENCODING_REFUSED, TEXT, close=True)
        return self._reply(status, f"{HTTPStatus(status).phrase}\n".encode(), TEXT, close=True)

    async def answer(self, request: Request) -> Answer:
        try:
            return await self._answer(request)
        except Exception:
            log.exception("error serving %s", request.target[:200])
            return self._reply(500, _error_body("internal error"), JSON, close=True)

    def _metrics(self, gz: bool) -> list:
        """The refresh's exposition as it was rendered, then the status families and this process's
        own figures, gzipped on their own and joined to the refresh's gzip stream, which is never
        recompressed. Those few hundred bytes are made at most once a second (and per refresh):
        reading /proc/self and compressing them was a third of the server's CPU under 64 clients, and
        a flood of scrapes should cost bytes sent, not work; Prometheus scrapes every 15 s or more."""
        published, key = self.refresher.current(), (gz, int(time.monotonic()))
        of, made = self._exposition
        if of is not published or key not in made:
            made = {k: v for k, v in made.items() if k[0] != gz} if of is published else {}
            made[key] = published.metrics(self.process.render(), gz)
            self._exposition = (published, made)
        return made[key]

    async def _answer(self, request: Request) -> Answer:
        if request.version not in (b"1.0", b"1.1"):
            # h11 reads any HTTP/D.D; the answer is HTTP/1.1, as for every other error.
            return self._reply(505, b"HTTP Version Not Supported\n", TEXT, close=True)
        # A request body is never read. Transfer-Encoding on a GET has no business here (and an empty
        # or odd one is how requests are smuggled past proxies); any body ends the connection after
        # the answer, so nothing left of it can be read as the next request.
        if "transfer-encoding" in request.headers:
            return self._reply(400, TRANSFER_ENCODING_REFUSED, TEXT, close=True)
        close = int(request.headers.get("content-length", "0")) != 0  # h11 has checked it is one number
        if request.method not in ("GET", "HEAD"):
            return self._reply(405, b"Method Not Allowed\n", TEXT, {"Allow": "GET, HEAD"}, close=True)
        if self.limiter is not None and not self.limiter.allow():
            return self._reply(429, b"Too Many Requests\n", TEXT, close=close)
        status = await self._authorize(request.headers.get("authorization"))
        if status != 200 and request.path == "/healthz":
            # Open to probes (kubelet, load balancers) without credentials, but saying no more than
            # whether the exporter is ready; the full answer needs credentials like every other path.
            ready = self.refresher.current().ready
            return self._reply(200 if ready else 503, _json({"ready": ready}), JSON, close=close)
        if status == 401:
            return self._reply(401, b"Unauthorized\n", TEXT,
                               {"WWW-Authenticate": 'Basic realm="passthrough-exporter"'}, close=close)
        if status == 429:
            return self._reply(429, b"Too many login attempts in progress\n", TEXT, {"Retry-After": "1"},
                               close=close)
        try:
            status, body, ctype, headers = await self._route(request)
        except QueryError as exc:
            status, body, ctype, headers = exc.status, _error_body(str(exc)), JSON, {}
        return self._reply(status, body, ctype, headers, close=close)

    async def _authorize(self, header: str | None) -> int:
        fast = self.web.authorize_fast(header)
        if fast is not None:
            return 200 if fast else 401
        if self.bcrypt_pending >= BCRYPT_QUEUE:
            return 429
        self.bcrypt_pending += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(self.hasher, self.web.authorize_slow, header)
        finally:
            self.bcrypt_pending -= 1
        return 200 if ok else 401

    # --- routes --------------------------------------------------------------------------------

    async def _route(self, request: Request) -> tuple[int, Body, str, dict[str, str]]:
        if len(request.query_string) > MAX_QUERY:
            raise BadRequest("query string too long")
        path = request.path
        gz = _accepts_gzip(request.headers.get("accept-encoding", ""))
        if path == self.telemetry_path:
            parts = self._metrics(gz)
            return 200, parts, CONTENT_TYPE_LATEST, ({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gz
                                                     else {"Vary": "Accept-Encoding"})
        if path == "/healthz":
            return self._healthz()
        if path == "/":
            published = self.refresher.current()
            if not published.ready:
                return 503, self.not_ready_page, HTML, {"Retry-After": "5"}
            page = published.page
            body = await self._body(published, ("page",), lambda: page, gz)
            return 200, body, HTML, ({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gz
                                     else {"Vary": "Accept-Encoding"})
        if path == "/api/devices" or path.startswith("/api/devices/") or path == "/api/findings":
            published = self.refresher.current()
            if not published.ready:
                return 503, _error_body(NOT_READY), JSON, {"Retry-After": "5"}
            key, render = self._api(published, path, request.query_string)
            body = await self._body(published, key, render, gz)
            return 200, body, JSON, ({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gz
                                     else {"Vary": "Accept-Encoding"})
        return 404, _error_body("not found"), JSON, {}

    def _api(self, published: Published, path: str, query: str) -> tuple[Hashable, Callable[[], bytes]]:
        rendered = published.rendered
        if path == "/api/findings":
            return ("findings",), lambda: rendered.findings
        if path == "/api/devices":
            params = parse_qs(query, keep_blank_values=True, errors="surrogateescape")
            kwargs = {name: read(params[name][-1], name) for name, read in FILTERS.items() if name in params}
            key = ("devices",) + tuple(sorted(kwargs.items()))
            return key, lambda: rendered.list_body(rendered.index.select(**kwargs))
        name = path[len("/api/devices/"):]
        return ("device", name), lambda: rendered.device_body(name)

    async def _body(self, published: Published, key: Hashable, render: Callable[[], bytes], gz: bool) -> bytes:
        body = published.bodies.lookup(key, gz)
        if body is None:
            body = await asyncio.get_running_loop().run_in_executor(
                self.renderer, published.bodies.produce, key, render, gz)
        return body

    def _healthz(self) -> tuple[int, bytes, str, dict[str, str]]:
        published = self.refresher.current()
        status = published.status
        body = {"ready": published.ready, "source": status.source, "source_up": status.source_up,
                "devices": len(published.rendered.index), "last_refresh": status.finished_at}
        return (200 if published.ready else 503), _json(body), JSON, {}


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header's value (RFC 9110's IMF-fixdate), made once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        t = time.gmtime(now)
        _date = (now, f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
                      f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT".encode())
    return _date[1]


class Unparsable(Exception):
    """A request answered with `status` (400, 431, 501 for h11's Transfer-Encoding, 505) and not read."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# Where a request may begin: a method is a token. Anything else (a TLS record, binary) is refused
# at its first byte instead of waiting for a line end that may never come.
_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HTTP09 = re.compile(rb"[A-Za-z]+ /\S*")  # a request line without a version: HTTP/0.9


class HTTPProtocol(asyncio.Protocol):
    """One client connection, behind connections.Guard: bytes in, h11 events, answers out. One
    request is answered at a time; what arrives meanwhile waits in `buffer` (reading pauses when a
    client sends more than a header block ahead)."""

    def __init__(self, app: App, pool: Callable[[], ConnectionPool | None]) -> None:
        self.app = app
        self.pool = pool
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.buffer = bytearray()  # received, not yet read as a request
        self.checked = 0  # bytes of `buffer` in whole lines already checked (of a head not yet complete)
        self.lines = 0  # lines among them
        self.transport: asyncio.Transport | None = None
        self.conn: Conn | None = None
        self.task: asyncio.Task | None = None  # answering the request in hand
        self.writable: asyncio.Future | None = None  # while the transport's buffer is full
        self.timer: asyncio.TimerHandle | None = None  # the keep-alive limit, or the close after an answer
        self.reading_paused = False
        self.closing = False  # the last answer is out (or going): nothing more is read
        self.eof = False  # the client closed its side

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        pool = self.pool()
        self.conn = pool.by_protocol.get(self) if pool is not None else None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # after the last answer: what the client still sends is dropped
        self._stop_timer()
        self.buffer += data
        if self.task is None:
            self._next()
        elif len(self.buffer) > MAX_HEAD and not self.reading_paused:
            # Pipelining faster than it takes its answers: the rest waits in the kernel.
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.reading_paused = True

    def eof_received(self) -> bool | None:
        self.eof = True
        # A client may close its side once its request is sent: answer it, then close. (Over TLS
        # the transport closes anyway.)
        busy = self.task is not None and not self.closing
        return True if busy and self.transport.get_extra_info("sslcontext") is None else None  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self.writable = self.writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._stop_timer()
        if self.task is not None:
            self.task.cancel()

    # --- requests --------------------------------------------------------------------------------

    def _next(self) -> None:
        """Answer the next request received, once its head is complete."""
        if self.reading_paused and len(self.buffer) <= MAX_HEAD:
            self.transport.resume_reading()  # type: ignore[union-attr]
            self.reading_paused = False
        try:
            head = self._take_head()
            if head is None:
                if self.eof:
                    self._close()  # every request the client sent before closing its side is answered
                elif not self.buffer:
                    self.timer = asyncio.get_running_loop().call_later(KEEPALIVE, self._idle_timeout)
                return
            request = self._parse(head)
        except Unparsable as exc:
            peer = self.conn.peer if self.conn is not None else None
            log.debug("answered %d to a request from %s that could not be read: %s", exc.status, peer, exc)
            self.task = asyncio.get_running_loop().create_task(self._respond(None, exc.status))
            return
        self.task = asyncio.get_running_loop().create_task(self._respond(request))

    def _take_head(self) -> bytes | None:
        """The next request's header block taken out of `buffer`, None until its empty line is in;
        its lines are checked as they arrive."""
        buf = self.buffer
        pos, lines = self.checked, self.lines
        if pos == 0:
            blank = 0
            while buf.startswith(b"\r\n", blank):  # empty lines before a request are ignored (RFC 9112 2.2)
                blank += 2
            del buf[:blank]
            if buf and buf[0] not in _TOKEN_BYTES and buf != b"\r":  # (a CR alone: its LF may follow)
                raise Unparsable(400, "no request line")
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_LINE + 1:  # the line's CR may be in
                    raise Unparsable(431, f"a line over {MAX_LINE} bytes")
                self.checked, self.lines = pos, lines
                return None
            if buf[end - 1] != 0x0D:  # at a line's start too: the byte before is the last line's LF
                raise Unparsable(400, "a line ends in LF without CR")
            if end - 1 - pos > MAX_LINE:
                raise Unparsable(431, f"a line over {MAX_LINE} bytes")
            if end - 1 == pos:  # the empty line: the head is complete
                head = bytes(buf[:end + 1])
                del buf[:end + 1]
                self.checked, self.lines = 0, 0
                return head
            if lines and buf[pos] in b" \t":
                raise Unparsable(400, "a folded header line")  # obs-fold: h11 would unfold it
            lines += 1
            if lines > MAX_HEADERS + 1:
                raise Unparsable(431, f"more than {MAX_HEADERS} header lines")
            pos = end + 1

    def _parse(self, head: bytes) -> Request:
        self.h11.receive_data(head)
        try:
            event = self.h11.next_event()
            assert isinstance(event, h11.Request), event
            self.h11.next_event()  # EndOfMessage when no body is announced; a body is never read
        except h11.RemoteProtocolError as exc:
            if _HTTP09.fullmatch(head.partition(b"\r\n")[0]):
                raise Unparsable(505, "an HTTP/0.9 request line") from None
            status = exc.error_status_hint if exc.error_status_hint in (431, 501) else 400
            raise Unparsable(status, str(exc).partition(":")[0]) from None  # its words past ':' quote the request
        if sum(1 for name, _ in event.headers if name == b"host") > 1:
            raise Unparsable(400, "more than one Host header")  # RFC 9112 3.2: h11 takes them
        return Request.of(event)

    async def _respond(self, request: Request | None, error: int = 0) -> None:
        conn = self.conn
        if conn is not None:
            conn.begin_request()
        try:
            answer = await self.app.answer(request) if request is not None else self.app.unparsable(error)
            await self._send(answer, head_only=request is not None and request.method == "HEAD")
        except (ConnectionError, asyncio.CancelledError):
            return  # the client went away, or the server is stopping
        except Exception:
            log.exception("error answering %s", request.target[:200] if request is not None else "a request")
            self.transport.abort()  # type: ignore[union-attr]
            return
        finally:
            self.task = None
            if conn is not None:
                conn.end_request()
        if answer.close or self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            self._close()
        else:
            self.h11.start_next_cycle()
            self._next()

    async def _send(self, answer: Answer, head_only: bool) -> None:
        parts = [answer.body] if isinstance(answer.body, (bytes, memoryview)) else answer.body
        headers = [(name.encode(), value.strip().encode()) for name, value in answer.headers.items()]
        headers += [(b"Content-Length", str(sum(len(part) for part in parts)).encode()), (b"Date", http_date())]
        if answer.close:
            headers.append((b"Connection", b"close"))
        # h11 adds `Connection: close` itself where it will not keep the connection (HTTP/1.0, the
        # client's own `Connection: close`), and sends no body to a HEAD.
        head: bytes | None = b"".join(self.h11.send_with_data_passthrough(h11.Response(
            status_code=answer.status, headers=headers, reason=HTTPStatus(answer.status).phrase.encode())))
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            raise ConnectionResetError("the connection closed before the answer")
        if not head_only:
            # Sent in slices: each waits until the transport has room, so a client that reads slowly
            # holds one slice of buffer, never a copy of the body.
            for part in parts:
                view = memoryview(part)
                for start in range(0, len(view), CHUNK):
                    piece = view[start:start + CHUNK]
                    self.h11.send_with_data_passthrough(h11.Data(data=piece))  # counted against Content-Length
                    if transport.is_closing():
                        raise ConnectionResetError("the connection closed while answering")
                    if head is not None:
                        transport.writelines((head, piece))  # the head with the first slice
                        head = None
                    else:
                        transport.write(piece)
                    if self.writable is not None:
                        await self.writable
                    if self.conn is not None:
                        self.conn.progress()
        if head is not None:
            transport.write(head)
        self.h11.send(h11.EndOfMessage())

    # --- closing ---------------------------------------------------------------------------------

    def _close(self) -> None:
        """Close once the last answer is out: our side first, then, when the client has closed its
        own (or after CLOSE_GRACE), the connection. Closing with bytes from the client unread would
        reset the connection, and could throw the answer away."""
        self.closing = True
        self.buffer.clear()
        transport = self.transport
        assert transport is not None
        if self.eof or not transport.can_write_eof():  # the client's side is closed already, or TLS
            transport.close()
            return
        transport.write_eof()  # sent once the answer is
        self.timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.close)

    def _idle_timeout(self) -> None:
        self.timer = None
        if self.task is None and not self.buffer:
            self.closing = True
            self.transport.close()  # type: ignore[union-attr]

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ListenError(OSError):
    """An address that cannot be listened on, named as it was given."""

    def __init__(self, address: str, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror)
        self.address = address

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.strerror}"


class ExporterServer:
    """The server on its own event-loop thread; `serve_forever` runs it, `shutdown` stops it.
    `address` is one (host, port) or several; each listens as `listen` says."""

    def __init__(self, address: tuple[str, int] | Sequence[tuple[str, int]], refresher: Refresher,
                 web_config: WebConfig, bound: int | None = None, header_timeout: float | None = None,
                 telemetry_path: str = DEFAULT_TELEMETRY_PATH) -> None:
        self.refresher = refresher
        self.web_config = web_config
        addresses = [address] if isinstance(address[0], str) else list(address)  # type: ignore[list-item]
        self.sockets: list[socket.socket] = []
        for host, port in addresses:  # type: ignore[misc]
            try:
                self.sockets.append(listen(host, port))
            except OSError as exc:
                for sock in self.sockets:
                    sock.close()
                raise ListenError(format_address(host, port), exc) from None
        self.socket = self.sockets[0]
        self.server_address = self.socket.getsockname()
        self.server_addresses = [sock.getsockname() for sock in self.sockets]
        self.bound = bound if bound is not None else connection_bound()
        self._header_timeout = header_timeout
        self.pool: ConnectionPool | None = None
        self.app = App(refresher, web_config, telemetry_path=telemetry_path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._done = threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:  # noqa: ARG002 - socketserver's signature
        try:
            asyncio.run(self._main())
        finally:
            self._done.set()

    async def _main(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        loop.set_exception_handler(_loop_exception)
        self._stop = asyncio.Event()
        kwargs = {} if self._header_timeout is None else {"header_timeout": self._header_timeout}
        self.pool = ConnectionPool(self.sockets, lambda: HTTPProtocol(self.app, lambda: self.pool),
                                   self.web_config.ssl_context, self._peer_allowed, bound=self.bound, **kwargs)
        self.pool.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self.pool.close()
            self.app.close()

    def _peer_allowed(self, transport: asyncio.Transport) -> bool:
        if self.web_config.allowed_sans is None:
            return True
        return self.web_config.peer_allowed(transport.get_extra_info("peercert"))

    def wait_started(self, timeout: float = 10) -> None:
        self._started.wait(timeout)

    def use_web_config(self, web_config: WebConfig) -> None:
        """Serve by another web config from the next connection (TLS) and request (the rest) on;
        connections already open keep their TLS session."""
        def swap() -> None:
            self.web_config = web_config
            self.app.use_web_config(web_config)
            if self.pool is not None:
                self.pool.ssl_context = web_config.ssl_context

        self._started.wait(10)
        loop = self._loop
        if loop is None or self._done.is_set():
            swap()
            return
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (swap(), done.set()))
        done.wait(10)

    def shutdown(self) -> None:
        """Stop serving: every connection is closed. Safe to call more than once."""
        self._started.wait(10)
        if self._loop is not None and not self._done.is_set():
            self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
        self._done.wait(10)

    def server_close(self) -> None:
        if not self._started.is_set():
            for sock in self.sockets:
                sock.close()


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, (OSError, asyncio.CancelledError)):
        log.debug("%s: %r", context.get("message"), exc)  # a client went away mid-way: not our error
    else:
        loop.default_exception_handler(context)


def parse_listen_address(value: str) -> tuple[str, int]:
    """':9839', '127.0.0.1:9839', '[::1]:9839', 'localhost:9839' -> (host, port), as Go's
    net.SplitHostPort reads them; an empty host means every address, IPv6 and IPv4."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {value!r}: expected [HOST]:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"--web.listen-address {value!r}: brackets are for IPv6 addresses")
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"--web.listen-address {value!r}: an IPv6 address goes in brackets, e.g. [::1]:{port}")
    return (host, int(port))


def format_address(host: str, port: int) -> str:
    """(host, port) as it is written on the command line: ':9839', '[::1]:9839', '127.0.0.1:9839'."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# socket() or bind() failing so when the kernel has no IPv6 (ipv6.disable=1, some containers).
NO_IPV6 = {errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL}


def listen(host: str, port: int) -> socket.socket:
    """A listening socket for one address. An empty host (':PORT') is one IPv6 socket that takes
    IPv4 too (IPV6_V6ONLY off, as Go listens on ':PORT'), or IPv4 alone where the kernel has no
    IPv6; '::' is the same socket. Any other address is bound as given."""
    if host in ("", "::"):
        try:
            return _bound(socket.AF_INET6, ("::", port), dual_stack=True)
        except OSError as exc:
            if exc.errno not in NO_IPV6 or host == "::":
                raise
            log.debug("no IPv6 here (%s): listening on IPv4 alone for :%d", exc.strerror, port)
        return _bound(socket.AF_INET, ("0.0.0.0", port))
    return _bound(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))


def _bound(family: socket.AddressFamily, address: tuple[str, int], dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:  # whatever net.ipv6.bindv6only says
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def serve(address: tuple[str, int] | Sequence[tuple[str, int]], refresher: Refresher, web_config: WebConfig,
          telemetry_path: str = DEFAULT_TELEMETRY_PATH) -> ExporterServer:
    """Listen on `address` (a ListenError if it cannot) and serve from a background thread."""
    server = ExporterServer(address, refresher, web_config, telemetry_path=telemetry_path)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    server.wait_started()
    return server
