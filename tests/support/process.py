"""The exporter as a process of its own on 127.0.0.1, for tests whose limits must be real (open
files, threads, memory) rather than the test process's: the installed command, `serve` started and
stopped around a test, and what /proc says of a process."""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .client import free_port, wait_up


def _console_script() -> str:
    """The console script installed beside this interpreter (the project's venv), else on PATH.
    When neither exists the bare name is kept: the tests that run it then fail saying so."""
    beside = Path(sys.executable).parent / "passthrough-exporter"
    return str(beside) if beside.exists() else shutil.which("passthrough-exporter") or "passthrough-exporter"


EXE = _console_script()


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
        wait_up(port, proc=proc, timeout=ready_timeout, log=running.log)
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
