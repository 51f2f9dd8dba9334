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
import errno
import html
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from aiohttp import HttpVersion10, HttpVersion11, web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from . import __version__, jsonout
from .connections import Conn, ConnectionPool, connection_bound
from .query import QueryError
from .refresher import Published, Refresher
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
TEXT = "text/plain; charset=utf-8"
DEFAULT_TELEMETRY_PATH = "/metrics"


def not_ready_page(telemetry_path: str) -> bytes:
    """The host page before the first refresh: what is missing, and where the metrics are meanwhile."""
    link = html.escape(telemetry_path)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>passthrough-exporter</title></head>"
            f"<body><p>{NOT_READY}; this page reloads in a few seconds when refreshed.</p>"
            f"<p>metrics: <a href=\"{link}\">{link}</a></p></body></html>\n").encode()


Body = bytes | memoryview | list[bytes | memoryview]  # one buffer, or parts sent one after another


class ProcessMetrics:
    """client_python's process collector for this (the serving) process: memory, CPU, descriptors,
    start time. Collected per scrape (about 50 us: a few reads of /proc/self), unlike the rest."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


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


def _parse_error_status(exc: BaseException | None, status: int) -> int:
    """Our status for a request aiohttp could not parse. An over-long request line, header line or
    too many headers is 431, as Go's net/http counts the request line among the header bytes."""
    if isinstance(exc, LineTooLong) or (isinstance(exc, HttpProcessingError)
                                        and "too many headers" in str(exc.message).lower()):
        return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    return status


class _RequestHandler(web_protocol.RequestHandler):
    """aiohttp's protocol, answering what it cannot parse with our own status and words. aiohttp's
    text quotes the start of the request back (`Got more than 8190 bytes when reading:
    bytearray(b'/api/...`): a reflection for any client to play with, and noise for the rest."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        status = _parse_error_status(exc, status)
        # The exception's text quotes the request: its class says enough.
        log.debug("answered %d to a request from %s that could not be handled: %s", status, request.remote,
                  type(exc).__name__ if exc is not None else "no exception")
        if request.writer.output_size > 0:  # part of an answer went out: only closing is left
            raise ConnectionError("cannot answer after part of an answer was sent")
        manager = self._manager
        headers = manager.headers() if isinstance(manager, _Server) else {}
        resp = web.Response(status=status, body=f"{HTTPStatus(status).phrase}\n".encode(),
                            headers={**headers, "Content-Type": TEXT})
        resp.force_close()
        return resp


class _Server(web.Server):
    """aiohttp's low-level server, making our request handler; `headers` gives the headers every
    answer carries (the web config's, the Server header), errors included."""

    def __init__(self, handler: Any, headers: Callable[[], dict[str, str]], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.headers = headers

    def __call__(self) -> web_protocol.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


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

    def __init__(self, refresher: Refresher, web_config: WebConfig, pool: Callable[[], ConnectionPool],
                 telemetry_path: str = DEFAULT_TELEMETRY_PATH) -> None:
        self.refresher = refresher
        self._pool = pool
        self.telemetry_path = telemetry_path
        self.not_ready_page = not_ready_page(telemetry_path)
        self.process = ProcessMetrics()
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

    async def _send(self, request: web.BaseRequest, conn: Conn | None, status: int, body: Body, content_type: str,
                    headers: dict[str, str] | None = None, close: bool = False) -> web.StreamResponse:
        parts = [body] if isinstance(body, (bytes, memoryview)) else body
        resp = web.StreamResponse(status=status, headers={**self.extra_headers, **(headers or {}),
                                                          "Content-Type": content_type})
        resp.content_length = sum(len(part) for part in parts)
        if close:
            resp.force_close()
        await resp.prepare(request)
        if request.method != "HEAD":
            # Sent in slices: each waits until the transport has room, so a client that reads slowly
            # holds one slice of buffer, never a copy of the body.
            for part in parts:
                view = memoryview(part)
                for start in range(0, len(view), CHUNK):
                    await resp.write(view[start:start + CHUNK])
                    if conn is not None:
                        conn.progress()
        await resp.write_eof()
        return resp

    # --- routes --------------------------------------------------------------------------------

    async def _route(self, request: web.BaseRequest) -> tuple[int, Body, str, dict[str, str]]:
        if len(request.query_string) > MAX_QUERY:
            raise BadRequest("query string too long")
        path = request.path
        gz = _accepts_gzip(request.headers.get("Accept-Encoding", ""))
        if path == self.telemetry_path:
            # The refresh's exposition as it was rendered, then the status families and this process's
            # own figures, which change by the second: a few hundred bytes made per scrape (gzipped on
            # their own and joined to the refresh's gzip stream, which is never recompressed).
            parts = self.refresher.current().metrics(self.process.render(), gz)
            return 200, parts, CONTENT_TYPE_LATEST, ({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gz
                                                     else {"Vary": "Accept-Encoding"})
        if path == "/healthz":
            return self._healthz()
        if path == "/":
            published = self.refresher.current()
            if not published.ready:
                return 503, self.not_ready_page, HTML, {"Retry-After": "5"}
            page = published.rendered.page
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
        self.app = App(refresher, web_config, lambda: self.pool,  # type: ignore[arg-type, return-value]
                       telemetry_path=telemetry_path)
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
        handler = _Server(self.app.handle, lambda: self.app.extra_headers, access_log=None,
                          logger=_QuietLogger(logging.getLogger("aiohttp.server")), keepalive_timeout=KEEPALIVE,
                          max_line_size=8190, max_field_size=8190, max_headers=100, handler_cancellation=True)
        kwargs = {} if self._header_timeout is None else {"header_timeout": self._header_timeout}
        self.pool = ConnectionPool(self.sockets, handler, self.web_config.ssl_context, self._peer_allowed,
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
