"""What several test modules share: the installed command, a free port, judging a fixture tree."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

from sysfs_builder import SysfsTree

from passthrough_exporter.inspector import Inspector
from passthrough_exporter.snapshot import Snapshot
from passthrough_exporter.sources.sysfs import SysfsSource


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
