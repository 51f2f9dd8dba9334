"""`capture`: a tar.gz of exactly the sysfs/procfs entries the sysfs source reads, for bug reports.

No file list is kept here. The source reads the host once with a `Trace`, and the archive holds
what that read touched: the bytes it read and no more (so config space stops at the 64-byte
header), the links it followed (rewritten as relative links inside the archive), and empty
placeholders for names it only listed or tested for. Unpacked, `--path.sysfs DIR/sys
--path.procfs DIR/proc` reads the same inventory; the files that hold serial numbers (USB and NVMe
`serial`, PCI `vpd`) travel only when asked, and without them the copy reads as devices without one.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import posixpath
import tarfile
import time
from dataclasses import dataclass
from typing import BinaryIO

from ..reading.sources import SourceError
from ..reading.sources.sysfs import SysfsSource
from ..reading.sysfs import Trace
from .fileutil import RefusedPath, atomic_file, preflight, stdout_binary

log = logging.getLogger(__name__)

# Ranks: a concrete entry beats a directory, which beats a placeholder for a name only listed/tested.
_FILE, _LINK, _DIR, _LISTED, _PRESENT = 4, 4, 3, 2, 1


class CaptureError(SourceError):
    """The capture could not be written (the output exists, or is not writable)."""


@dataclass(frozen=True)
class Entry:
    kind: str  # "dir" | "file" | "link"
    data: bytes = b""
    target: str = ""  # relative link text, for links
    rank: int = _DIR


@dataclass(frozen=True)
class Summary:
    files: int
    links: int
    dirs: int
    data_bytes: int  # file content captured
    archive_bytes: int

    def line(self, output: str) -> str:
        return (f"wrote {output}: {self.files} files, {self.links} links, {self.dirs} directories, "
                f"{self.data_bytes} bytes of data, {self.archive_bytes} bytes compressed")


class _Plan:
    """Archive members by name (`sys/...`, `proc/...`), built from one trace."""

    def __init__(self, sysfs: str, procfs: str) -> None:
        # Longest root first, so a procfs inside the sysfs root (or the reverse) maps to its own top.
        roots = [(os.path.realpath(sysfs), "sys"), (os.path.realpath(procfs), "proc")]
        self.roots = sorted(roots, key=lambda r: -len(r[0]))
        self.entries: dict[str, Entry] = {"sys": Entry("dir"), "proc": Entry("dir")}

    def real_name(self, real: str) -> str | None:
        """Archive name of a canonical path; None outside both roots."""
        for root, top in self.roots:
            rel = os.path.relpath(real, root)
            if rel == ".":
                return top
            if rel != ".." and not rel.startswith(".." + os.sep):
                return posixpath.join(top, *rel.split(os.sep))
        return None

    def name(self, path: str) -> str | None:
        """Archive name of `path` itself: its directory canonical, the last component kept (it may be a link)."""
        return self.real_name(os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)))

    def add(self, name: str | None, entry: Entry, what: str) -> None:
        if name is None:
            log.warning("capture: %s is outside the sysfs and procfs roots, left out", what)
            return
        old = self.entries.get(name)
        if old is None or entry.rank > old.rank:
            self.entries[name] = entry

    def link(self, path: str, target_real: str, text: str) -> None:
        name = self.name(path)
        target = self.real_name(target_real)
        if name is not None and target is not None:
            rel = posixpath.relpath(target, posixpath.dirname(name))
        else:
            rel = posixpath.basename(text)  # points outside the capture: keep only what readlink users need
        self.add(name, Entry("link", target=rel, rank=_LINK), path)

    def complete(self) -> dict[str, Entry]:
        """Every member with its parent directories, in archive order (parents first)."""
        out = dict(self.entries)
        for name in list(out):
            parent = posixpath.dirname(name)
            while parent and parent not in out:
                out[parent] = Entry("dir")
                parent = posixpath.dirname(parent)
        return dict(sorted(out.items()))


def plan(sysfs: str, procfs: str, trace: Trace, *, include_serials: bool = False) -> dict[str, Entry]:
    """Archive members that reproduce, for the sysfs source, what `trace` saw; the files that hold
    serial numbers (`trace.serials`: USB and NVMe `serial`, PCI `vpd`) only with `include_serials`."""
    p = _Plan(sysfs, procfs)
    left_out = set() if include_serials else trace.serials
    for path in trace.dirs:
        p.add(p.real_name(os.path.realpath(path)), Entry("dir"), path)
    for path, names in trace.listed.items():
        p.add(p.real_name(os.path.realpath(path)), Entry("dir"), path)
        for n in names:
            p.add(p.name(os.path.join(path, n)), Entry("dir", rank=_LISTED), path)
    for path, data in trace.files.items():
        if path in left_out:
            continue
        # The bytes go under the file the read opened, never under a link's name, and only if that
        # file is in the tree: a link to /etc/shadow is archived as a link (below), not as its bytes.
        real = trace.opened.get(path)
        name = p.real_name(real) if real is not None else None
        if name is None:
            log.warning("capture: %s leads outside the sysfs and procfs roots; its content is left out", path)
            continue
        p.add(name, Entry("file", data=data, rank=_FILE), path)
    for path, text in trace.links.items():
        if path not in left_out:
            p.link(path, os.path.normpath(os.path.join(os.path.realpath(os.path.dirname(path)), text)), text)
    for path, real in trace.resolved.items():
        p.link(path, real, real)
        p.add(p.real_name(real), Entry("dir"), real)
    # An empty placeholder would read as "" where the source saw an error: leave unreadable ones out.
    # A serial left out leaves no placeholder either: the copy reads as a device without one.
    for path in trace.present - trace.unreadable - left_out:
        p.add(p.name(path), Entry("file", rank=_PRESENT), path)
    return p.complete()


def write_archive(entries: dict[str, Entry], output: str, *, force: bool = False) -> Summary:
    """Write `entries` as tar.gz to `output` atomically: a temp file beside it, then a rename that
    replaces nothing but a regular file (and that only with `force`). `-` is standard output."""
    now = int(time.time())
    try:
        if output == "-":
            out = _Counted(stdout_binary())
            _write_tar_gz(entries, out, now)
            stdout_binary().flush()
            gz_end = out.size
        else:
            with atomic_file(output, overwrite=force, mode=None) as raw:
                _write_tar_gz(entries, raw, now)
                gz_end = raw.tell()
    except OSError as exc:
        raise _cannot_write(output, exc) from None
    kinds = [e.kind for e in entries.values()]
    return Summary(kinds.count("file"), kinds.count("link"), kinds.count("dir"),
                   sum(len(e.data) for e in entries.values()), gz_end)


def _write_tar_gz(entries: dict[str, Entry], raw: BinaryIO | _Counted, now: int) -> None:
    # filename="": keep the temp file's name out of the gzip header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=now) as gz:  # type: ignore[arg-type]
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, e in entries.items():
                tar.addfile(*_member(name, e, now))


class _Counted:
    """A binary stream that cannot tell() (a pipe), with the bytes written to it counted."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.size = stream, 0

    def write(self, data: bytes) -> int:
        self.stream.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


def _cannot_write(output: str, exc: OSError) -> CaptureError:
    if isinstance(exc, FileExistsError):
        return CaptureError(f"{output} exists; use --force to overwrite it")
    if isinstance(exc, RefusedPath):
        return CaptureError(f"cannot write {output}: {exc.strerror}")
    if output == "-":
        return CaptureError(f"cannot write to standard output: {exc.strerror}")
    return CaptureError(f"cannot write in {os.path.dirname(os.path.abspath(output))}: {exc.strerror}")


def _member(name: str, e: Entry, mtime: int) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.uname = info.gname = ""  # nothing about who ran it
    if e.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        return info, None
    if e.kind == "link":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, e.target
        return info, None
    info.mode, info.size = 0o644, len(e.data)
    return info, io.BytesIO(e.data)


def capture(sysfs: str, procfs: str, output: str, *, force: bool = False, include_serials: bool = False) -> Summary:
    """Capture what the sysfs source reads from `sysfs`/`procfs` into the tar.gz `output`."""
    if output != "-":
        try:  # refused before the read, not after it
            preflight(output, overwrite=force)
        except OSError as exc:
            raise _cannot_write(output, exc) from None
    trace = Trace()
    SysfsSource(sysfs, procfs).read(trace)
    entries = plan(sysfs, procfs, trace, include_serials=include_serials)
    return write_archive(entries, output, force=force)
