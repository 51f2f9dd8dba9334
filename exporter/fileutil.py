"""Writing a file so that a reader sees the old content or the new, never a part of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str, *, overwrite: bool = True, mode: int | None = 0o644) -> Iterator[BinaryIO]:
    """A temp file beside `path`; on success fsynced and renamed onto `path`, else removed.

    `overwrite=False` refuses an existing `path` (FileExistsError), even one that appears while
    writing. `mode` None gives the file the mode a plain create would (0666 minus the umask).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)  # mkstemp makes it 0600
        _publish(tmp, path, overwrite)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _publish(tmp: str, path: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if `path` exists, even if it appeared since anyone checked
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: check, then rename
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
