"""The performance benchmark: the product against a C floor and a Python floor, measured side by side.
From the checkout's root:

    .venv/bin/python -m benchmarks.run [--sizes 1000,5000,20000] [--repeat 5] [--requests 500]

What it measures on each synthetic host (benchmarks/generate.py), every figure a median of `--repeat`
runs taken in turn with the floors they are compared with (A B A B ...), so that a machine whose speed
drifts moves both alike; ratios are taken pair by pair:

- whole processes: the C floor program (floor.c, built here with `cc -O2`), the Python floor
  (floor.py) as a process, and `passthrough-exporter devices --json` (stdout to /dev/null), with and
  without PYTHONUNBUFFERED=1; all sizes in one loop, so growth 5k -> 20k is paired too;
- start-up: a bare interpreter, `--version` and `devices` on an empty tree, and `-X importtime`;
- in one process per size: one refresh of a host that changed (read, judge, render, gzip), and one of
  a host that reads as before (the read alone), as `serve`'s worker makes them, beside
  the C floor called in-process (floor.c built as a shared library) and the Python floor; the
  stages alone; the seed's algorithm;
- `serve` as a process: /metrics latency idle and while it refreshes back to back, and its peak RSS;
- the series and bytes one scrape carries, for a 200-device host and the largest size;
- the peer operators already run, when a node_exporter with its pcidevice collector is found: CPU
  per pass and memory beside it on 200, 1,000 and 20,000 devices (`benchmarks.peer`).

Writes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import generate
from benchmarks.common import (PCI_IDS, START_TIMEOUT, compile_product, machine, median, product_cmd,
                               product_env, ratios)
from tests.support.client import connection, exchange, free_port, request, wait_up

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # where `python -m benchmarks.run` runs from: the checkout's root
SELF = [sys.executable, "-m", "benchmarks.run"]  # this benchmark in a process of its own, run from ROOT
FLOOR_C = HERE / "floor.c"
SEED_FULL_LIMIT = 5000  # above this the seed's algorithm runs on a sample and is extrapolated
SEED_SAMPLE = 400
RELIST_SAMPLE = 10
SERIES_HOST = (200, 2)  # (devices, generator seed): a 200-device host with every block kind
SCRAPE_INTERVAL = 60  # seconds, for the fleet estimate
FLEET = 1000  # hosts
RSS_REFRESHES = 6  # serve's peak RSS is read once it has refreshed this many times
# Prometheus head memory per active series: Robust Perception, "How much RAM does Prometheus 2.x need
# for cardinality and ingestion?" (about 2 GiB per million series for cardinality alone, GC included).
PROM_BYTES_PER_SERIES = 2 * 1024**3 / 1_000_000

TARGETS = {
    "devices_20k": 2.0,  # devices --json / C floor, whole processes
    "devices_1k": 3.0,
    "refresh_20k": 1.6,  # full refresh / C floor, in-process
    "scrape_p99_ms": 5.0,  # plain /metrics during refreshes
    "rss_mb": 120.0,  # serve peak at 20k
    "growth": 4.5,  # t(20k)/t(5k) for 4x the devices, relative to the C floor's own growth
}


# --- helpers ---------------------------------------------------------------------------------










def build_floor(tmp: Path) -> tuple[Path, Path]:
    """The C floor as a program and as a shared library."""
    cc = os.environ.get("CC", "cc")
    exe, lib = tmp / "floor", tmp / "floor.so"
    subprocess.run([cc, "-O2", "-o", str(exe), str(FLOOR_C)], check=True)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-DFLOOR_LIBRARY", "-o", str(lib), str(FLOOR_C)], check=True)
    return exe, lib


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """One whole process, stdout and stderr to /dev/null: wall and CPU seconds, peak RSS."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited with {proc.returncode}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def peak_rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")




def check_floor(floor_exe: Path, size: int, seed: int = 7) -> int:
    """The C floor reads, links and lists exactly what one traced read of the source does: else the
    comparison would be with another program. Returns the number of paths compared."""
    from passthrough_exporter.reading.sources.sysfs import SysfsSource
    from passthrough_exporter.reading.sysfs import Trace

    sysfs, procfs = map(str, generate.cached(size, seed))
    trace = Trace()
    SysfsSource(sysfs, procfs).read(trace)

    def norm(kind: str, path: str) -> tuple[str, str]:  # a link is itself, not where it leads
        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)) if kind == "link" \
            else os.path.realpath(path)
        return kind, real

    source = {norm("read", p) for p in trace.files} | {norm("link", p) for p in (*trace.links, *trace.resolved)}
    # `trace.dirs` holds what the read lists and the devices/ directory it only checks is there (one
    # stat, recorded so that a capture keeps it): not a listing the floor has to make.
    source |= {norm("list", p) for p in (*trace.listed, *(d for d in trace.dirs if os.path.basename(d) != "devices"
                                                          or os.path.dirname(d) != sysfs))}
    out = subprocess.run([str(floor_exe), "-t", sysfs, procfs], check=True, capture_output=True, text=True).stdout
    floor = {norm(*line.split(" ", 1)) for line in out.splitlines()}
    floor.discard(norm("list", procfs))  # the holder scan, which a traced read skips
    if floor != source:
        raise SystemExit(f"the C floor and the source read different paths at {size}: only the floor "
                         f"{sorted(floor - source)[:5]}, only the source {sorted(source - floor)[:5]}")
    return len(floor)


# --- whole processes, interleaved across sizes -----------------------------------------------


def process_loop(sizes: list[int], repeat: int, floor_exe: Path, empty: Path) -> dict:
    exe, env, env_unbuf = product_cmd(), product_env(), product_env(unbuffered=True)
    pci = [PCI_IDS] if PCI_IDS else []
    plan: list[tuple[str, list[str], dict[str, str] | None]] = []
    for size in sizes:
        sysfs, procfs = map(str, generate.cached(size))
        paths = ["--path.sysfs", sysfs, "--path.procfs", procfs]
        plan += [
            (f"{size}/c_floor", [str(floor_exe), sysfs, procfs, *pci], None),
            (f"{size}/py_floor", [sys.executable, str(HERE / "floor.py"), sysfs, procfs, *pci], env),
            (f"{size}/devices", [*exe, "devices", "--json", *paths], env),
            (f"{size}/devices_unbuffered", [*exe, "devices", "--json", *paths], env_unbuf),
        ]
    plan += [
        ("start/bare", [sys.executable, "-c", "pass"], env),
        ("start/version", [*exe, "--version"], env),
        ("start/devices_empty", [*exe, "devices", "--path.sysfs", str(empty / "sys"), "--path.procfs",
                                 str(empty / "proc")], env),
    ]
    out: dict[str, list[dict]] = {key: [] for key, _, _ in plan}
    for rep in range(repeat + 1):  # the first round warms caches and is not counted
        for key, cmd, e in plan:
            r = run_process(cmd, e)
            if rep:
                out[key].append(r)
        print(f"processes: round {rep}/{repeat} done", file=sys.stderr)
    return out


def import_times(empty: Path) -> dict:
    """`-X importtime` of `devices` on an empty tree: the total and the costliest top-level imports."""
    code = ("import sys; from passthrough_exporter.commands.cli import main; "
            f"sys.exit(main(['devices', '--path.sysfs', {str(empty / 'sys')!r}, '--path.procfs', {str(empty / 'proc')!r}]))")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env=product_env(), check=True)
    top: list[tuple[int, str]] = []
    total = 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (p.strip() for p in line.removeprefix("import time:").split("|"))
        if not cumulative.isdigit():
            continue
        if not name.startswith(" "):  # top level: imported by the command itself
            top.append((int(cumulative), name.strip()))
            total += int(cumulative)
    top.sort(reverse=True)
    return {"total_ms": total / 1000, "top": [(n, us / 1000) for us, n in top[:8]]}


# --- in-process: a refresh beside the floors ---------------------------------------------------


def worker(size: int, repeat: int, floor_lib: str) -> dict:
    from benchmarks.floor import floor_read

    from passthrough_exporter.rendering import hostpage
    from passthrough_exporter.rendering.objects import device_object
    from passthrough_exporter.reading import pciids
    from passthrough_exporter.commands.gcpause import gc_paused
    from passthrough_exporter.judging.inspector import Inspector
    from passthrough_exporter.rendering.metrics import MetricOptions, render
    from passthrough_exporter.judging.query import DeviceIndex
    from passthrough_exporter.commands.refresh_worker import Builder
    from passthrough_exporter.serving.refresher import Refresher
    from passthrough_exporter.rendering.rendered import Rendered
    from passthrough_exporter.reading.sources.sysfs import SysfsSource

    lib = ctypes.CDLL(floor_lib)
    lib.floor_read.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_long)]
    lib.floor_read.restype = ctypes.c_long
    sysfs, procfs = map(str, generate.cached(size))
    counts = (ctypes.c_long * 2)()

    def c_floor() -> None:
        lib.floor_read(sysfs.encode(), procfs.encode(), None, counts)

    # As `serve` runs it: pci.ids loaded once at start, names filled on every refresh.
    source = SysfsSource(sysfs, procfs, pciids.load() if PCI_IDS else None)
    builder = Builder(source, Inspector(), MetricOptions())

    def full_refresh() -> None:  # a host that changed since the last refresh: read, judge, render
        builder._last = None
        builder.build()

    # And as `serve` runs it: in its worker process, the record handed over through a socket; on
    # this steady host every refresh after the first reads what the last one read.
    argv = ["serve", "--path.sysfs", sysfs, "--path.procfs", procfs, *(["--path.pci-ids", PCI_IDS] if PCI_IDS else [])]
    in_worker = Refresher(argv, interval=3600)
    in_worker.start_worker()
    runs: dict[str, list[float]] = {"c_floor": [], "py_floor": [], "refresh": [], "unchanged_refresh": [],
                                    "worker_refresh": []}
    steps = {"c_floor": c_floor, "py_floor": lambda: floor_read(sysfs, procfs), "refresh": full_refresh,
             "unchanged_refresh": lambda: builder.build(held=builder.token), "worker_refresh": in_worker.refresh}
    for rep in range(repeat + 1):  # warm-up round first: dentry cache, first snapshot
        for key, fn in steps.items():
            t = time.perf_counter()
            fn()
            if rep:
                runs[key].append(time.perf_counter() - t)
    out: dict = {"size": size, "runs": runs, "c_floor_files": counts[0]}
    published = in_worker.current()
    in_worker.stop()
    out["devices"] = len(published.rendered.index)
    text = b"".join(published.metrics(b"", gzip=False))
    out["metrics_bytes"], out["metrics_gzip_bytes"] = len(text), len(published.rendered.metrics_gzip)
    out["series"] = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))

    # Where the time goes, stage by stage (the same work as one refresh, under the same GC pause).
    with gc_paused():
        inspector = builder.inspector
        inv = source.read()
        snap = inspector.judge(inv)
        text = render(snap)
        stages = {"read": source.read, "judge": lambda: inspector.judge(inv), "render": lambda: render(snap),
                  "bodies": lambda: (DeviceIndex.of(snap), [device_object(snap, n) for n in snap.inventory.devices],
                                     hostpage.render(snap)),
                  "gzip": lambda: gzip.compress(text, compresslevel=6, mtime=0)}
        assert text.startswith(bytes(Rendered.of(snap, MetricOptions()).metrics))
        for key, fn in stages.items():
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            out[f"stage_{key}"] = median(times)
    return out


def seed_worker(size: int, repeat: int) -> dict:
    from benchmarks import seed
    from passthrough_exporter.judging.inspector import Inspector
    from passthrough_exporter.reading.sources.sysfs import SysfsSource

    sysfs, procfs = map(str, generate.cached(size))
    source = SysfsSource(sysfs, procfs)
    inv = source.read()
    infos = seed.dev_infos(inv)
    out: dict = {"size": size}
    inspector = Inspector()

    def median_time(fn, runs: int) -> float:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return median(times)

    out["judge"] = median_time(lambda: inspector.judge(inv), repeat)
    if len(infos) <= SEED_FULL_LIMIT + 1:
        runs = repeat if size <= 1000 else 1
        out["seed"] = median_time(lambda: seed.affected_all(infos), runs)
        out["seed_method"] = f"all {len(infos)} devices, {runs} run(s)"
    else:
        sample = random.Random(1).sample(infos, SEED_SAMPLE)
        out["seed"] = median_time(lambda: seed.affected_all(infos, sample), 1) * len(infos) / SEED_SAMPLE
        out["seed_method"] = f"extrapolated from {SEED_SAMPLE} random devices of {len(infos)}"
    # As the seed ran it: every question re-lists the devices. Minutes per host: always sampled.
    names = [i["name"] for i in random.Random(2).sample(infos, RELIST_SAMPLE)]
    t = median_time(lambda: seed.affected_all_relisting(source.read, names), 1)
    out["seed_relist"] = t * len(infos) / RELIST_SAMPLE
    out["seed_relist_method"] = f"extrapolated from {RELIST_SAMPLE} random devices of {len(infos)}"
    return out


def series_worker(size: int, seed: int) -> dict:
    """Series and bytes of one scrape, with every metric and as narrowed for large SR-IOV hosts."""
    from passthrough_exporter.judging.inspector import Inspector
    from passthrough_exporter.rendering.metrics import MetricOptions, render
    from passthrough_exporter.reading.sources.sysfs import SysfsSource

    sysfs, procfs = map(str, generate.cached(size, seed))
    snap = Inspector().judge(SysfsSource(sysfs, procfs).read())
    out: dict = {"size": size, "seed": seed}
    for key, opts in {"all": MetricOptions(), "skip_vfs": MetricOptions(include_vfs=False),
                      "skip_vfs_no_health": MetricOptions(include_vfs=False, include_health=False)}.items():
        text = render(snap, opts)
        out[key] = {"series": sum(1 for line in text.splitlines() if line and not line.startswith(b"#")),
                    "bytes": len(text), "gzip_bytes": len(gzip.compress(text, compresslevel=6, mtime=0))}
    return out


# --- serve as a process ----------------------------------------------------------------------


def serve_run(size: int, busy: bool, requests: int, tmp: Path) -> dict:
    """`serve` on the host: scrapes of /metrics (gzip and plain) by a client process, then its peak RSS.
    busy: refreshing while the scrapes run (the 1 s floor of the interval: back to back wherever a refresh
    takes a second or more); else idle after one."""
    sysfs, procfs = map(str, generate.cached(size))
    port = free_port()
    log = tmp / f"serve-{size}-{'busy' if busy else 'idle'}.log"
    # At debug: a steady refresh is logged at debug only, and the refreshes are counted from the log.
    cmd = [*product_cmd(), "--log.level", "debug", "serve", "--web.listen-address", f"127.0.0.1:{port}", "--path.sysfs", sysfs,
           "--path.procfs", procfs, "--refresh-interval", "1s" if busy else "1h"]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=product_env())
    try:
        wait_up(port, proc=proc, timeout=START_TIMEOUT, log=log.read_text)
        out = {mode: _client(port, mode, requests) for mode in ("gzip", "plain")}
        if not busy:
            out["floor"] = socket_floor(port, requests, tmp)
        scrape_refreshes = log.read_text().count('msg="refreshed ')
        if busy:  # the peak grows over the first refreshes (the allocator's heap): read it after several
            deadline = time.monotonic() + 120
            while log.read_text().count('msg="refreshed ') < RSS_REFRESHES and time.monotonic() < deadline:
                time.sleep(0.5)
        out["peak_rss_mb"] = peak_rss_mb(proc.pid)
        # The refresh worker, serve's child: its own peak, and the two together (each one's high-water
        # mark, reached at different moments: the sum is an upper bound of what both held at once).
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        out["worker_peak_rss_mb"] = sum(peak_rss_mb(pid) for pid in children)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out["refreshes"] = log.read_text().count("msg=\"refreshed ")
    out["scrape_refreshes"] = scrape_refreshes
    return out


def socket_floor(port: int, requests: int, tmp: Path) -> dict:
    """The same /metrics bodies sent by the least a server can do: one sendall of a prepared response
    per request (`raw_server`), scraped by the same client: what moving these bytes costs here."""
    bodies = {}
    for mode, headers in (("plain", {}), ("gzip", {"Accept-Encoding": "gzip"})):
        bodies[mode] = tmp / f"metrics-{mode}"
        bodies[mode].write_bytes(request(port, "/metrics", headers=headers, timeout=60).body)
    floor_port = free_port()
    proc = subprocess.Popen([*SELF, "--raw-server", str(floor_port), str(bodies["plain"]), str(bodies["gzip"])],
                            stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_up(floor_port, "/metrics", proc=proc, timeout=30)
        return {mode: _client(floor_port, mode, requests) for mode in ("gzip", "plain")}
    finally:
        proc.kill()
        proc.wait()


def raw_server(port: int, plain: Path, gz: Path) -> None:
    """HTTP/1.1 keep-alive on 127.0.0.1: each request answered with one sendall of a prepared response."""
    answers = {}
    for key, path, extra in ((False, plain, b""), (True, gz, b"Content-Encoding: gzip\r\n")):
        body = path.read_bytes()
        answers[key] = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n" + extra
                        + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(8)
        while True:
            conn, _ = srv.accept()
            with conn:
                pending = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    pending += chunk
                    while b"\r\n\r\n" in pending:
                        head, pending = pending.split(b"\r\n\r\n", 1)
                        conn.sendall(answers[b"accept-encoding: gzip" in head.lower()])


def _client(port: int, mode: str, requests: int) -> dict:
    cmd = [*SELF, "--client", str(port), "--mode", mode, "--requests", str(requests)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)


def client(port: int, mode: str, requests: int) -> dict:
    """Scrapes /metrics over one keep-alive connection, as Prometheus does; latency to the last byte."""
    headers = {"Accept-Encoding": "gzip"} if mode == "gzip" else {}
    conn = connection(port, timeout=None)
    lat = []
    for _ in range(requests):
        t = time.perf_counter()
        answer = exchange(conn, "/metrics", headers=headers)
        lat.append(time.perf_counter() - t)
        assert answer.status == 200 and answer.body
    conn.close()
    lat.sort()
    return {"p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max": lat[-1],
            "n": requests}


def _sub(args: list[str]) -> dict:
    proc = subprocess.run([*SELF, *args], check=True, capture_output=True, text=True, env=product_env(), cwd=ROOT)
    return json.loads(proc.stdout)


# --- report ----------------------------------------------------------------------------------




def ms(s: float) -> str:
    return f"{s * 1000:.1f}" if s < 10 else f"{s * 1000:.0f}"


def report(data: dict, args: argparse.Namespace) -> str:
    proc, workers, serves, seeds = data["processes"], data["workers"], data["serve"], data["seeds"]
    sizes = sorted(workers)
    w = lambda key: median([r["wall"] for r in proc[key]])  # noqa: E731
    lines = [
        "# Benchmark results", "",
        f"Machine: {machine()}.  ",
        *([f"Code: commit {data['commit']}.  "] if data.get("commit") else []),
        f"Run: `python -m benchmarks.run --sizes {args.sizes} --repeat {args.repeat} --requests {args.requests}`, "
        f"{data.get('when') or time.strftime('%Y-%m-%d %H:%M')}{load_note(data)}. Every figure is a median of {args.repeat} runs taken in turn with "
        "the floors it is compared with (A B A B ...), all in this one run; a ratio is the median of the "
        "pairwise ratios. Scrapes: p50/p99 of "
        f"{args.requests} requests per cell.", "",
        "## One-shot: `devices --json` as a whole process", "",
        "| devices | C floor ms | Python floor ms | `devices --json` ms | / C floor | / Python floor | CPU / C floor "
        "| with PYTHONUNBUFFERED=1 / C floor | peak RSS MB |",
        "|" + "---|" * 9,
    ]
    for size in sizes:
        c, p, d, u = (proc[f"{size}/{k}"] for k in ("c_floor", "py_floor", "devices", "devices_unbuffered"))
        lines.append(f"| {size} | {ms(w(f'{size}/c_floor'))} | {ms(w(f'{size}/py_floor'))} | {ms(w(f'{size}/devices'))} "
                     f"| {ratios(d, c):.2f} | {ratios(d, p):.2f} | {ratios(d, c, 'cpu'):.2f} | {ratios(u, c):.2f} "
                     f"| {median([r['rss_mb'] for r in d]):.0f} |")
    bare, version, empty = (proc[f"start/{k}"] for k in ("bare", "version", "devices_empty"))
    imports = data["imports"]
    lines += [
        "", "## Start-up", "",
        "| bare interpreter ms | `--version` ms | / bare | `devices` on an empty tree ms | / bare | imports (`-X importtime`) ms |",
        "|---|---|---|---|---|---|",
        f"| {ms(w('start/bare'))} | {ms(w('start/version'))} | {ratios(version, bare):.1f} | {ms(w('start/devices_empty'))} "
        f"| {ratios(empty, bare):.1f} | {imports['total_ms']:.0f} |",
        "", "Costliest top-level imports of `devices` (cumulative ms): "
        + ", ".join(f"`{n}` {t:.0f}" for n, t in imports["top"]) + ".",
        "", "## Serve: one refresh (\"refresh\": a host that changed; \"unchanged host\": one that reads as before)", "",
        "| devices | C floor ms | Python floor ms | refresh ms | / C floor | / Python floor | read | judge | metrics "
        "| bodies | gzip | unchanged host ms | / C floor | in the worker ms (unchanged) | / C floor | series "
        "| metrics KiB (gzip) |",
        "|" + "---|" * 17,
    ]
    for size in sizes:
        r = workers[size]
        c, p, f, u, wf = (r["runs"][k] for k in ("c_floor", "py_floor", "refresh", "unchanged_refresh",
                                                  "worker_refresh"))
        lines.append(f"| {size} | {ms(median(c))} | {ms(median(p))} | {ms(median(f))} | {ratios(f, c):.2f} "
                     f"| {ratios(f, p):.2f} | {ms(r['stage_read'])} | {ms(r['stage_judge'])} | {ms(r['stage_render'])} "
                     f"| {ms(r['stage_bodies'])} | {ms(r['stage_gzip'])} | {ms(median(u))} | {ratios(u, c):.2f} "
                     f"| {ms(median(wf))} | {ratios(wf, c):.2f} "
                     f"| {r['series']} | {r['metrics_bytes'] // 1024} ({r['metrics_gzip_bytes'] // 1024}) |")
    lines += [
        "", "## Serve as a process: scrapes and memory", "",
        "| devices | /metrics plain p50 / p99 ms: socket floor | idle | during refreshes | gzip: socket floor "
        "| idle | during refreshes | refreshes during the scrapes | peak RSS MB: server | refresh worker |",
        "|" + "---|" * 10,
    ]
    for size in sizes:
        idle, busy = serves[size]["idle"], serves[size]["busy"]
        sc = lambda x: f"{ms(x['p50'])} / {ms(x['p99'])}"  # noqa: E731
        floor = idle["floor"]
        lines.append(f"| {size} | {sc(floor['plain'])} | {sc(idle['plain'])} | {sc(busy['plain'])} | {sc(floor['gzip'])} "
                     f"| {sc(idle['gzip'])} | {sc(busy['gzip'])} | {busy.get('scrape_refreshes', busy['refreshes'])} "
                     f"| {busy['peak_rss_mb']:.0f} | {busy['worker_peak_rss_mb']:.0f} |")
    if seeds:
        lines += [
            "", "## Against the seed's algorithm", "",
            "| devices | judge ms | (d) seed algorithm ms | d / judge | (d') seed re-listing s | d' / refresh |",
            "|---|---|---|---|---|---|",
        ]
        for size in sizes:
            s = seeds.get(size)
            if not s:
                continue
            star = lambda key: "*" if "extrapolated" in s[key + "_method"] else ""  # noqa: E731
            lines.append(f"| {size} | {ms(s['judge'])} | {ms(s['seed'])}{star('seed')} | {s['seed'] / s['judge']:.0f}x "
                         f"| {s['seed_relist']:.0f}{star('seed_relist')} "
                         f"| {s['seed_relist'] / median(workers[size]['runs']['refresh']):.0f}x |")
    lines += ["", "## Targets", "", *targets(data), "", *series_section(data["series"]), "", "## Notes", "",
              *notes(data), ""]
    return "\n".join(lines)


def load_note(data: dict) -> str:
    load = data.get("load")
    return f", load average {load[0]:.1f} at the start and {load[1]:.1f} at the end" if load else ""


def targets(data: dict) -> list[str]:
    proc, workers, serves = data["processes"], data["workers"], data["serve"]
    out = []

    def check(ok: bool, text: str) -> None:
        out.append(f"- {'met' if ok else 'NOT met'}: {text}")

    for size, key, label in ((20000, "devices_20k", "20k"), (1000, "devices_1k", "1k")):
        if f"{size}/devices" in proc:
            q = ratios(proc[f"{size}/devices"], proc[f"{size}/c_floor"])
            qp = ratios(proc[f"{size}/devices"], proc[f"{size}/py_floor"])
            check(q <= TARGETS[key], f"`devices --json` at {label} = {q:.2f}x the C floor, whole processes "
                                     f"(target <= {TARGETS[key]}x); {qp:.2f}x the Python floor")
    if 20000 in workers:
        runs = workers[20000]["runs"]
        q = ratios(runs["refresh"], runs["c_floor"])
        check(q <= TARGETS["refresh_20k"], f"full serve refresh at 20k = {q:.2f}x the C floor in the same process "
                                           f"(target <= {TARGETS['refresh_20k']}x); "
                                           f"{ratios(runs['refresh'], runs['py_floor']):.2f}x the Python floor; "
                                           f"a host that reads as before, in serve's worker process: {ratios(runs['worker_refresh'], runs['c_floor']):.2f}x")
    if 20000 in serves:
        busy = serves[20000]["busy"]
        p99 = busy["plain"]["p99"] * 1000
        idle_p99 = serves[20000]["idle"]["plain"]["p99"] * 1000
        floor_p99 = serves[20000]["idle"]["floor"]["plain"]["p99"] * 1000
        check(p99 < TARGETS["scrape_p99_ms"], f"plain /metrics p99 at 20k during refreshes = {p99:.1f} ms "
                                              f"(target < {TARGETS['scrape_p99_ms']:.0f} ms); idle {idle_p99:.1f} ms; "
                                              f"the socket floor for the same body {floor_p99:.1f} ms")
        gz = busy["gzip"]["p99"] * 1000
        check(gz < TARGETS["scrape_p99_ms"], f"gzip /metrics p99 at 20k during refreshes (what Prometheus asks for) "
                                             f"= {gz:.1f} ms (target < {TARGETS['scrape_p99_ms']:.0f} ms)")
        rss, wrss = busy["peak_rss_mb"], busy["worker_peak_rss_mb"]
        check(rss < TARGETS["rss_mb"], f"serve peak RSS at 20k = {rss:.0f} MB, the serving process "
                                       f"(target < {TARGETS['rss_mb']:.0f} MB)")
        check(rss + wrss < TARGETS["rss_mb"], f"serve and its refresh worker at 20k = {rss:.0f} + {wrss:.0f} MB, "
                                              f"each one's peak = {rss + wrss:.0f} MB (target < {TARGETS['rss_mb']:.0f} MB)")
    if 20000 in workers and 5000 in workers:
        # Linear: the product grows no more than the C floor reading the same files does (on a host
        # this large the kernel's own cost per file grows too); 4.5/4 allows the noise of these cores.
        q = median(workers[20000]["runs"]["refresh"]) / median(workers[5000]["runs"]["refresh"])
        qf = median(workers[20000]["runs"]["c_floor"]) / median(workers[5000]["runs"]["c_floor"])
        check(q / qf <= TARGETS["growth"] / 4, f"refresh growth 5k -> 20k = {q:.2f}x, the C floor's {qf:.2f}x: "
                                              f"{q / qf:.2f} (target <= {TARGETS['growth'] / 4:.3f})")
        if "20000/devices" in proc and "5000/devices" in proc:
            q = ratios(proc["20000/devices"], proc["5000/devices"])
            qf = ratios(proc["20000/c_floor"], proc["5000/c_floor"])
            check(q / qf <= TARGETS["growth"] / 4, f"`devices --json` growth 5k -> 20k = {q:.2f}x, the C floor's "
                                                  f"{qf:.2f}x: {q / qf:.2f} (target <= {TARGETS['growth'] / 4:.3f})")
    return out


def series_section(series: list[dict]) -> list[str]:
    out = ["## What a scrape carries, and what a fleet costs Prometheus", "",
           "| host | metrics | series per scrape | bytes (gzip) | samples/s at a 60 s interval | "
           f"{FLEET} such hosts: series | samples/s | Prometheus head memory |",
           "|" + "---|" * 8]
    labels = {"all": "every metric (default)", "skip_vfs": "`--metrics.skip-vfs`",
              "skip_vfs_no_health": "`--metrics.skip-vfs --no-metrics.health`"}
    for s in series:
        for key, label in labels.items():
            x = s[key]
            fleet = x["series"] * FLEET
            out.append(f"| {s['size']} devices | {label} | {x['series']:,} | {x['bytes'] / 1024:,.0f} KiB "
                       f"({x['gzip_bytes'] / 1024:,.0f} KiB) | {x['series'] / SCRAPE_INTERVAL:,.0f} | {fleet:,} "
                       f"| {fleet / SCRAPE_INTERVAL:,.0f} | {fleet * PROM_BYTES_PER_SERIES / 1024**3:,.1f} GiB |")
    out += ["", f"Head memory at {PROM_BYTES_PER_SERIES / 1024:.1f} KiB per active series: Robust Perception, \"How much "
            "RAM does Prometheus 2.x need for cardinality and ingestion?\" (about 2 GiB per million series, Go's "
            "garbage collector included; ingestion adds to it at shorter intervals). The 200-device host is "
            f"`benchmarks.generate {SERIES_HOST[0]} --seed {SERIES_HOST[1]}` (a SAS HBA, a NIC with 78 VFs, a PCIe switch with "
            "NVMe drives, a chipset group with USB and SATA)."]
    return out


def notes(data: dict) -> list[str]:
    workers = data["workers"]
    out = [
        "- Hosts come from `tests/support/synthetic.py` (SR-IOV PFs with 64-256 VFs each in their own group, PCIe "
        "switches with ACS, chipset groups of 14 functions, USB trees, SCSI hosts/targets/LUNs; every PCI function "
        "with enable, power state and link attributes, AER counters on all but the VFs), built in "
        f"`{generate.CACHE}` (a tmpfs when available: sysfs is memory-backed too).",
        "- C floor (`floor.c`, `cc -O2`): lists each bus, reads each bus link, opens each device directory once "
        "through it and reads every attribute and link the sysfs source reads relative to that directory "
        "(openat, one read each, readlinkat, getdents64), plus the host facts (module parameters, cmdline, "
        "interrupts, firmware tables, IOMMU groups and units, mountinfo, the process list) and, as a process, "
        "pci.ids, which the command line loads. It parses nothing. Python floor (`floor.py`): the same reads "
        "with os.open/os.read/os.readlink/os.listdir. Under strace both floors open and read exactly the paths "
        "the product does.",
        "- Whole processes run with bytecode compiled (as an installed package has it) and without "
        "PYTHONUNBUFFERED unless the column says so; stdout and stderr go to /dev/null. Peak RSS: the "
        "process's own maximum resident set (getrusage).",
        "- Refresh: the refresh worker's `Builder.build()` in the process (pci.ids loaded once at start): "
        "\"refresh\" as for a host that changed (read, judge, render the exposition, the device objects and "
        "the host page, gzip); \"unchanged host\" as for one that reads as before (the read and a comparison); "
        "the C floor is the same program built as a shared library and called in the same process (without "
        "pci.ids: `serve` reads it once at start). \"In the worker\": `Refresher.refresh()`, as `serve` runs "
        "it on this steady host: the child reads, finds the host unchanged and says so, timed from the server's "
        "side.",
        "- Serve as a process: `passthrough-exporter serve` with `--refresh-interval 1h` (idle after its first "
        "refresh) and `1s`, the floor (refreshing while scraped: back to back where a refresh takes a second or "
        "more); a client in another process scrapes /metrics over one "
        "keep-alive connection, latency to the last byte. Socket floor: the same two bodies answered by a "
        "server that does one sendall of a prepared response per request (`raw_server`), scraped by the "
        "same client. Peak RSS: VmHWM of the busy server process and of its refresh worker once it "
        f"has refreshed at least {RSS_REFRESHES} times (they grow over the first few: the allocator's heap); "
        "the server holds two refreshes' bodies while it switches. Mapped device objects: the worker's memory "
        "files the server maps at the end of the run (every device's JSON object, kept for the API; memory "
        "of their own, in RSS only for the pages a client made the server read).",
        "- Seed: the seed's algorithm (`benchmarks/seed.py`: per device, scan every device and walk parents to "
        "its IOMMU group) on device dicts built beforehand (d), and re-listing every device per question as "
        "the seed ran it (d'); * = extrapolated from a sample of devices.",
        "- The machine is shared with other jobs: single runs vary by tens of percent; pairing and medians "
        "keep the ratios steadier than the absolute times, which are only comparable within one run.",
        "- `RESULTS-in-process.md`: this benchmark on commit ab2548c, with the refresh still in the serving "
        "process (on another machine of the same kind: compare ratios, not times). "
        "`RESULTS-before.md`: on commit ef995a7, before the work it measured (JSON "
        "writer, start-up, pci.ids, reader, batch rules, device objects, collector paused). "
        "`RESULTS-baseline.md`: an earlier benchmark, with a bare read loop as its floor, on the code "
        "before the first performance work (commit 36f1c48).",
    ]
    for size in sorted(workers):
        out.append(f"- {size}: the C floor read {workers[size]['c_floor_files']} files per pass.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="passthrough-exporter performance benchmark")
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--no-seed", action="store_true", help="skip the seed's algorithm")
    ap.add_argument("--peer-sizes", default="200,1000,20000",
                    help="hosts measured beside node_exporter's pcidevice collector (benchmarks.peer) when one "
                    "is found; '' skips it")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--json-out", type=Path, help="also write every measurement as JSON")
    ap.add_argument("--report-from", type=Path, help="write the report of an earlier --json-out, measuring nothing")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--floor-lib", help=argparse.SUPPRESS)
    ap.add_argument("--seed-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--series-worker", help=argparse.SUPPRESS)
    ap.add_argument("--client", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="gzip", help=argparse.SUPPRESS)
    ap.add_argument("--raw-server", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_server:
        port, plain, gz = args.raw_server
        raw_server(int(port), Path(plain), Path(gz))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeat, args.floor_lib)))
        return
    if args.seed_worker:
        print(json.dumps(seed_worker(args.seed_worker, args.repeat)))
        return
    if args.series_worker:
        size, seed = map(int, args.series_worker.split(":"))
        print(json.dumps(series_worker(size, seed)))
        return
    if args.client:
        print(json.dumps(client(args.client, args.mode, args.requests)))
        return

    if args.report_from:
        data = json.loads(args.report_from.read_text())
        for key in ("workers", "serve", "seeds"):  # JSON keys are strings
            data[key] = {int(k): v for k, v in data[key].items()}
        text = report(data, args)
        args.out.write_text(text)
        print(text)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        t = time.perf_counter()
        generate.cached(size)
        print(f"{size}: host ready in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    generate.cached(*SERIES_HOST)
    compile_product()
    tmp = Path(tempfile.mkdtemp(prefix="passthrough-bench-"))
    try:
        floor_exe, floor_lib = build_floor(tmp)
        for size, seed in ((min(sizes), 7), SERIES_HOST):
            print(f"{size}: the C floor reads the {check_floor(floor_exe, size, seed)} paths the source reads",
                  file=sys.stderr)
        empty = tmp / "empty"
        (empty / "sys" / "devices").mkdir(parents=True)  # a sysfs without devices: start-up alone
        (empty / "proc").mkdir()
        load_start = os.getloadavg()[1]
        data: dict = {"processes": process_loop(sizes, args.repeat, floor_exe, empty), "imports": import_times(empty),
                      "workers": {}, "serve": {}, "seeds": {}, "series": []}
        for size in sizes:
            data["workers"][size] = _sub(["--worker", str(size), "--repeat", str(args.repeat),
                                          "--floor-lib", str(floor_lib)])
            print(f"{size}: {json.dumps(data['workers'][size])}", file=sys.stderr)
            data["serve"][size] = {"idle": serve_run(size, False, args.requests, tmp),
                                   "busy": serve_run(size, True, args.requests, tmp)}
            print(f"{size}: serve {json.dumps(data['serve'][size])}", file=sys.stderr)
            if not args.no_seed:
                data["seeds"][size] = _sub(["--seed-worker", str(size), "--repeat", str(args.repeat)])
        for size, seed in (SERIES_HOST, (max(sizes), 7)):
            data["series"].append(_sub(["--series-worker", f"{size}:{seed}"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peer_text = run_peer(args)
    data["load"] = (load_start, os.getloadavg()[1])
    data["when"] = time.strftime("%Y-%m-%d %H:%M")
    data["commit"] = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True,
                                    text=True).stdout.strip() or None
    if args.json_out:
        args.json_out.write_text(json.dumps(data, indent=1))
    text = report(data, args) + peer_text
    args.out.write_text(text)
    print(text)


def run_peer(args: argparse.Namespace) -> str:
    """benchmarks.peer's section, measured in this run, when a node_exporter with pcidevice is here."""
    if not args.peer_sizes:
        return ""
    from benchmarks import peer

    try:
        exe = peer.find_node_exporter(None)
    except (SystemExit, OSError, subprocess.CalledProcessError) as exc:
        print(f"no peer measured: {exc}", file=sys.stderr)
        return "\n## Beside node_exporter's pcidevice collector\n\nNot measured: no node_exporter with the pcidevice collector.\n"
    started = time.time()
    peer_args = argparse.Namespace(sizes=args.peer_sizes, repeat=min(args.repeat, 3), passes=8)
    data = peer.measure([int(s) for s in args.peer_sizes.split(",")], peer_args.repeat, peer_args.passes, exe)
    text = peer.report(data, peer_args, exe, started, None)
    return "\n" + text.replace("\n## ", "\n### ").replace("# Beside", "## Beside", 1)


if __name__ == "__main__":
    main()
