"""Who holds which device now: one pass over <procfs>/<pid>/fd for the character devices of VFIO
groups, VFIO device nodes and USB devices.

The evidence is the device number, never a name: a link counts only when `stat()` of
`<procfs>/<pid>/fd/<n>` (which follows the link to the file the process opened) is a character
device with one of the wanted numbers (read from sysfs), and `<procfs>/<pid>/fdinfo/<n>` says it
is open for writing. Anyone can name a file /dev/vfio/4 in a mount namespace of their own, open a
real node with O_PATH (it needs no permission on the node) or open a USB node read-only (lsusb
does): none of these holds a device. Only links whose text starts with /dev/ are stat'ed: a
stat of a file on a network filesystem can hang.

Unprivileged readers see only their own processes (reading another's fd/ needs root or
CAP_SYS_PTRACE): an unreadable process is normal, not an error. The scan reads links and the
holders' `comm` and `cmdline` directly, never through the traced reader: a capture for a bug
report carries no other process's command line.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection, Iterable, Mapping
from types import MappingProxyType

from ...model import Device, Holder, HostFacts
from .attrs import escape_bytes
from .files import read_all

log = logging.getLogger(__name__)

MAX_LINKS = 1_000_000  # readlink calls per scan: a bound, far above any real host's open files
CMDLINE_LIMIT = 64 << 10
FDINFO_LIMIT = 4096  # its `flags:` line comes second; the rest (epoll, inotify lists) is not needed
_WRITABLE = (os.O_WRONLY, os.O_RDWR)


def wanted_numbers(devices: Iterable[Device], host: HostFacts) -> frozenset[tuple[int, int]]:
    """The character devices a holder can hold: every VFIO group's and every device's own."""
    return frozenset(host.vfio_groups.values()) | {d.char_dev for d in devices if d.char_dev is not None}


def scan_holders(procfs: str, wanted: Collection[tuple[int, int]]) -> Mapping[tuple[int, int], Holder] | None:
    """(major, minor) of each `wanted` character device -> the first process found holding it open
    for writing; None when no process could be read."""
    try:
        pids = [p for p in os.listdir(procfs) if p.isascii() and p.isdigit()]
    except OSError:
        return None
    held: dict[tuple[int, int], int] = {}
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
            number = _held_device(procfs, pid, fd, wanted)
            if number is not None:
                held.setdefault(number, int(pid))
        else:
            continue
        break
    if not readable:
        return None
    who = {pid: _holder(procfs, pid) for pid in set(held.values())}
    return MappingProxyType({number: who[pid] for number, pid in held.items()})


def _held_device(procfs: str, pid: str, fd: str, wanted: Collection[tuple[int, int]]) -> tuple[int, int] | None:
    """The wanted character device that open file `fd` of `pid` is, when it is open for writing."""
    link = f"{procfs}/{pid}/fd/{fd}"
    try:
        if not os.readlink(link).startswith("/dev/"):  # sockets, pipes, files: a stat could hang on NFS
            return None
        st = os.stat(link)  # the opened file itself, whatever its name
    except OSError:  # closed meanwhile, or a dangling link in a copy
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    number = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if number not in wanted or not _open_for_writing(f"{procfs}/{pid}/fdinfo/{fd}"):
        return None
    return number


def _open_for_writing(fdinfo: str) -> bool:
    """The `flags:` (octal) of an fdinfo file say write or read-write access. O_PATH opens carry
    neither, whatever was asked; unreadable or malformed: no (holding must be proven)."""
    try:
        text = read_all(fdinfo, FDINFO_LIMIT).decode("ascii", "replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "flags":
            value = value.strip()
            if not value or value.strip("01234567"):  # octal digits only
                return False
            flags = int(value, 8)
            return not (flags & os.O_PATH) and (flags & os.O_ACCMODE) in _WRITABLE
    return False


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
