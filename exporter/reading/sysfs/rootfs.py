"""Which devices hold the root filesystem: `<procfs>/1/mountinfo` and `<sysfs>/dev/block`.

The root mount's block device is followed down through device-mapper and md (`slaves/`) and NVMe
multipath heads (`multipath/`) to the disks or partitions it uses; the listed devices above
those, up to and including their PCI function, are the devices the host cannot give away.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping

from .files import Reader, error_kind

log = logging.getLogger(__name__)

MAX_DEPTH = 16  # stacked block devices (dm on md on partitions ...) never nest this deep
MOUNTINFO_LIMIT = 4 << 20  # bytes; a host with 20,000 mounts has about 3 MB


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


def root_mount(mountinfo: str) -> tuple[str, str] | None:
    """(major:minor, mount source) of the mount on `/` that is visible (the last one), or None."""
    found = _root_line(mountinfo)
    return found[1][:2] if found else None


def _root_line(mountinfo: str) -> tuple[str, tuple[str, str, str]] | None:
    """The mountinfo line of the visible mount on `/`, and its (major:minor, source, fstype)."""
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
        fstype = fields[sep + 1] if len(fields) > sep + 1 else ""
        found = (line, (fields[2], source, fstype))
    return found


def _block_dir_for_source(reader: Reader, source: str) -> str | None:
    """The block directory of a mount source like /dev/sda2 or /dev/mapper/vg-root.

    Needed when the root mount's device number is anonymous (0:N: btrfs, and similar).
    """
    if not source.startswith("/dev/"):
        return None
    name = os.path.basename(source)
    path = os.path.join(reader.sysfs, "class", "block", name)
    if os.path.exists(path):
        return reader.resolve(path)
    if source.startswith("/dev/mapper/"):  # device-mapper names live in dm/name
        vblock = os.path.join(reader.sysfs, "devices", "virtual", "block")
        for dm in sorted(os.listdir(vblock)) if os.path.isdir(vblock) else ():
            try:
                data = reader.read_bytes(os.path.join(vblock, dm, "dm", "name"), 4096)
            except OSError:
                continue
            if data.decode(errors="replace").strip() == name:
                if reader.trace is not None:
                    reader.trace.listed[vblock] = (dm,)
                return reader.resolve(os.path.join(vblock, dm))
    return None


def _backing(reader: Reader, path: str, depth: int, seen: set[str], out: list[str]) -> None:
    """Follow stacked devices down to the disks (or partitions) that hold the data."""
    if path in seen or depth > MAX_DEPTH:
        return
    seen.add(path)
    lower = []
    for sub in ("slaves", "multipath"):  # dm / md members; NVMe multipath head -> its paths
        d = os.path.join(path, sub)
        if os.path.isdir(d):
            entries = sorted(os.listdir(d))
            if reader.trace is not None:
                reader.trace.listed[d] = tuple(entries)
            lower += [reader.resolve(os.path.join(d, e)) for e in entries]
    if not lower:
        out.append(path)
    for p in lower:
        _backing(reader, p, depth + 1, seen, out)


def root_block_dirs(reader: Reader) -> list[str] | None:
    """Canonical sysfs directories of the block devices under `/`.

    None when no mountinfo can be read (a partial capture: nothing known). [] when it was read but
    `/` is not on a block device this sysfs knows (tmpfs, NFS, overlay in a container ...).
    """
    # PID 1's view first: in a container given the host's /proc (as node_exporter reads
    # 1/mountinfo), `self` is the container's overlay root, not the host's.
    text = path = None
    for pid in ("1", "self"):
        path = os.path.join(reader.procfs, pid, "mountinfo")
        text = reader.text_file(path, MOUNTINFO_LIMIT, quiet=(PermissionError,))
        if text is not None:
            break
    if text is None or path is None:
        log.warning("cannot read %s/1/mountinfo nor self/mountinfo: the root filesystem's device is unknown "
                    "(root_device_unknown)", reader.procfs)
        return None
    found = _root_line(text)
    if found is None:
        log.warning("%s has no mount on /", path)
        reader.count("bad_attribute")
        return []
    line, (number, source, fstype) = found
    if reader.trace is not None:  # only the root mount's line: the rest of the mount table is not ours to copy
        reader.trace.files[path] = (line + "\n").encode()
    starts: list[str | None] = []  # the block directories `/` is mounted from
    if not number.startswith("0:"):
        link = os.path.join(reader.sysfs, "dev", "block", number)
        if os.path.exists(link):
            starts.append(reader.resolve(link))
    if not starts:  # bcachefs names every member: /dev/sda2:/dev/nvme0n1p2
        parts = source.split(":") if fstype == "bcachefs" else [source]
        starts = [_block_dir_for_source(reader, part) for part in parts]
    if None in starts:  # a member not found is as unknown as all of them: none is traced then
        # Nothing of mountinfo is quoted: no log line quotes a file's content (a network mount's source
        # may name a user).
        log.info("the root filesystem is not on block devices of %s", reader.sysfs)
        return []
    if fstype == "btrfs":  # a btrfs spanning several disks mounts by one of them: the others hold `/` too
        starts += _btrfs_members(reader, starts[0])
    out: list[str] = []
    seen: set[str] = set()
    for start in dict.fromkeys(s for s in starts if s):
        try:
            _backing(reader, start, 0, seen, out)
        except OSError as exc:
            log.warning("cannot follow the root block device %s: %s", start, exc)
            reader.count(error_kind(exc))
    return out


def _btrfs_members(reader: Reader, block: str) -> list[str]:
    """The other devices of the btrfs that `block` belongs to: `<sysfs>/fs/btrfs/<fsid>/devices/`
    links to each member's block directory."""
    base = os.path.join(reader.sysfs, "fs", "btrfs")
    name = os.path.basename(block)
    for fsid in reader.listdir(base):
        devices = os.path.join(base, fsid, "devices")
        members = reader.listdir(devices)
        if name in members:
            return [reader.resolve(os.path.join(devices, m)) for m in members if m != name]
    return []


def listed_ancestors(path: str, names: Mapping[str, str], root: str) -> Iterator[str]:
    """The listed devices at `path` and above it, nearest first, up to the sysfs root."""
    while len(path) > len(root):
        name = names.get(path)
        if name is not None:
            yield name
        path = os.path.dirname(path)


def root_devices(reader: Reader, names: Mapping[str, str], kinds: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(devices, disks) behind the root filesystem, or None when that cannot be told.

    `names` maps each listed device's canonical directory to its name, `kinds` a name to its type.
    The devices are those from each disk up to its PCI function, inclusive (not the bridges above).
    """
    blocks = root_block_dirs(reader)
    if blocks is None:
        return None
    root = os.path.realpath(reader.sysfs)
    found: dict[str, None] = {}
    for block in blocks:
        for name in listed_ancestors(block, names, root):
            found[name] = None
            if kinds[name] == "pci":
                break
    return tuple(sorted(found)), tuple(os.path.basename(b) for b in blocks)
