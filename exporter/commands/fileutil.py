"""Writing a file so that a reader sees the old content or the new, never a part of it.

Run as root into a directory others can reach, every step by path is a way in: a temp file swapped
for a link between a chmod by path and the rename once made /etc/shadow world-readable. So the
directory is opened once and checked (only its owner, root or us, may change it, unless it is
sticky like /tmp); the temp file is created in it exclusively, never through a link, and given its
mode and synced through the descriptor; the rename is relative to the directory's descriptor too,
and goes only over nothing or a regular file (never a device, a FIFO, a directory or a link).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from typing import BinaryIO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class RefusedPath(OSError):
    """A target or a directory that is not written to; `strerror` says why, in one line."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.strerror = why


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_directory(st: os.stat_result, directory: str) -> None:
    """Refuse a directory in which someone else could swap our files (RefusedPath)."""
    mine = st.st_uid in (0, os.geteuid())
    if not mine:
        raise RefusedPath(f"{directory} belongs to uid {st.st_uid}, who could swap files in it; "
                          "write into a directory of root's or your own")
    # In a sticky directory others may create names but not rename or remove ours (like /tmp).
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise RefusedPath(f"{directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}, "
                          "not sticky), who could swap files in it; write into a directory only its owner can change")


def check_target(st: os.stat_result | None, *, overwrite: bool) -> None:
    """Refuse to replace anything but a regular file, and a regular file unless `overwrite`."""
    if st is None:
        return
    if not stat.S_ISREG(st.st_mode):
        raise RefusedPath(f"it is {_kind(st.st_mode)}, not replaced; give a regular file's name")
    if not overwrite:
        raise FileExistsError("exists")


def _lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_directory(directory: str) -> int:
    """A descriptor of `directory` (resolved), opened one component at a time without following a
    link, each component checked like the directory itself: a parent another user owns could be
    renamed and replaced by a link to a root-only directory, whatever the last one's owner."""
    real = os.path.realpath(directory)
    fd = os.open("/", _DIR_FLAGS)
    try:
        check_directory(os.fstat(fd), "/")
        walked = ""
        for part in [p for p in real.split("/") if p]:
            walked += "/" + part
            try:
                nxt = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:  # ELOOP/ENOTDIR: it became a link or a file since it was resolved
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise RefusedPath(f"{walked} changed while it was opened ({exc.strerror})") from None
                raise
            os.close(fd)
            fd = nxt
            check_directory(os.fstat(fd), walked)
        return fd
    except BaseException:
        os.close(fd)
        raise


def preflight(path: str, *, overwrite: bool = True) -> None:
    """The checks `atomic_file` makes, made early: a command refuses before its slow part."""
    directory, name = _split(path)
    dir_fd = open_directory(directory)
    try:
        check_target(_lstat_at(name, dir_fd), overwrite=overwrite)
    finally:
        os.close(dir_fd)


def _split(path: str) -> tuple[str, str]:
    directory, name = os.path.split(os.path.abspath(path))
    if path.endswith("/") or name in ("", ".", ".."):
        raise RefusedPath("it is a directory, not replaced; give a regular file's name")
    return directory, name


@contextlib.contextmanager
def atomic_file(path: str, *, overwrite: bool = True, mode: int | None = 0o644) -> Iterator[BinaryIO]:
    """A temp file beside `path`; on success fsynced and renamed onto `path`, else removed.

    Raises RefusedPath for a directory others can change, or a target that is not a regular file.
    `overwrite=False` refuses an existing `path` (FileExistsError), even one that appears while
    writing. `mode` None gives the file the mode a plain create would (0666 minus the umask).
    """
    directory, name = _split(path)
    dir_fd = open_directory(directory)
    try:
        check_target(_lstat_at(name, dir_fd), overwrite=overwrite)
        fd, tmp = _create_temp(name, dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                if mode is None:
                    umask = os.umask(0)
                    os.umask(umask)
                    mode = 0o666 & ~umask
                os.fchmod(f.fileno(), mode)  # the descriptor: a swapped name cannot redirect it
                os.fsync(f.fileno())
                ours = os.fstat(f.fileno())
            # Both may have changed since the checks (by the directory's owner or root only: see above).
            now = _lstat_at(tmp, dir_fd)
            if now is None or (now.st_dev, now.st_ino) != (ours.st_dev, ours.st_ino):
                raise RefusedPath(f"its temporary file {tmp} was replaced while writing; nothing published")
            check_target(_lstat_at(name, dir_fd), overwrite=overwrite)
            _publish(tmp, name, dir_fd, overwrite)
            tmp = ""
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            if tmp:  # whatever is at our temp name now was not published: it goes
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _create_temp(name: str, dir_fd: int) -> tuple[int, str]:
    """A new file `.<name>.<random>.tmp`, mode 0600 until written; never an existing name or a link."""
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o600, dir_fd=dir_fd), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {name}")


def _publish(tmp: str, name: str, dir_fd: int, overwrite: bool) -> None:
    if overwrite:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:
        # Fails if `name` exists, even if it appeared since anyone checked.
        os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: check, then rename
        if _lstat_at(name, dir_fd) is not None:
            raise FileExistsError(name) from None
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    os.unlink(tmp, dir_fd=dir_fd)


def stdout_binary() -> BinaryIO:
    """Standard output for bytes (`-` as a path); OSError when the process was started without it."""
    if sys.stdout is None:  # fd 1 closed at start: Python leaves sys.stdout None
        raise OSError(errno.EBADF, "standard output is closed")
    return sys.stdout.buffer
