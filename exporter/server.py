"""The HTTP server: /metrics, the JSON API, /healthz and a landing page, served from the last snapshot.

Only GET and HEAD; every answer comes from the published snapshot, so no request waits on the
source, and any unexpected error becomes a logged 500 with no traceback on the wire (never on
/metrics, whose body is pre-rendered bytes).
"""

from __future__ import annotations

import html
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import __version__
from .query import QueryError, device, select
from .refresher import Refresher
from .webconfig import WebConfig

log = logging.getLogger(__name__)

MAX_QUERY = 2048  # bytes of query string; device names are short
# The classic text format every Prometheus version parses (our names are plain ASCII).
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


class BadRequest(QueryError):
    status = 400


def _flag(params: dict[str, list[str]], name: str) -> bool:
    value = params.get(name, ["false"])[-1].lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise BadRequest(f"{name} must be true or false")


class Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = f"passthrough-exporter/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle on, a small gzipped body waits for the
    # client's delayed ACK (40 ms on Linux) before it leaves.
    disable_nagle_algorithm = True

    # --- plumbing ------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, indent=1).encode() + b"\n", "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _close_if_body(self) -> None:
        # Request bodies are never read: one left on a kept-alive connection would be parsed as
        # the next request (request smuggling), so the connection ends with this answer.
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._close_if_body()
        try:
            if not self.server.web_config.check_authorization(self.headers.get("Authorization")):
                body = b"Unauthorized\n"
                self._send(401, body, "text/plain; charset=utf-8",
                           {"WWW-Authenticate": 'Basic realm="passthrough-exporter"'})
                return
            self._route()
        except QueryError as exc:
            self._error(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("error serving %s", self.path)
            self._error(500, "internal error")

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        self._close_if_body()
        self._send(405, b"Method Not Allowed\n", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"})

    def __getattr__(self, name: str) -> Any:
        # Every other method, known or invented (PROPFIND, FOO), is refused the same way: 405, not 501.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    # --- routes --------------------------------------------------------------------------

    def _route(self) -> None:
        url = urlsplit(self.path)
        if len(url.query) > MAX_QUERY:
            raise BadRequest("query string too long")
        params = parse_qs(url.query, keep_blank_values=True)
        path = url.path
        if path == "/metrics":
            self._metrics()
        elif path == "/api/devices":
            self._devices(params)
        elif path.startswith("/api/devices/"):
            snap = self.server.refresher.current().snapshot
            self._json(200, device(snap, unquote(path[len("/api/devices/"):])))
        elif path == "/api/findings":
            snap = self.server.refresher.current().snapshot
            self._json(200, [{"code": f.code, "severity": f.severity, "subject": f.subject, "message": f.message}
                             for f in snap.findings])
        elif path == "/healthz":
            self._healthz()
        elif path == "/":
            self._send(200, self.server.landing_page, "text/html; charset=utf-8")
        else:
            self._error(404, "not found")

    def _metrics(self) -> None:
        published = self.server.refresher.current()
        if _accepts_gzip(self.headers.get("Accept-Encoding", "")):
            self._send(200, published.metrics_gzip, CONTENT_TYPE_LATEST, {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        else:
            self._send(200, published.metrics, CONTENT_TYPE_LATEST, {"Vary": "Accept-Encoding"})

    def _devices(self, params: dict[str, list[str]]) -> None:
        snap = self.server.refresher.current().snapshot
        cap = params.get("cap", [None])[-1] or None
        affected_by = params.get("affected_by", [None])[-1]
        names = select(snap, cap=cap, passthrough=_flag(params, "passthrough"), affected_by=affected_by,
                       available=_flag(params, "available"))
        self._json(200, [snap.device_object(n) for n in names])

    def _healthz(self) -> None:
        published = self.server.refresher.current()
        snap = published.snapshot
        body = {"ready": published.ready, "source": snap.source, "source_up": snap.source_up,
                "devices": len(snap.inventory), "last_refresh": snap.finished_at}
        self._json(200 if published.ready else 503, body)


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


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], refresher: Refresher, web_config: WebConfig) -> None:
        self.refresher = refresher
        self.web_config = web_config
        self.landing_page = _landing_page().encode()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        if web_config.ssl_context is not None:
            self.socket = web_config.ssl_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)  # a client that stalls mid-request cannot pin a thread forever
        if hasattr(request, "do_handshake"):
            try:
                request.do_handshake()
            except (OSError, ValueError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


def parse_listen_address(value: str) -> tuple[str, int]:
    """':9839', '127.0.0.1:9839', '[::1]:9839' -> (host, port); an empty host means every address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {value!r}: expected [host]:port")
    host = host.strip("[]")
    return (host or "0.0.0.0", int(port))


def serve(address: tuple[str, int], refresher: Refresher, web_config: WebConfig) -> ExporterServer:
    server = ExporterServer(address, refresher, web_config)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def _landing_page() -> str:
    links = "".join(
        f'<li><a href="{html.escape(p)}">{html.escape(p)}</a> {html.escape(d)}</li>'
        for p, d in (
            ("/metrics", "Prometheus metrics"),
            ("/api/devices", "every device, as JSON (cap, passthrough, affected_by)"),
            ("/api/devices?passthrough=true", "devices that can be passed through"),
            ("/api/findings", "safety findings"),
            ("/healthz", "health"),
        )
    )
    return (f"<!doctype html><html><head><title>passthrough-exporter</title></head><body>"
            f"<h1>passthrough-exporter {html.escape(__version__)}</h1>"
            f"<p>Which host devices can be passed through to a VM, and whether IOMMU isolation holds.</p>"
            f"<ul>{links}</ul></body></html>\n")
