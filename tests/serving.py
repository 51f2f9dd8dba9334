"""The `serve` command as a process of its own on 127.0.0.1, for tests that need its limits to be real
(open files, threads, memory) rather than the test process's."""

from __future__ import annotations

import contextlib
import http.client
import resource
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers import EXE, free_port



def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def raise_own_file_limit(needed: int) -> None:
    """The client side of a many-connection test needs descriptors too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            import pytest
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 10,
        host: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """One GET on a connection of its own, over TLS when a `context` is given."""
    conn = (http.client.HTTPSConnection(host, port, timeout=timeout, context=context) if context
            else http.client.HTTPConnection(host, port, timeout=timeout))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Running:
    proc: subprocess.Popen
    port: int
    log_path: Path

    final_log: str | None = None  # the whole log, once the process has ended

    def log(self) -> str:
        if self.final_log is not None:
            return self.final_log
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def exporter(sys_path: Path, proc_path: Path, *args: str, nofile: int | None = None,
             log_level: str = "info", ready_timeout: float = 60) -> Iterator[Running]:
    """`passthrough-exporter serve` on a free port, healthy, optionally under an open-file limit (as
    systemd's LimitNOFILE sets it). Its log goes to a file: a pipe nobody reads would stall it."""
    port = free_port()
    cmd = [EXE, "--log.level", log_level, "serve", "--web.listen-address", f"127.0.0.1:{port}",
           "--path.sysfs", str(sys_path), "--path.procfs", str(proc_path), *args]
    if nofile is not None:
        cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *cmd]
    with tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    running = Running(proc, port, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                if get(port, "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the exporter did not become ready:\n{running.log()[-2000:]}")
            time.sleep(0.05)
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        running.final_log = log_path.read_text(errors="replace")
        log_path.unlink(missing_ok=True)


class _Running:
    def poll(self) -> None:
        return None


class LocalWorker:
    """The refresh worker's work (refresh_worker.Builder) in the test's own process, behind the same
    Refresher `serve` runs: for sources and plugins made in Python (a gate, a fault, a bad device)."""

    def __init__(self, source, inspector, options=None) -> None:
        from passthrough_exporter.rendering.metrics import ERROR_KINDS, MetricOptions
        from passthrough_exporter.commands.refresh_worker import Builder

        self.builder = Builder(source, inspector, options or MetricOptions())
        self.source = source.name
        self.error_kinds = ERROR_KINDS
        self.proc = _Running()

    def ready(self, timeout: float) -> None:
        pass

    def exchange(self, timeout: float, held: int) -> tuple:
        return self.builder.answer(held)

    def interrupt(self) -> None:
        pass

    def end(self, grace: float = 0) -> None:
        pass


def local_refresher(source, inspector, interval: float = 3600.0, options=None):
    """A Refresher whose worker is a LocalWorker of `source` and `inspector`, started."""
    from passthrough_exporter.serving.refresher import Refresher

    refresher = Refresher([], interval, worker=lambda argv: LocalWorker(source, inspector, options))
    refresher.start_worker()
    return refresher


def exposition(published) -> bytes:
    """The /metrics text of a published refresh, without the server's process metrics."""
    return b"".join(bytes(part) for part in published.metrics(b"", gzip=False))
