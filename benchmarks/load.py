"""Load on the real `serve`: many keep-alive clients for a while on one path, on a generated host.
From the checkout's root:

    .venv/bin/python -m benchmarks.load [--devices 5000] [--clients 64] [--seconds 60]
                                        [--scenarios metrics,metrics-gzip,devices,devices-gzip]

For each scenario a fresh exporter process serves the host (benchmarks/generate.py, cached in
/dev/shm), refreshing every `--refresh-interval`. One client requests the scenario's path through
`--warmup` seconds, long enough for two refreshes: the process reaches the size it keeps across
refreshes (allocator arenas, two snapshots alive at once, the bodies of each rendered). Then
`--clients` clients in 4 client processes (so that the client's own interpreter lock does not set
the pace) send requests back to back for `--seconds`, refreshes still running. Printed: requests/s,
p50/p99 latency to the last byte, errors, the server's RSS at the end of the warm-up and at the end,
and its peak RSS (VmHWM) over the whole run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path

from benchmarks import generate
from tests.support.client import NotUp, connect, connection, exchange, free_port, wait_up
from tests.support.process import EXE

SCENARIOS = {
    "metrics": ("/metrics", False),
    "metrics-gzip": ("/metrics", True),
    "devices": ("/api/devices", False),
    "devices-gzip": ("/api/devices", True),
}
PROCESSES = 4


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def client_process(port: int, path: str, gz: bool, threads: int, seconds: float, out: multiprocessing.Queue) -> None:
    """`threads` keep-alive clients. Lean on purpose (one prepared request, the answer read by its
    Content-Length into one buffer): the clients share the 2 CPUs with the server they measure."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + ("Accept-Encoding: gzip\r\n" if gz else "")
               + "\r\n").encode()

    def one() -> None:
        s = connect(port, timeout=60)
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        mine: list[float] = []
        bad: list[str] = []
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                s.sendall(request)
                got = 0
                while True:  # the head
                    n = s.recv_into(view[got:])
                    if not n:
                        raise ConnectionError("closed")
                    got += n
                    end = buf.find(b"\r\n\r\n", 0, got)
                    if end >= 0:
                        break
                head = bytes(view[:end])
                length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                need = end + 4 + length
                if need > len(buf):
                    view.release()
                    buf.extend(bytes(need - len(buf)))
                    view = memoryview(buf)
                while got < need:
                    n = s.recv_into(view[got:need])
                    if not n:
                        raise ConnectionError("closed")
                    got += n
                mine.append(time.perf_counter() - t0)
                if not head.startswith(b"HTTP/1.1 200 ") or length == 0:
                    bad.append(head[:20].decode())
            except (OSError, ValueError, IndexError) as exc:
                bad.append(repr(exc))
                s.close()
                s = connect(port, timeout=60)
        s.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    pool = [threading.Thread(target=one) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put((latencies, errors))


def run(host: Path, scenario: str, clients: int, seconds: float, refresh: str, warmup: float) -> dict:
    path, gz = SCENARIOS[scenario]
    port = free_port()
    proc = subprocess.Popen([EXE, "--log.level", "warn", "serve", "--web.listen-address", f"127.0.0.1:{port}",
                             "--path.sysfs", str(host / "sys"), "--path.procfs", str(host / "proc"),
                             "--refresh-interval", refresh],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_up(port, proc=proc, timeout=120)
        except NotUp as exc:
            raise SystemExit(f"the exporter did not become ready: {exc}") from None
        conn = connection(port, timeout=60)
        end = time.monotonic() + warmup
        while True:
            size = len(exchange(conn, path, headers={"Accept-Encoding": "gzip"} if gz else {}).body)
            if time.monotonic() > end:
                break
            time.sleep(0.2)
        conn.close()
        rss_start = status_kib(proc.pid, "VmRSS")
        out: multiprocessing.Queue = multiprocessing.Queue()
        per = [clients // PROCESSES + (1 if i < clients % PROCESSES else 0) for i in range(PROCESSES)]
        workers = [multiprocessing.Process(target=client_process, args=(port, path, gz, n, seconds, out))
                   for n in per if n]
        t0 = time.monotonic()
        for w in workers:
            w.start()
        latencies: list[float] = []
        errors: list[str] = []
        for _ in workers:
            lat, err = out.get(timeout=seconds + 300)
            latencies += lat
            errors += err
        elapsed = time.monotonic() - t0
        for w in workers:
            w.join(30)
        rss_end = status_kib(proc.pid, "VmRSS")
        peak = status_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=30)
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"scenario": scenario, "bytes": size, "requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "errors": len(errors), "error_sample": errors[:3],
            "rss_start_kib": rss_start, "rss_end_kib": rss_end, "peak_kib": peak,
            "log_errors": sum("level=error" in ln for ln in log.splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--refresh-interval", default="20s", help="the exporter's (default: %(default)s)")
    ap.add_argument("--warmup", type=float, default=45, help="seconds of one client before the load (default: 45)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per scenario")
    args = ap.parse_args()
    sysfs, _ = generate.cached(args.devices)
    host = Path(sysfs).parent
    print(f"{args.devices} devices, {args.clients} clients, {args.seconds:g} s per scenario after {args.warmup:g} s "
          f"of warm-up, refresh every {args.refresh_interval}, {os.cpu_count()} CPUs", flush=True)
    print("| scenario | body bytes | requests | req/s | p50 ms | p99 ms | errors | RSS start MiB | RSS end MiB | growth | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for scenario in args.scenarios.split(","):
        r = run(host, scenario, args.clients, args.seconds, args.refresh_interval, args.warmup)
        if args.json:
            print(json.dumps(r), flush=True)
        growth = (r["rss_end_kib"] - r["rss_start_kib"]) / r["rss_start_kib"] * 100
        print(f"| {scenario} | {r['bytes']:,} | {r['requests']:,} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['errors']} | {r['rss_start_kib'] / 1024:.0f} | {r['rss_end_kib'] / 1024:.0f} | "
              f"{growth:+.1f} % | {r['peak_kib'] / 1024:.0f} |", flush=True)


if __name__ == "__main__":
    main()
