"""The HTTP server: /metrics, the JSON API, /healthz and the host page, served from the last refresh.

HTTP/1.1 is parsed by aiohttp (llhttp, strict: duplicate or malformed Content-Length, folded
headers and bad request lines are answered 400 with a status line, and the connection closed); the
event loop runs in one thread, so an idle connection costs a descriptor and a few kilobytes, not a
thread. Connections are bounded and have a header deadline (connections.py).

Only GET and HEAD. Every answer comes from the published refresh (`Served`: its bodies rendered
once, by the refresh), so no request waits on the source; a device list for a filter is stitched
from the refresh's device objects once per refresh and filter (bodies.py), off the event loop, then
sent in slices as the client takes them: a slow or greedy client costs bytes sent, not work or memory. Basic-auth checks run
on a few threads, bounded in number and queue, and verified credentials are remembered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any
from urllib.parse import parse_qs

from aiohttp import HttpVersion10, HttpVersion11, web

from . import __version__, jsonout
from .connections import Conn, ConnectionPool, connection_bound
from .query import QueryError
from .refresher import Published, RefreshLoop
from .webconfig import WebConfig

log = logging.getLogger(__name__)

MAX_QUERY = 2048  # bytes of query string; device names are short
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
NOT_READY_PAGE = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>passthrough-exporter</title></head>"
                  f"<body><p>{NOT_READY}; this page reloads in a few seconds when refreshed.</p></body></html>\n").encode()


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


class _QuietLogger(logging.LoggerAdapter):
    """aiohttp logs every malformed request as an error with a traceback: a client's mistake is not
    ours, so it becomes one debug line."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.pop("exc_info", None)
        if isinstance(exc, BaseException):
            msg = f"{msg}: {exc!r}"
        kwargs.pop("stack_info", None)
        self.logger.log(logging.DEBUG, msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)


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
    """Routes and answers; runs on the event loop thread."""

    def __init__(self, refresher: RefreshLoop, web_config: WebConfig, pool: Callable[[], ConnectionPool]) -> None:
        self.refresher = refresher
        self.web = web_config
        self._pool = pool
        self.renderer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="render")
        self.hasher = concurrent.futures.ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt")
        self.bcrypt_pending = 0
        self.limiter = TokenBucket(web_config.rate_limit.interval, web_config.rate_limit.burst) \
            if web_config.rate_limit else None
        self.extra_headers = {"X-Content-Type-Options": "nosniff", **web_config.headers, "Server": SERVER}

    def close(self) -> None:
        self.renderer.shutdown(wait=False, cancel_futures=True)
        self.hasher.shutdown(wait=False, cancel_futures=True)

    # --- plumbing ------------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        conn = self._pool().by_protocol.get(request.protocol)  # type: ignore[arg-type]
        if conn is not None:
            conn.begin_request()
        try:
            return await self._handle(request, conn)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("error serving %s", request.path_qs[:200])
            return await self._send(request, conn, 500, _error_body("internal error"), JSON, close=True)
        finally:
            if conn is not None:
                conn.end_request()

    async def _handle(self, request: web.BaseRequest, conn: Conn | None) -> web.StreamResponse:
        if request.version not in (HttpVersion10, HttpVersion11):
            # llhttp lets HTTP/0.9 and HTTP/2.0 request lines through, and aiohttp would echo that
            # version in the status line; the answer is HTTP/1.1, as for every other error. (_message:
            # its public accessor is deprecated; aiohttp is pinned below 4 and a test covers this.)
            as_11 = web.BaseRequest(request._message._replace(version=HttpVersion11), request.content,
                                    request.protocol, request.writer, request.task, asyncio.get_running_loop())
            return await self._send(as_11, conn, 505, b"HTTP Version Not Supported\n", "text/plain; charset=utf-8",
                                    close=True)
        # A request body is never read. Transfer-Encoding on a GET has no business here (and an empty
        # or odd one is how requests are smuggled past proxies); any body ends the connection after
        # the answer, so nothing left of it can be read as the next request.
        if "Transfer-Encoding" in request.headers:
            return await self._send(request, conn, 400, b"Transfer-Encoding is not accepted\n",
                                    "text/plain; charset=utf-8", close=True)
        close = request.headers.get("Content-Length", "0") != "0"
        if request.method not in ("GET", "HEAD"):
            return await self._send(request, conn, 405, b"Method Not Allowed\n", "text/plain; charset=utf-8",
                                    {"Allow": "GET, HEAD"}, close=True)
        if self.limiter is not None and not self.limiter.allow():
            return await self._send(request, conn, 429, b"Too Many Requests\n", "text/plain; charset=utf-8", close=close)
        status = await self._authorize(request.headers.get("Authorization"))
        if status != 200 and request.path == "/healthz":
            # Open to probes (kubelet, load balancers) without credentials, but saying no more than
            # whether the exporter is ready; the full answer needs credentials like every other path.
            ready = self.refresher.current().ready
            return await self._send(request, conn, 200 if ready else 503, _json({"ready": ready}), JSON, close=close)
        if status == 401:
            return await self._send(request, conn, 401, b"Unauthorized\n", "text/plain; charset=utf-8",
                                    {"WWW-Authenticate": 'Basic realm="passthrough-exporter"'}, close=close)
        if status == 429:
            return await self._send(request, conn, 429, b"Too many login attempts in progress\n",
                                    "text/plain; charset=utf-8", {"Retry-After": "1"}, close=close)
        try:
            status, body, ctype, headers = await self._route(request)
        except QueryError as exc:
            status, body, ctype, headers = exc.status, _error_body(str(exc)), JSON, {}
        return await self._send(request, conn, status, body, ctype, headers, close=close)

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

    async def _send(self, request: web.BaseRequest, conn: Conn | None, status: int, body: bytes, content_type: str,
                    headers: dict[str, str] | None = None, close: bool = False) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={**self.extra_headers, **(headers or {}),
                                                          "Content-Type": content_type})
        resp.content_length = len(body)
        if close:
            resp.force_close()
        await resp.prepare(request)
        if request.method != "HEAD":
            # Sent in slices: each waits until the transport has room, so a client that reads slowly
            # holds one slice of buffer, never a copy of the body.
            view = memoryview(body)
            for start in range(0, len(view), CHUNK):
                await resp.write(view[start:start + CHUNK])
                if conn is not None:
                    conn.progress()
        await resp.write_eof()
        return resp

    # --- routes --------------------------------------------------------------------------------

    async def _route(self, request: web.BaseRequest) -> tuple[int, bytes, str, dict[str, str]]:
        if len(request.query_string) > MAX_QUERY:
            raise BadRequest("query string too long")
        path = request.path
        gz = _accepts_gzip(request.headers.get("Accept-Encoding", ""))
        if path == "/metrics":
            published = self.refresher.current()
            if gz:
                return 200, published.served.metrics_gzip, CONTENT_TYPE_LATEST, {"Content-Encoding": "gzip",
                                                                                 "Vary": "Accept-Encoding"}
            return 200, published.served.metrics, CONTENT_TYPE_LATEST, {"Vary": "Accept-Encoding"}
        if path == "/healthz":
            return self._healthz()
        if path == "/":
            published = self.refresher.current()
            if not published.ready:
                return 503, NOT_READY_PAGE, HTML, {"Retry-After": "5"}
            page = published.served.page
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
        served = published.served
        if path == "/api/findings":
            return ("findings",), lambda: served.findings
        table = served.table
        if path == "/api/devices":
            params = parse_qs(query, keep_blank_values=True, errors="surrogateescape")
            kwargs = {name: read(params[name][-1], name) for name, read in FILTERS.items() if name in params}
            key = ("devices",) + tuple(sorted(kwargs.items()))
            return key, lambda: table.list_body(table.select(**kwargs))
        name = path[len("/api/devices/"):]
        return ("device", name), lambda: table.device_body(name)

    async def _body(self, published: Published, key: Hashable, render: Callable[[], bytes], gz: bool) -> bytes:
        body = published.bodies.lookup(key, gz)
        if body is None:
            body = await asyncio.get_running_loop().run_in_executor(
                self.renderer, published.bodies.produce, key, render, gz)
        return body

    def _healthz(self) -> tuple[int, bytes, str, dict[str, str]]:
        published = self.refresher.current()
        served = published.served
        body = {"ready": published.ready, "source": served.status.source, "source_up": served.status.source_up,
                "devices": served.devices, "last_refresh": served.status.finished_at}
        return (200 if published.ready else 503), _json(body), JSON, {}


class ExporterServer:
    """The server on its own event-loop thread; `serve_forever` runs it, `shutdown` stops it."""

    def __init__(self, address: tuple[str, int], refresher: RefreshLoop, web_config: WebConfig,
                 bound: int | None = None, header_timeout: float | None = None) -> None:
        self.refresher = refresher
        self.web_config = web_config
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        self.socket = sock
        self.server_address = sock.getsockname()
        self.bound = bound if bound is not None else connection_bound()
        self._header_timeout = header_timeout
        self.pool: ConnectionPool | None = None
        self.app = App(refresher, web_config, lambda: self.pool)  # type: ignore[arg-type, return-value]
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
        handler = web.Server(self.app.handle, access_log=None, logger=_QuietLogger(logging.getLogger("aiohttp.server")),
                             keepalive_timeout=KEEPALIVE, max_line_size=8190, max_field_size=8190, max_headers=100,
                             handler_cancellation=True)
        kwargs = {} if self._header_timeout is None else {"header_timeout": self._header_timeout}
        self.pool = ConnectionPool(self.socket, handler, self.web_config.ssl_context, self._peer_allowed,
                                   bound=self.bound, **kwargs)
        self.pool.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self.pool.close()
            await handler.shutdown(0.5)
            self.app.close()

    def _peer_allowed(self, transport: asyncio.Transport) -> bool:
        if self.web_config.allowed_sans is None:
            return True
        return self.web_config.peer_allowed(transport.get_extra_info("peercert"))

    def wait_started(self, timeout: float = 10) -> None:
        self._started.wait(timeout)

    def shutdown(self) -> None:
        """Stop serving: every connection is closed. Safe to call more than once."""
        self._started.wait(10)
        if self._loop is not None and not self._done.is_set():
            self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
        self._done.wait(10)

    def server_close(self) -> None:
        if not self._started.is_set():
            self.socket.close()


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, (OSError, asyncio.CancelledError)):
        log.debug("%s: %r", context.get("message"), exc)  # a client went away mid-way: not our error
    else:
        loop.default_exception_handler(context)


def parse_listen_address(value: str) -> tuple[str, int]:
    """':9839', '127.0.0.1:9839', '[::1]:9839' -> (host, port); an empty host means every address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {value!r}: expected [host]:port")
    host = host.strip("[]")
    return (host or "0.0.0.0", int(port))


def serve(address: tuple[str, int], refresher: RefreshLoop, web_config: WebConfig) -> ExporterServer:
    """Listen on `address` (an OSError if it cannot) and serve from a background thread."""
    server = ExporterServer(address, refresher, web_config)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    server.wait_started()
    return server
