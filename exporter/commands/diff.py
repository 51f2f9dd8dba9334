"""`passthrough-exporter diff BEFORE AFTER`: what changed between two hosts as read, each a `capture`
archive (.tar.gz) or a host root (a directory with sys/ and proc/), compared as the changes plugin
compares two boots. One line per change; exit 0 when nothing changed, 1 when something did, 2 on a
usage error (an input that is neither).
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile

from ..judging.changes import compare
from ..model import BootRecord
from ..reading.sources import SourceError
from ..reading.sources.sysfs import SysfsSource
from ..rendering import jsonout
from ..textsafe import visible

USAGE = 2
# A capture of a large host is some 10 MB of attribute files in 100,000 members; an archive well past
# that is not one, and unpacking it would fill the disk (a small .tar.gz can hold gigabytes of zeros).
MAX_MEMBERS = 500_000
MAX_BYTES = 256 << 20


class DiffInputError(Exception):
    """An input that is neither a capture archive nor a host root."""


def _unpack(archive: str, dest: str) -> None:
    """A capture archive into `dest`: regular files, directories and links that stay inside only."""
    root = os.path.realpath(dest)
    members = size = 0
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                name = member.name
                members, size = members + 1, size + max(member.size, 0)
                if members > MAX_MEMBERS or size > MAX_BYTES:
                    raise DiffInputError(f"{archive}: more than {MAX_MEMBERS} members or {MAX_BYTES >> 20} MiB: "
                                         "not a capture archive")
                if (name.startswith("/") or ".." in name.split("/")
                        or not (member.isreg() or member.isdir() or member.issym())):
                    raise DiffInputError(f"{archive}: member {name!r} is not one a capture writes")
                if member.issym():
                    if os.path.lexists(os.path.join(root, name)):  # a link replaced later could lead outside
                        raise DiffInputError(f"{archive}: link {name!r} is given twice")
                    parent = os.path.realpath(os.path.join(root, os.path.dirname(name)))
                    target = os.path.realpath(os.path.join(parent, member.linkname))
                    if member.linkname.startswith("/") or not (target == root or target.startswith(root + os.sep)):
                        raise DiffInputError(f"{archive}: link {name!r} leads outside the capture")
                where = os.path.realpath(os.path.join(root, name))
                if not (where == root or where.startswith(root + os.sep)):
                    raise DiffInputError(f"{archive}: member {name!r} would be written outside the capture")
                member.mode = 0o755 if member.isdir() else 0o644
                member.uid = member.gid = 0
                # Checked above, member by member: the stdlib's filters (3.12+) would only repeat it.
                trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
                tar.extract(member, root, set_attrs=False, **trusted)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DiffInputError(f"{archive}: not a capture archive ({exc})") from None


def _record(path: str, scratch: str) -> BootRecord:
    """The record of one input: an archive is unpacked into `scratch` first."""
    if os.path.isdir(path):
        root = path
    elif os.path.isfile(path):
        root = scratch
        _unpack(path, root)
    else:
        raise DiffInputError(f"{path}: no such capture archive or host root")
    try:
        inventory = SysfsSource(os.path.join(root, "sys"), os.path.join(root, "proc"), scan_processes=False).read()
    except SourceError as exc:
        raise DiffInputError(f"{path}: {exc}") from None
    return BootRecord.of(inventory, None)


def cmd_diff(args: argparse.Namespace) -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="passthrough-diff-") as scratch:
            before = _record(args.before, os.path.join(scratch, "before"))
            after = _record(args.after, os.path.join(scratch, "after"))
    except DiffInputError as exc:
        print(f"passthrough-exporter diff: {visible(str(exc))}", file=sys.stderr)
        return USAGE
    changes = compare(before, after)
    if args.json:
        sys.stdout.write(jsonout.dumps([c.to_json() for c in changes]) + "\n")
    else:
        for change in changes:
            print(visible(change.line()))
    return 1 if changes else 0


def add_diff_command(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    diff = sub.add_parser(
        "diff", parents=[common], help="what changed between two captures or host roots",
        description="Compare two hosts as read: each a capture archive (`capture --output`) or a host root "
        "(a directory with sys/ and proc/). One line per change: devices replaced (ids, class or serial), "
        "gone or new, IOMMU groups changed or renumbered. Exit 0: nothing changed; 1: something did; "
        "2: usage error.",
    )
    diff.add_argument("before", metavar="BEFORE", help="capture archive or host root of before")
    diff.add_argument("after", metavar="AFTER", help="capture archive or host root of after")
    diff.add_argument("--json", action="store_true", help="print the changes as a JSON array")
    diff.set_defaults(func=cmd_diff)
