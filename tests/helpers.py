"""What several test modules share: the installed command, a free port, judging a fixture tree."""

from __future__ import annotations

import http.client
import importlib.util
import re
import shutil
import socket
import sys
from pathlib import Path
from types import ModuleType

from sysfs_builder import SysfsTree

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.judging.snapshot import Snapshot
from passthrough_exporter.reading.sources.sysfs import SysfsSource


def _console_script() -> str:
    """The console script installed beside this interpreter (the project's venv), else on PATH.
    When neither exists the bare name is kept: the tests that run it then fail saying so."""
    beside = Path(sys.executable).parent / "passthrough-exporter"
    return str(beside) if beside.exists() else shutil.which("passthrough-exporter") or "passthrough-exporter"


EXE = _console_script()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def judge_tree(tree: SysfsTree) -> Snapshot:
    return Inspector().judge(SysfsSource(str(tree.sys), str(tree.proc)).read())


GENERATE = Path(__file__).resolve().parents[1] / "benchmarks" / "generate.py"


def generate_module() -> ModuleType:
    """benchmarks/generate.py, which builds large synthetic hosts, loaded as a module."""
    spec = importlib.util.spec_from_file_location("bench_generate", GENERATE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_generate"] = module
    spec.loader.exec_module(module)
    return module


def get(httpd, path: str, method: str = "GET", headers: dict[str, str] | None = None, context=None):
    """One request to a running server on 127.0.0.1: (response, body)."""
    port = httpd.server_address[1]
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


_LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line: str) -> dict[str, str]:
    """One logfmt line (`ts=... level=error msg="..."`) as its keys and unquoted values."""
    fields = {}
    for key, value in _LOGFMT_PAIR.findall(line):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), value[1:-1])
        fields[key] = value
    return fields


def log_messages(stderr: str, level: str | None = None) -> list[str]:
    """The msg of every logfmt line in `stderr` (of one level, if given); a line that is not logfmt fails."""
    out = []
    for line in stderr.splitlines():
        fields = logfmt(line)
        assert {"ts", "level", "logger", "msg"} <= fields.keys(), line
        if level is None or fields["level"] == level:
            out.append(fields["msg"])
    return out


def without_process_metrics(exposition: bytes) -> bytes:
    """An exposition without the process_* families, which change from one scrape to the next."""
    return b"".join(line for line in exposition.splitlines(keepends=True)
                    if not line.startswith((b"process_", b"# HELP process_", b"# TYPE process_")))
