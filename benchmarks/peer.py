"""The product beside the peer operators already run: node_exporter's `pcidevice` collector.
From the checkout's root:

    .venv/bin/python -m benchmarks.peer [--sizes 200,1000,20000] [--repeat 3] [--passes 8]
                                        [--node-exporter PATH] [--out FILE]

On each synthetic host (benchmarks/generate.py, the seed benchmarks/run.py uses), `--repeat` rounds,
each one ours then the peer (A B A B ...), every figure a median over the rounds and every ratio the
median of the pairwise ratios:

- ours: `passthrough-exporter serve --refresh-interval 1s --log.level debug`; one pass is one refresh
  (counted by its "refreshed N devices" debug line) and one gzip scrape of /metrics, as Prometheus
  asks for it. After the first 2 refreshes, the CPU time of the server and of every process below it
  (the refresh worker), reaped children included, over `--passes` passes, divided by their number.
- the peer: `node_exporter --collector.disable-defaults --collector.pcidevice`, which reads sysfs on
  every scrape; one pass is one gzip scrape of /metrics. After 2 scrapes, its CPU time over
  `--passes` scrapes, divided by their number.
- memory: PSS summed over the processes of each (smaps_rollup), read once its passes are done; RSS
  summed for reference (it counts pages the server and its worker share twice).

Both name devices from the same pci.ids (ours `--path.pci-ids`, the peer `--collector.pcidevice.names
--collector.pcidevice.idsfile`), or neither where none is installed. A peer that exports no device,
or not one `node_pcidevice_info` per PCI function of the tree, stops the run: a broken fixture must
not produce a flattering ratio. Every process listens on 127.0.0.1 and is stopped, with its process
group, whatever happens.

The peer binary: `--node-exporter PATH`, else $NODE_EXPORTER, else what ../shared/bin/peer-node-exporter
(beside the checkout; it fetches Debian's build once) prints, else `prometheus-node-exporter` or
`node_exporter` on PATH. It must have the pcidevice collector (node_exporter 1.10 or newer).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import common as bench
from benchmarks import generate
from tests.support.client import connection, exchange, free_port, wait_up

HERE = Path(__file__).resolve().parent
generate = generate
PEER_HELPER = HERE.parents[1] / "shared" / "bin" / "peer-node-exporter"
WARMUP = 2  # refreshes (ours) or scrapes (the peer) not measured
TICK = os.sysconf("SC_CLK_TCK")
PROMETHEUS_HEADERS = {"Accept-Encoding": "gzip"}


# --- processes -------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (the state first), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def tree_pids(root: int) -> list[int]:
    """`root` and every live process below it."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat(int(name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of `root` and every process below it: each live one's own, and
    through cutime/cstime every child its parent has reaped, so every tick is counted once."""
    ticks = 0
    for pid in tree_pids(root):
        if (fields := _stat(pid)) is not None:
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / TICK


def tree_memory(root: int) -> dict:
    """PSS and RSS (MiB) summed over `root` and every process below it, from smaps_rollup."""
    pss = rss = 0
    pids = tree_pids(root)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key == "Pss":
                        pss += int(value.split()[0])
                    elif key == "Rss":
                        rss += int(value.split()[0])
        except OSError:
            pass
    return {"pss_mb": pss / 1024, "rss_mb": rss / 1024, "processes": len(pids)}


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                start_new_session=True)  # its own process group: stopped with it


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL to what is left of it after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone: anything left in its group goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break


def scrape(conn: http.client.HTTPConnection) -> bytes:
    """One /metrics as Prometheus asks for it (gzip), over a keep-alive connection; the body unzipped."""
    answer = exchange(conn, "/metrics", headers=PROMETHEUS_HEADERS)
    if answer.status != 200:
        raise RuntimeError(f"/metrics answered {answer.status}")
    return gzip.decompress(answer.body) if answer.getheader("Content-Encoding") == "gzip" else answer.body


def series(body: bytes, prefix: bytes = b"") -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#") and line.startswith(prefix))


# --- one measurement each --------------------------------------------------------------------


@dataclass
class Host:
    size: int
    sysfs: str
    procfs: str
    pci_functions: int


class RefreshLog:
    """The completed refreshes in ours' debug log, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")  # noqa: SIM115
        self.count = 0
        self.rest = b""

    def poll(self) -> int:
        chunk = self.f.read()
        if chunk:
            lines = (self.rest + chunk).split(b"\n")
            self.rest = lines.pop()
            self.count += sum(1 for line in lines if b'msg="refreshed ' in line)
        return self.count

    def wait(self, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.poll() < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve: {self.count} refreshes, waited for {n}")
            time.sleep(0.005)


def changing_counter(host: Host) -> Path:
    """A PCI function's AER counter file: rewritten before each pass of the changing-host run, as a
    device reporting errors changes it, so that every refresh reads a host unlike the last one."""
    for entry in sorted(os.listdir(os.path.join(host.sysfs, "bus", "pci", "devices"))):
        path = Path(host.sysfs, "bus", "pci", "devices", entry, "aer_dev_correctable")
        if path.exists():
            return path
    raise SystemExit("no aer_dev_correctable in the host: the changing-host run needs one")


def ours(host: Host, passes: int, tmp: Path, changing: bool = False) -> dict:
    port = free_port()
    log = tmp / f"ours-{host.size}.log"
    counter = changing_counter(host) if changing else None
    original = counter.read_bytes() if counter else b""
    cmd = [*bench.product_cmd(), "serve", "--path.sysfs", host.sysfs, "--path.procfs", host.procfs,
           "--web.listen-address", f"127.0.0.1:{port}", "--refresh-interval", "1s", "--log.level", "debug",
           "--path.pci-ids", bench.PCI_IDS or "none"]
    proc = start(cmd, log, bench.product_env())
    try:
        wait_up(port, proc=proc, timeout=bench.START_TIMEOUT, log=log.read_text)
        refreshes = RefreshLog(log)
        conn = connection(port, timeout=120)
        refreshes.wait(WARMUP, proc)
        scrape(conn)  # the connection and the first body served, outside the passes
        n0 = refreshes.poll()
        cpu0, t0 = tree_cpu(proc.pid), time.perf_counter()
        for i in range(1, passes + 1):
            if counter is not None:  # read by the next refresh, which starts at least 1s after the last
                counter.write_text(f"RxErr 0\nTOTAL_ERR_COR {i}\n")
            refreshes.wait(n0 + i, proc)
            body = scrape(conn)
        cpu, wall = tree_cpu(proc.pid) - cpu0, time.perf_counter() - t0
        memory = tree_memory(proc.pid)
        conn.close()
    finally:
        stop(proc)
        if counter is not None:
            counter.write_bytes(original)
    return {"cpu": cpu / passes, "wall": wall / passes, **memory, "series": series(body)}


def peer(host: Host, passes: int, exe: str, tmp: Path) -> dict:
    port = free_port()
    log = tmp / f"peer-{host.size}.log"
    names = ["--collector.pcidevice.names", f"--collector.pcidevice.idsfile={bench.PCI_IDS}"] if bench.PCI_IDS else []
    cmd = [exe, "--collector.disable-defaults", "--collector.pcidevice", *names, f"--path.sysfs={host.sysfs}",
           "--path.procfs=/proc", f"--web.listen-address=127.0.0.1:{port}"]
    proc = start(cmd, log)
    try:
        wait_up(port, "/", proc=proc, timeout=bench.START_TIMEOUT, log=log.read_text)
        conn = connection(port, timeout=120)
        for _ in range(WARMUP):
            body = scrape(conn)
        check_peer(body, host, log)
        cpu0, t0 = tree_cpu(proc.pid), time.perf_counter()
        for _ in range(passes):
            body = scrape(conn)
        cpu, wall = tree_cpu(proc.pid) - cpu0, time.perf_counter() - t0
        memory = tree_memory(proc.pid)
        conn.close()
    finally:
        stop(proc)
    check_peer(body, host, log)
    return {"cpu": cpu / passes, "wall": wall / passes, **memory, "series": series(body),
            "pcidevice_series": series(body, b"node_pcidevice_"), "pcidevice_info": series(body, b"node_pcidevice_info{")}


def check_peer(body: bytes, host: Host, log: Path) -> None:
    """The peer read every PCI function of the tree: else its figures measure a collector that gave up."""
    ok = b'node_scrape_collector_success{collector="pcidevice"} 1' in body
    info = series(body, b"node_pcidevice_info{")
    if not ok or info != host.pci_functions:
        raise SystemExit(f"node_exporter read {info} of the {host.pci_functions} PCI functions of the {host.size}-device "
                         f"host (collector success: {ok}): fix the fixture, the comparison would mean nothing. "
                         f"Its log: {log.read_text()[-1500:]}")


# --- the run ---------------------------------------------------------------------------------


def find_node_exporter(given: str | None) -> str:
    exe = given or os.environ.get("NODE_EXPORTER")
    if not exe and PEER_HELPER.exists():
        exe = subprocess.run([str(PEER_HELPER)], check=True, capture_output=True, text=True).stdout.strip()
    exe = exe or shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not exe:
        raise SystemExit("no node_exporter: give --node-exporter PATH")
    usage = subprocess.run([exe, "--help"], capture_output=True, text=True)
    if "collector.pcidevice" not in usage.stdout + usage.stderr:
        raise SystemExit(f"{exe} has no pcidevice collector (node_exporter 1.10 or newer has it)")
    return exe


def version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).splitlines()[0].strip()


def prepare(size: int) -> Host:
    sysfs, procfs = map(str, generate.cached(size))
    return Host(size, sysfs, procfs, len(os.listdir(os.path.join(sysfs, "bus", "pci", "devices"))))


def measure(sizes: list[int], repeat: int, passes: int, exe: str) -> dict[int, dict]:
    hosts = {}
    for size in sizes:
        t = time.perf_counter()
        hosts[size] = prepare(size)
        print(f"{size}: host ready in {time.perf_counter() - t:.1f}s ({hosts[size].pci_functions} PCI functions)",
              file=sys.stderr)
    bench.compile_product()
    out: dict[int, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="passthrough-peer-"))
    try:
        for size in sizes:
            runs: dict = {"host": hosts[size], "ours": [], "ours_changing": [], "peer": []}
            for rep in range(repeat):
                for key, fn in (("ours", lambda: ours(hosts[size], passes, tmp)),
                                ("peer", lambda: peer(hosts[size], passes, exe, tmp)),
                                ("ours_changing", lambda: ours(hosts[size], passes, tmp, changing=True))):
                    runs[key].append(fn())
                    print(f"{size} round {rep + 1}/{repeat} {key}: {runs[key][-1]}", file=sys.stderr)
            out[size] = runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def report(data: dict[int, dict], args: argparse.Namespace, exe: str, started: float, commit: str | None) -> str:
    med = bench.median

    def both(runs: dict, key: str, ours: str = "ours") -> tuple[float, float, float]:
        a, b = [r[key] for r in runs[ours]], [r[key] for r in runs["peer"]]
        return med(a), med(b), bench.ratios(a, b)

    cmd = f"python -m benchmarks.peer --sizes {args.sizes} --repeat {args.repeat} --passes {args.passes}"
    lines = [
        "# Beside node_exporter's pcidevice collector", "",
        f"Machine: {bench.machine()}.  ",
        *([f"Code: commit {commit}.  "] if commit else []),
        f"Peer: {version(exe)}, `--collector.disable-defaults --collector.pcidevice`"
        + (" `--collector.pcidevice.names --collector.pcidevice.idsfile` (the same pci.ids as ours)" if bench.PCI_IDS
           else " (no pci.ids here: neither names devices)") + ".  ",
        f"Run: `{cmd}`, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
        f"{(time.time() - started) / 60:.1f} minutes. Every figure is a median of {args.repeat} round(s), ours "
        "then the peer in each (A B A B ...); a ratio is the median of the pairwise ratios.", "",
        "| host | CPU per pass (ours / node_exporter) | the host changing every pass | memory PSS (ours / "
        "node_exporter) |",
        "|---|---|---|---|",
    ]
    for size, runs in data.items():
        c = both(runs, "cpu")
        cc = both(runs, "cpu", "ours_changing")
        m = both(runs, "pss_mb")
        lines.append(f"| {size} devices ({runs['host'].pci_functions} PCI functions) "
                     f"| {c[0] * 1000:.0f} ms / {c[1] * 1000:.0f} ms = {c[2]:.2f}x "
                     f"| {cc[0] * 1000:.0f} ms / {cc[1] * 1000:.0f} ms = {cc[2]:.2f}x "
                     f"| {m[0]:.1f} MiB / {m[1]:.1f} MiB = {m[2]:.2f}x |")
    lines += [
        "", "## Details", "",
        "| host | RSS summed (ours / node_exporter) | processes | series per scrape: ours / node_exporter "
        "(of which `node_pcidevice_*`; `_info`) | wall per pass (ours / node_exporter) |",
        "|---|---|---|---|---|",
    ]
    for size, runs in data.items():
        r = both(runs, "rss_mb")
        w = both(runs, "wall")
        o, p = runs["ours"][-1], runs["peer"][-1]
        lines.append(f"| {size} | {r[0]:.1f} MiB / {r[1]:.1f} MiB = {r[2]:.2f}x | {o['processes']} / {p['processes']} "
                     f"| {o['series']:,} / {p['series']:,} ({p['pcidevice_series']:,}; {p['pcidevice_info']:,}) "
                     f"| {w[0] * 1000:.0f} ms / {w[1] * 1000:.0f} ms |")
    lines += ["", "## Notes", "", *notes(args), ""]
    return "\n".join(lines)


def notes(args: argparse.Namespace) -> list[str]:
    return [
        f"- Hosts: `benchmarks.generate SIZE` (seed 7, as `benchmarks.run`), built in `{generate.CACHE}`. "
        "node_exporter reads the PCI functions alone (about 20 attributes each: ids, revision, link, power, "
        "SR-IOV, NUMA node); ours reads every device (PCI, USB, SCSI), the IOMMU groups, the drivers, the "
        "holders of the VFIO nodes and the host facts, and judges them: the two do not do the same work, the "
        "table says what each costs for what it exports.",
        f"- CPU: utime + stime from /proc/PID/stat of the process and every process below it, reaped children "
        f"through cutime/cstime, over {args.passes} passes after {WARMUP} warm-up refreshes (ours) or scrapes "
        f"(node_exporter); clock ticks of {1000 // TICK} ms. Ours: `serve --refresh-interval 1s --log.level debug` "
        "(a pass: one refresh in the refresh worker, counted by its debug line, then one scrape; on a host "
        "where a refresh takes more than a second they run back to back). node_exporter: scrapes back to "
        "back, each one a read of sysfs (its default `--runtime.gomaxprocs=1`).",
        "- A refresh that reads the host as the last one did judges and renders nothing (the rules are "
        "functions of the read: hookspecs.py); the server keeps the bodies it has. \"CPU per pass\" is that "
        "steady host, as most hosts are between changes. \"The host changing every pass\" rewrites one "
        "device's AER counter file (`aer_dev_correctable`) before each pass, so that every refresh judges and "
        "renders every device again: the cost of a host that never stays the same. Its ratio is against the "
        "same node_exporter runs.",
        "- Scrapes: GET /metrics with `Accept-Encoding: gzip` over one keep-alive connection on 127.0.0.1, "
        "the text format. Both serve their own process metrics beside the devices (node_exporter's go_* and "
        "process_*, as it runs by default).",
        "- Memory: PSS summed over the processes (smaps_rollup: pages shared between ours' server and its "
        "worker, or with other processes, counted once across them), read when the passes are done. RSS "
        "summed counts shared pages once per process.",
        "- The machine is shared with other jobs: single runs vary by tens of percent; the pairing keeps the "
        "ratios steadier than the absolute figures.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200,1000,20000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--passes", type=int, default=8, help="measured passes per run (default: 8)")
    ap.add_argument("--node-exporter", help="the node_exporter binary (default: see above)")
    ap.add_argument("--out", type=Path, help="also write the report here (it is printed either way)")
    args = ap.parse_args()
    exe = find_node_exporter(args.node_exporter)
    started = time.time()
    commit = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or None
    data = measure([int(s) for s in args.sizes.split(",")], args.repeat, args.passes, exe)
    text = report(data, args, exe, started, commit)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
