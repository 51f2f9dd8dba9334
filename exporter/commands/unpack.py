"""A capture archive unpacked safely, on every supported Python: what `diff` reads, and what the tests
unpack a capture into.

`TarFile.extract(filter="data")` arrived in Python 3.11.4 (and 3.10.12); Debian 12 ships 3.11.2. The
checks below give the same safety on any version, and the "data" filter is applied as well where it
exists: member names stay inside the destination (no absolute names, no `..`, no way out through a
link unpacked earlier), links point inside it and are given once, only regular files, directories
and symbolic links are unpacked (no device nodes, FIFOs or hard links), no setuid, setgid or
world-writable modes, the files belong to whoever unpacks them, and an archive far larger than any
capture is refused before it fills the disk.
"""

from __future__ import annotations

import os
import posixpath
import tarfile

# tarfile's own filter, where it has one; None leaves the checks below alone.
FILTER: str | None = "data" if hasattr(tarfile, "data_filter") else None
# A capture of a large host is some 10 MB of attribute files in 100,000 members; an archive well past
# that is not one, and unpacking it would fill the disk (a small .tar.gz can hold gigabytes of zeros).
MAX_MEMBERS = 500_000
MAX_BYTES = 256 << 20


class UnsafeMember(ValueError):
    """A member that is not one a capture writes, or one past the bounds: `name: why`."""


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def check_member(member: tarfile.TarInfo, root: str) -> None:
    """Refuse `member` unless unpacking it under `root` (a resolved path) stays inside `root`."""
    name = member.name
    if name.startswith("/") or os.path.isabs(name):
        raise UnsafeMember(f"{name}: absolute member name")
    if ".." in name.split("/"):
        raise UnsafeMember(f"{name}: member name contains '..'")
    if not (member.isreg() or member.isdir() or member.issym()):
        raise UnsafeMember(f"{name}: not a regular file, directory or symbolic link")
    # Resolve what is already on disk: a member cannot be written through a link unpacked before it.
    target = os.path.realpath(os.path.join(root, name))
    if not _inside(root, target):
        raise UnsafeMember(f"{name}: would be written outside the destination")
    if member.issym():
        link = member.linkname
        if link.startswith("/"):
            raise UnsafeMember(f"{name}: absolute link target {link}")
        if os.path.lexists(os.path.join(root, name)):  # a link replaced later could lead outside
            raise UnsafeMember(f"{name}: link given twice")
        parent = os.path.realpath(os.path.join(root, posixpath.dirname(name)))
        if not _inside(root, os.path.realpath(os.path.join(parent, link))):
            raise UnsafeMember(f"{name}: link target {link} leaves the destination")


def unpack(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Unpack `archive` into `dest` (created if missing), refusing anything unsafe (UnsafeMember);
    an archive that is not one raises tarfile.TarError, OSError or EOFError."""
    os.makedirs(dest, exist_ok=True)
    root = os.path.realpath(dest)
    extra = {"filter": FILTER} if FILTER else {}
    members = size = 0
    with tarfile.open(archive) as tar:
        for member in tar:  # one at a time: each check sees what the members before it left on disk
            members, size = members + 1, size + max(member.size, 0)
            if members > MAX_MEMBERS or size > MAX_BYTES:
                raise UnsafeMember(f"{member.name}: more than {MAX_MEMBERS} members or {MAX_BYTES >> 20} MiB up "
                                   "to it: not a capture archive")
            check_member(member, root)
            if not member.issym():
                member.mode &= 0o755
            member.uid, member.gid, member.uname, member.gname = os.geteuid(), os.getegid(), "", ""
            tar.extract(member, root, numeric_owner=True, **extra)
