"""Which block devices hold the root filesystem: `<procfs>/self/mountinfo` and `<sysfs>/dev/block`.

Part of the sysfs source (host data, read-only). The answer is a list of canonical sysfs
directories of the physical block devices under `/`, after following device-mapper and md
(`slaves/`) and NVMe multipath heads (`multipath/`) down to the disks or partitions they use.
The caller maps those directories to the listed devices above them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # sysfs imports this module
    from passthrough_exporter.sources.sysfs import Trace

log = logging.getLogger(__name__)

MAX_DEPTH = 16  # stacked block devices (dm on md on partitions ...) never nest this deep


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal: \\040."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _kind(exc: OSError) -> str:
    return "vanished" if isinstance(exc, NotADirectoryError) else "read_error"


def root_mount(mountinfo: str) -> tuple[str, str] | None:
    """(major:minor, mount source) of the mount on `/` that is visible (the last one), or None."""
    found = _root_line(mountinfo)
    return found[1] if found else None


def _root_line(mountinfo: str) -> tuple[str, tuple[str, str]] | None:
    """The mountinfo line of the visible mount on `/`, and what `root_mount` makes of it."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 7 or _unescape(fields[4]) != "/":
            continue
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        source = _unescape(fields[sep + 2]) if len(fields) > sep + 2 else ""
        found = (line, (fields[2], source))
    return found


def _block_dir_for_source(sysfs: str, source: str, trace: Trace | None) -> str | None:
    """The block directory of a mount source like /dev/sda2 or /dev/mapper/vg-root.

    Needed when the root mount's device number is anonymous (0:N: btrfs, and similar).
    """
    if not source.startswith("/dev/"):
        return None
    name = os.path.basename(source)
    path = os.path.join(sysfs, "class", "block", name)
    if os.path.exists(path):
        return _resolve(path, trace)
    if source.startswith("/dev/mapper/"):  # device-mapper names live in dm/name
        vblock = os.path.join(sysfs, "devices", "virtual", "block")
        for dm in sorted(os.listdir(vblock)) if os.path.isdir(vblock) else ():
            from passthrough_exporter.sources.sysfs import _read_bytes  # sysfs imports this module

            try:
                data = _read_bytes(os.path.join(vblock, dm, "dm", "name"), 4096)
            except OSError:
                continue
            if data.decode(errors="replace").strip() == name:
                if trace is not None:
                    trace.listed[vblock] = (dm,)
                    trace.files[os.path.join(vblock, dm, "dm", "name")] = data
                return _resolve(os.path.join(vblock, dm), trace)
    return None


def _resolve(path: str, trace: Trace | None) -> str:
    real = os.path.realpath(path)
    if trace is not None:  # a snapshot must hold the link and where it leads
        trace.resolved[path] = real
    return real


def _backing(path: str, depth: int, seen: set[str], out: list[str], trace: Trace | None) -> None:
    """Follow stacked devices down to the disks (or partitions) that hold the data."""
    if path in seen or depth > MAX_DEPTH:
        return
    seen.add(path)
    lower = []
    for sub in ("slaves", "multipath"):  # dm / md members; NVMe multipath head -> its paths
        d = os.path.join(path, sub)
        if os.path.isdir(d):
            entries = sorted(os.listdir(d))
            if trace is not None:
                trace.listed[d] = tuple(entries)
            lower += [_resolve(os.path.join(d, e), trace) for e in entries]
    if not lower:
        out.append(path)
    for p in lower:
        _backing(p, depth + 1, seen, out, trace)


def root_block_dirs(
    sysfs: str, procfs: str, count: Callable[[str], None], trace: Trace | None = None
) -> list[str] | None:
    """Canonical sysfs directories of the block devices under `/`.

    None when no mountinfo can be read (a partial capture: nothing known). [] when it was read but
    `/` is not on a block device this sysfs knows (tmpfs, NFS, overlay in a container ...).
    """
    # PID 1's view first: in a container given the host's /proc (as node_exporter reads
    # 1/mountinfo), `self` is the container's overlay root, not the host's.
    text = None
    for pid in ("1", "self"):
        path = os.path.join(procfs, pid, "mountinfo")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(4 << 20)
            break
        except (FileNotFoundError, PermissionError):
            continue
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            count(_kind(exc))
            return None
    if text is None:
        return None
    found = _root_line(text)
    if found is None:
        log.warning("%s has no mount on /", path)
        count("bad_attribute")
        return []
    line, (number, source) = found
    if trace is not None:  # only the root mount's line: the rest of the mount table is not ours to copy
        trace.files[path] = (line + "\n").encode()
    start = None
    if not number.startswith("0:"):
        link = os.path.join(sysfs, "dev", "block", number)
        if os.path.exists(link):
            start = _resolve(link, trace)
    if start is None:
        start = _block_dir_for_source(sysfs, source, trace)
    if start is None:
        log.info("root filesystem (%s, %s) is not on a block device of %s", number, source, sysfs)
        return []
    out: list[str] = []
    try:
        _backing(start, 0, set(), out, trace)
    except OSError as exc:
        log.warning("cannot follow the root block device %s: %s", start, exc)
        count("read_error")
    return out
