"""File access for every reader of host data: non-blocking, bounded, and traceable.

Every read of sysfs and procfs goes through a `Reader`. Files are opened with O_NONBLOCK and read
with a size limit, so a FIFO or a huge file left in a capture costs one skipped input, never a hung
refresh. A reader given a `Trace` records every path it touched, by how it used it: the capture
command archives exactly that, so the capture and the sources cannot drift apart.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from .attrs import ATTR_LIMIT, decode_attr, escape_bytes

log = logging.getLogger(__name__)

T = TypeVar("T")

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY
_ATTR_READ = ATTR_LIMIT + 1  # one byte more than an attribute may hold, to tell an oversized one

# What a skipped input is counted as, in passthrough_collect_errors_total{kind}.
ERROR_KINDS = ("vanished", "unreadable", "symlink_loop", "bad_attribute", "read_error")


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return {
            errno.ENOENT: "vanished",
            errno.ENOTDIR: "vanished",
            errno.EACCES: "unreadable",
            errno.EPERM: "unreadable",
            errno.ELOOP: "symlink_loop",
        }.get(exc.errno, "read_error")
    return "bad_attribute"


def read_bytes(path: str, limit: int) -> bytes:
    """At most `limit` bytes of `path`, in one read (a sysfs attribute comes whole in one).

    os.open/os.read rather than open(): no buffered file object per attribute (3x cheaper).
    O_NONBLOCK: no effect on sysfs files, but a FIFO cannot stall the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def read_all(path: str, limit: int) -> bytes:
    """Up to `limit` bytes of a file that may come in several reads (procfs tables), non-blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(1 << 16, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_opened(path: str, limit: int, *, whole: bool = False) -> tuple[bytes, str | None]:
    """`read_bytes` (`read_all` if `whole`), with the canonical path of the file the read opened;
    None when it cannot be told. A capture archives bytes under that path only: `path` itself may be
    a link to anywhere (a hostile tree's `vendor` -> /etc/shadow), and may change after the read."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        data = _read_fd(fd, limit) if whole else os.read(fd, limit)
        return data, _opened_path(fd, path)
    finally:
        os.close(fd)


def _opened_path(fd: int, path: str) -> str | None:
    st = os.fstat(fd)
    # Removed since (0 links), or not a file of the tree alone: a device node reads whatever its
    # device gives, and a hard link is another file's bytes (sysfs and procfs have neither).
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return None
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the path's canonical form, if it still names the file we read
        real = os.path.realpath(path)
    try:
        again = os.stat(real)
    except OSError:
        return None
    return real if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino) else None


@dataclass
class Trace:
    """What one read touched, by how it used it: what a tree must hold for a re-read to match."""

    files: dict[str, bytes] = field(default_factory=dict)  # path -> the bytes read (no more)
    links: dict[str, str] = field(default_factory=dict)  # path -> link text, for readlink
    resolved: dict[str, str] = field(default_factory=dict)  # bus entry -> its canonical directory
    listed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dir -> entry names used
    dirs: set[str] = field(default_factory=set)  # device directories listed for their attributes
    present: set[str] = field(default_factory=set)  # entries tested for existence
    unreadable: set[str] = field(default_factory=set)  # present, but reading failed
    opened: dict[str, str | None] = field(default_factory=dict)  # path read -> the file it opened
    # Files that hold a serial number (USB and NVMe `serial`, a PCI function's `vpd`): read like any
    # other, but a capture leaves them out unless asked (`capture --include-serials`).
    serials: set[str] = field(default_factory=set)


class _TracedEntries:
    """A device directory's entry names that records each name found by `in`."""

    __slots__ = ("names", "dirpath", "trace")

    def __init__(self, names: Collection[str], dirpath: str, trace: Trace) -> None:
        self.names, self.dirpath, self.trace = set(names), dirpath, trace

    def __contains__(self, name: object) -> bool:
        found = name in self.names
        if found:
            self.trace.present.add(os.path.join(self.dirpath, str(name)))
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class _OpenDir(set):
    """A device directory's entry names, with the directory held open: its attributes and links are
    opened relative to it (openat, readlinkat), which spares the kernel a walk down the whole path
    for each of them (a fifth of a read on deep trees)."""

    __slots__ = ("fd",)


class Reader:
    """One read of a sysfs/procfs pair: every file access, and the bad inputs met on the way.

    `errors` counts skipped inputs by kind; `count(kind)` adds one. Callers log what they skip.
    """

    def __init__(self, sysfs: str = "/sys", procfs: str = "/proc", trace: Trace | None = None) -> None:
        self.sysfs = sysfs
        self.procfs = procfs
        self.trace = trace
        self.errors: Counter[str] = Counter()
        # Where canonical device directories live (bus entries resolve into it): pcie_root's base.
        self.devices = os.path.join(os.path.realpath(sysfs), "devices")

    def count(self, kind: str) -> None:
        self.errors[kind] += 1

    def read_bytes(self, path: str, limit: int, *, whole: bool = False) -> bytes:
        """At most `limit` bytes of `path`: one read (a text attribute comes whole in one), or with
        `whole` as many as it takes (sysfs hands a binary attribute out a page per read)."""
        if self.trace is not None:
            return self._traced(path, limit, whole=whole)
        return read_all(path, limit) if whole else read_bytes(path, limit)

    def serial_file(self, path: str, limit: int) -> bytes:
        """`read_bytes(path, limit, whole=True)` of a binary file holding a serial number (a PCI
        function's `vpd`), marked so a capture leaves it out unless asked. Raises OSError."""
        if self.trace is not None:
            self.trace.serials.add(path)
        return self.read_bytes(path, limit, whole=True)

    def serial_in(self, attrs: Collection[str], dirpath: str, name: str, what: str) -> str | None:
        """`optional` for a text attribute holding a serial number (USB and NVMe `serial`): missing or
        empty -> None, garbage -> None and counted; marked so a capture leaves it out unless asked."""
        if self.trace is not None:
            self.trace.serials.add(f"{dirpath}/{name}")
        return self.optional(attrs, dirpath, name, _text_or_none, what)

    def _traced(self, path: str, limit: int, whole: bool = False) -> bytes:
        """A read recorded with the file it opened, and the link's text when `path` is a link."""
        assert self.trace is not None
        try:
            data, self.trace.opened[path] = read_opened(path, limit, whole=whole)
        except OSError:
            self.trace.unreadable.add(path)
            raise
        self.trace.files[path] = data
        try:
            self.trace.links[path] = os.readlink(path)  # archived as a link, never its target's bytes
        except OSError:
            pass  # not a link: the usual case
        return data

    def attr(self, path: str) -> str:
        if self.trace is not None:
            return decode_attr(path, self._traced(path, _ATTR_READ))
        # read_bytes inlined: this runs some 20 times per device, and the calls cost a tenth of a read.
        fd = os.open(path, _OPEN_FLAGS)
        try:
            data = os.read(fd, _ATTR_READ)
        finally:
            os.close(fd)
        return decode_attr(path, data)

    def text_file(self, path: str, limit: int, quiet: tuple[type[OSError], ...] = ()) -> str | None:
        """A whole text file of procfs (cmdline, a mount table), bounded; None when it cannot be
        read: counted and logged, unless it is missing or fails with one of the `quiet` errors.
        The trace records it whole: callers that keep less overwrite `trace.files[path]`."""
        try:
            data = read_all(path, limit) if self.trace is None else self._traced(path, limit, whole=True)
        except (FileNotFoundError, *quiet):
            return None
        except OSError as exc:
            log.warning("cannot read %s (%s): %s", path, error_kind(exc), exc)
            self.count(error_kind(exc))
            return None
        return data.decode("utf-8", "backslashreplace")

    def entries(self, path: str) -> Collection[str]:
        """A device directory's entries, for `attr in entries` tests (raises OSError)."""
        names = os.listdir(path)
        if self.trace is None:
            return set(names)
        self.trace.dirs.add(path)
        return _TracedEntries(names, path, self.trace)

    def listing(self, path: str, what: str | None = None) -> Collection[str] | None:
        """`entries(path)` of a directory that may be missing: None quietly when it is not there (gone
        with its device, or never made), None logged and counted when it cannot be listed."""
        try:
            return self.entries(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            kind = error_kind(exc)
            log.warning("%scannot list %s (%s): %s", f"{what}: " if what else "", path, kind, exc)
            self.count(kind)
            return None

    def device_dir(self, path: str) -> Collection[str]:
        """`entries(path)`; untraced, with the directory held open for `attr_in`, `optional`,
        `link_in` and `read_in`, until `release`."""
        if self.trace is not None:
            return self.entries(path)
        names = _OpenDir(os.listdir(path))
        names.fd = os.open(path, _DIR_FLAGS)
        return names

    @staticmethod
    def release(attrs: Collection[str]) -> None:
        if type(attrs) is _OpenDir:
            os.close(attrs.fd)

    def read_in(self, attrs: Collection[str], dirpath: str, name: str, limit: int) -> bytes:
        """`read_bytes(f"{dirpath}/{name}", limit)`, relative to the directory when it is held open."""
        if type(attrs) is not _OpenDir:
            return self.read_bytes(f"{dirpath}/{name}", limit)
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=attrs.fd)
            try:
                return os.read(fd, limit)
            finally:
                os.close(fd)
        except OSError as exc:
            exc.filename = f"{dirpath}/{name}"  # messages name the whole path, as a read by path does
            raise

    def attr_in(self, attrs: Collection[str], dirpath: str, name: str) -> str:
        """`attr(f"{dirpath}/{name}")`, relative to the directory when it is held open."""
        if type(attrs) is not _OpenDir:
            return self.attr(f"{dirpath}/{name}")  # f-string: os.path.join costs more than the read
        return decode_attr(f"{dirpath}/{name}", self.read_in(attrs, dirpath, name, _ATTR_READ))

    def link_in(self, attrs: Collection[str], dirpath: str, link: str) -> str | None:
        """`link_name(dirpath, link)`, relative to the directory when it is held open."""
        if type(attrs) is not _OpenDir:
            return self.link_name(dirpath, link)
        try:
            text = os.readlink(link, dir_fd=attrs.fd)
        except OSError:
            return None
        return escape_bytes(text.rpartition("/")[2])

    def optional(self, attrs: Collection[str], dirpath: str, attr: str, parse: Callable[[str], T], what: str) -> T | None:
        """An attribute a device can do without: missing -> None, garbage -> None and counted."""
        if attr not in attrs:
            return None
        try:
            return parse(self.attr_in(attrs, dirpath, attr))
        except (OSError, ValueError) as exc:
            kind = error_kind(exc)
            log.warning("%s: attribute %s skipped (%s): %s", what, attr, kind, exc)
            self.count(kind)
            return None

    def link_name(self, dirpath: str, link: str) -> str | None:
        """The last component of a link's target (a driver, a group number), bad bytes escaped."""
        path = f"{dirpath}/{link}"
        try:
            text = os.readlink(path)
        except OSError:
            return None
        if self.trace is not None:
            self.trace.links[path] = text
        return escape_bytes(text.rpartition("/")[2])  # os.path.basename, without its calls

    def listdir(self, path: str) -> list[str]:
        """Sorted entry names; [] when missing, counted when unreadable."""
        try:
            names = sorted(os.listdir(path))
        except FileNotFoundError:
            return []
        except OSError as exc:
            kind = error_kind(exc)
            log.warning("cannot list %s (%s): %s", path, kind, exc)
            self.count(kind)
            return []
        if self.trace is not None:
            self.trace.listed[path] = tuple(names)
        return names

    def resolve(self, path: str) -> str:
        """The canonical path of `path`, recorded so a capture holds the link and where it leads."""
        real = os.path.realpath(path)
        if self.trace is not None:
            self.trace.resolved[path] = real
        return real

    def bus_entries(self, bus: str) -> list[tuple[str, str]]:
        """(sysname, canonical directory) of each entry of <sysfs>/bus/<bus>/devices."""
        base = os.path.join(self.sysfs, "bus", bus, "devices")
        real_base = os.path.realpath(base)
        out = [(entry, _resolve(base, real_base, entry)) for entry in self.listdir(base)]
        if self.trace is not None:
            self.trace.resolved.update((os.path.join(base, entry), real) for entry, real in out)
        return out


def _text_or_none(text: str) -> str | None:
    return text or None


def _resolve(base: str, real_base: str, entry: str) -> str:
    """The canonical directory of a bus entry. The kernel's entries are relative links into
    /sys/devices, whose directories are never links: one readlink resolves them, where realpath()
    would lstat every component of a deep path. Anything else goes through realpath()."""
    path = os.path.join(base, entry)
    try:
        target = os.readlink(path)
    except OSError:  # not a link (a flat capture): realpath decides
        return os.path.realpath(path)
    if os.path.isabs(target) or not target.startswith("../"):
        return os.path.realpath(path)
    return os.path.normpath(os.path.join(real_base, target))
