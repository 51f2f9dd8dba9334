"""Candidate HTTP servers side by side: the attacks of issue 14 and scrape latency.

Each candidate serves one pre-rendered /metrics body (plain, or gzip when asked) from a process of
its own, started under a 1024 open-file limit as systemd gives a service. The client then sends
the hostile requests, measures how long a connection that trickles its headers is kept, opens
1,100 trickling connections and times a scrape beside them, and runs 64 keep-alive clients.

    python -m benchmarks.http_servers --body BODY.prom [--candidates stdlib,aiohttp,...]
        [--host /dev/shm/passthrough-bench/host-5000-s7-v1] [--log-dir DIR]
    (the body: passthrough-exporter textfile BODY.prom on a generated 5,000-device host; with
    --host, the candidate passthrough-exporter is the product itself serving that host; each
    candidate's stderr goes to DIR/http-servers-NAME.log, DIR the system's temporary folder unless given)

Needs the candidates installed (pip install aiohttp uvicorn h11 hypercorn cheroot). Every
candidate runs with its defaults plus what its documentation offers against slow clients.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import re
import resource
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.client import NotUp, connect, connection, exchange, free_port, raw, request, trickling, wait_up

CANDIDATES = ("stdlib", "aiohttp", "uvicorn-h11", "hypercorn", "cheroot")
EXPORTER = "passthrough-exporter"  # the product as built on the chosen library, serving --host
ROOT = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.http_servers` runs from


# --- servers (each in its own process) ----------------------------------------------------------

def run_server(name: str, port: int, body_path: str) -> None:
    plain = open(body_path, "rb").read()
    zipped = gzip.compress(plain, 6, mtime=0)

    def pick(accept: str) -> tuple[bytes, list[tuple[str, str]]]:
        if "gzip" in accept:
            return zipped, [("Content-Encoding", "gzip")]
        return plain, []

    if name == "stdlib":
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body, extra = pick(self.headers.get("Accept-Encoding", ""))
                self.send_response(200)
                for k, v in extra:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        ThreadingHTTPServer.daemon_threads = True
        ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
    elif name == "aiohttp":
        import asyncio

        from aiohttp import web

        async def handler(request: web.BaseRequest) -> web.Response:
            if request.path != "/metrics":
                return web.Response(status=404)
            body, extra = pick(request.headers.get("Accept-Encoding", ""))
            return web.Response(body=body, headers=dict(extra))

        async def main() -> None:
            server = web.Server(handler)
            await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)
            await asyncio.Event().wait()

        asyncio.run(main())
    elif name in ("uvicorn-h11", "hypercorn"):
        async def app(scope, receive, send) -> None:
            if scope["type"] != "http":
                return
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            if scope["path"] != "/metrics":
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            body, extra = pick(headers.get("accept-encoding", ""))
            hdrs = [(b"content-length", str(len(body)).encode())] + [(k.encode(), v.encode()) for k, v in extra]
            await send({"type": "http.response.start", "status": 200, "headers": hdrs})
            await send({"type": "http.response.body", "body": body})

        if name == "uvicorn-h11":
            import uvicorn
            # limit_concurrency is uvicorn's only guard against too many connections (503 beyond it)
            uvicorn.run(app, host="127.0.0.1", port=port, http="h11", log_level="critical",
                        limit_concurrency=900, lifespan="off")
        else:
            import asyncio

            from hypercorn.asyncio import serve
            from hypercorn.config import Config
            cfg = Config()
            cfg.bind = [f"127.0.0.1:{port}"]
            cfg.read_timeout = 10  # hypercorn's knob against idle readers
            cfg.loglevel = "CRITICAL"
            asyncio.run(serve(app, cfg))
    elif name == "cheroot":
        from cheroot import wsgi

        def wsgi_app(environ, start_response):
            if environ["PATH_INFO"] != "/metrics":
                start_response("404 Not Found", [("Content-Length", "0")])
                return [b""]
            body, extra = pick(environ.get("HTTP_ACCEPT_ENCODING", ""))
            start_response("200 OK", [("Content-Length", str(len(body)))] + extra)
            return [body]

        wsgi.Server(("127.0.0.1", port), wsgi_app, numthreads=10, timeout=10).start()
    else:
        raise SystemExit(f"unknown candidate {name}")


# --- client -----------------------------------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
ATTACKS = {
    "dup Content-Length": b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "Content-Length : N": b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length : %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "empty Transfer-Encoding": b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "folded header": b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "HTTP/2.0 line": b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n",
    "FOO/1.1 line": b"GET /metrics FOO/1.1\r\nHost: x\r\n\r\n",
    "garbage line": b"GARBAGE\r\n\r\n",
}


def verdict(out: bytes) -> str:
    if not out:
        return "closed, no answer"
    if not out.startswith(b"HTTP/"):
        return "no status line: " + repr(out[:30])
    statuses = [line.split(b" ")[1].decode() + ("" if line.startswith(b"HTTP/1.") else f" as {line[:8].decode()}")
                for line in out.split(b"\r\n") if re.match(rb"HTTP/\d\.\d \d{3} ", line)]
    smuggled = " SMUGGLED" if len(statuses) > 1 else ""
    return "/".join(statuses) + smuggled


def header_deadline(port: int, limit: float = 30) -> str:
    """Seconds until a connection sending one header byte a second is closed (>limit: never)."""
    t0 = time.monotonic()
    with connect(port, timeout=2) as s:
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            while time.monotonic() - t0 < limit:
                s.sendall(b"X")
                if select.select([s], [], [], 1)[0]:
                    answer = s.recv(200)
                    head = answer.split(b"\r\n", 1)[0].decode(errors="replace")
                    return f"{time.monotonic() - t0:.0f} s" + (f" ({head})" if head else "")
            return f">{limit:.0f} s"
        except OSError as exc:
            return f"{time.monotonic() - t0:.0f} s ({exc.__class__.__name__})"


def scrape(port: int, timeout: float = 10, gz: bool = True) -> float | None:
    t0 = time.monotonic()
    try:
        status = request(port, "/metrics", headers={"Accept-Encoding": "gzip"} if gz else {}, timeout=timeout).status
    except (OSError, http.client.HTTPException):
        return None
    return time.monotonic() - t0 if status == 200 else None


def trickle(port: int, n: int = 1100) -> str:
    with trickling(port, n, b"GET /metrics HTTP/1.1\r\n", drip=b"X", every=2, timeout=2, refused_ok=True):
        time.sleep(3)
        took = scrape(port, timeout=10)
    return f"{took:.2f} s" if took is not None else "no answer in 10 s"


def load(port: int, seconds: float = 10, clients: int = 64) -> str:
    lat: list[float] = []
    errors = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def one() -> None:
        conn = connection(port, timeout=30)
        local = []
        while not stop.is_set():
            try:
                t0 = time.perf_counter()
                status = exchange(conn, "/metrics", headers={"Accept-Encoding": "gzip"}).status
                local.append(time.perf_counter() - t0)
                if status != 200:
                    errors[0] += 1
            except (OSError, http.client.HTTPException):
                errors[0] += 1
                conn = connection(port, timeout=30)
        with lock:
            lat.extend(local)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    if not lat:
        return f"no answer, errors {errors[0]}"
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    return f"{len(lat) / seconds:.0f}/s p50 {p(0.5):.1f} ms p99 {p(0.99):.1f} ms errors {errors[0]}"


def measure(name: str, body: str, seconds: float, host: str | None = None,
            log_dir: str | None = None) -> dict[str, str]:
    port = free_port()
    # A file, not a pipe: a server logging every failed accept would fill a pipe and stall.
    log = open(os.path.join(log_dir or tempfile.gettempdir(), f"http-servers-{name}.log"), "wb")
    if name == EXPORTER:
        exe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "bin", EXPORTER)
        cmd = [exe, "serve", "--web.listen-address", f"127.0.0.1:{port}", "--path.sysfs", f"{host}/sys",
               "--path.procfs", f"{host}/proc"]
    else:
        cmd = [sys.executable, "-m", "benchmarks.http_servers", "--serve", name, "--port", str(port), "--body", body]
    proc = subprocess.Popen(["prlimit", "--nofile=1024:1024", *cmd], stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
    try:
        try:
            wait_up(port, "/metrics", proc=proc, timeout=20, headers={"Accept-Encoding": "gzip"})
        except NotUp as exc:
            raise SystemExit(f"{name} did not start ({exc}), see {log.name}") from None
        print(f"## {name}", flush=True)
        row = {attack: verdict(raw(port, data, timeout=3)) for attack, data in ATTACKS.items()}
        row["header deadline"] = header_deadline(port)
        row["64 clients gzip"] = load(port, seconds)
        row["scrape beside 1,100 trickling"] = trickle(port)
        time.sleep(3)
        row["alive after"] = "yes" if scrape(port) is not None else "NO"
        log.flush()
        row["log lines"] = str(open(log.name, "rb").read().count(b"\n"))
        for k, v in row.items():
            print(f"  {k:32} {v}", flush=True)
        return row
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve")
    ap.add_argument("--port", type=int)
    ap.add_argument("--body", required=True)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--host", help="a generated host for the passthrough-exporter candidate")
    ap.add_argument("--log-dir", help="where each candidate's stderr is written (default: the temporary folder)")
    args = ap.parse_args()
    if args.serve:
        run_server(args.serve, args.port, args.body)
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    for name in args.candidates.split(","):
        measure(name, args.body, args.seconds, args.host, args.log_dir)


if __name__ == "__main__":
    main()
