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
from .unpack import UnsafeMember, unpack

USAGE = 2


class DiffInputError(Exception):
    """An input that is neither a capture archive nor a host root."""


def _unpack(archive: str, dest: str) -> None:
    """A capture archive into `dest`, safely (`unpack`)."""
    try:
        unpack(archive, dest)
    except UnsafeMember as exc:
        raise DiffInputError(f"{archive}: {exc}") from None
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
