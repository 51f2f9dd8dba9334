"""Who holds which device now: one pass over <procfs>/<pid>/fd for VFIO and usbfs device nodes.

Unprivileged readers see only their own processes (reading another's fd/ needs root or
CAP_SYS_PTRACE): an unreadable process is normal, not an error. The scan reads links and the
holders' `comm` and `cmdline` directly, never through the traced reader: a capture for a bug
report carries no other process's command line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from types import MappingProxyType

from ..model import Holder
from .attrs import escape_bytes
from .files import read_all

log = logging.getLogger(__name__)

PREFIXES = ("/dev/vfio/", "/dev/bus/usb/")
MAX_LINKS = 1_000_000  # readlink calls per scan: a bound, far above any real host's open files
CMDLINE_LIMIT = 64 << 10


def scan_holders(procfs: str, devfs: str = "/dev") -> Mapping[str, Holder] | None:
    """Device node (as under /dev) -> the first process found holding it; None when no process
    could be read. `devfs` is where the nodes are looked for (tests use a directory of their own)."""
    prefixes = tuple(devfs.rstrip("/") + p.removeprefix("/dev") for p in PREFIXES)
    try:
        pids = [p for p in os.listdir(procfs) if p.isascii() and p.isdigit()]
    except OSError:
        return None
    held: dict[str, int] = {}
    readable = 0
    links = 0
    for pid in pids:
        fd_dir = f"{procfs}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        readable += 1
        for fd in fds:
            links += 1
            if links > MAX_LINKS:
                log.warning("process scan stopped after %d open files; holders may be missing", MAX_LINKS)
                break
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith(prefixes):
                held.setdefault("/dev" + target[len(devfs.rstrip("/")):], int(pid))
        else:
            continue
        break
    if not readable:
        return None
    who = {pid: _holder(procfs, pid) for pid in set(held.values())}
    return MappingProxyType({node: who[pid] for node, pid in held.items()})


def _holder(procfs: str, pid: int) -> Holder:
    try:
        comm = escape_bytes(os.fsdecode(read_all(f"{procfs}/{pid}/comm", 64)).strip())
    except OSError:
        comm = "?"
    try:
        argv = read_all(f"{procfs}/{pid}/cmdline", CMDLINE_LIMIT).split(b"\0")
    except OSError:
        argv = []
    return Holder(pid=pid, process=comm, vm=qemu_guest_name([a.decode("utf-8", "backslashreplace") for a in argv]))


def qemu_guest_name(argv: list[str]) -> str | None:
    """The guest's name from QEMU's `-name [guest=]NAME[,process=...][,debug-threads=on]`.

    QEMU option values escape a comma as ",,".
    """
    for i, arg in enumerate(argv[:-1]):
        if arg not in ("-name", "--name"):
            continue
        first = None
        for part in _split_options(argv[i + 1]):
            key, eq, value = part.partition("=")
            if not eq and first is None:
                first = part  # the implicit guest=
            elif key == "guest":
                return value or None
        return first or None
    return None


def _split_options(text: str) -> list[str]:
    out, cur, i = [], [], 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1 : i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            out.append("".join(cur))
            cur = []
        else:
            cur.append(text[i])
        i += 1
    out.append("".join(cur))
    return out
