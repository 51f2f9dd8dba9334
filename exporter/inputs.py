"""Files the operator names on the command line (the policy file, pci.ids): read bounded, before
anything parses them.

Opened non-blocking, so a FIFO (or a device node) costs a one-line error, never a hang; refused
unless a regular file, and refused above a size cap, so `/dev/zero` or a runaway file is not read
into memory. What is wrong is one line for the operator (ConfigError), naming the file.
"""

from __future__ import annotations

import os
import stat

from .settings import ConfigError


def read_operator_file(path: str, limit: int, what: str) -> bytes:
    """The whole of the regular file `path`, at most `limit` bytes; ConfigError otherwise.
    `what` names the file in the message ("policy file")."""
    try:
        _regular(os.stat(path), path, what)  # before opening: opening a device node can do things
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)  # and of what was opened: the path may have been swapped meanwhile
        _regular(st, path, what)
        if st.st_size > limit:
            raise ConfigError(f"{path}: {what} of {st.st_size} bytes; at most {limit} are read")
        chunks: list[bytes] = []
        size = 0
        while True:  # one byte past the cap tells a file that grew since fstat
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ConfigError(f"{path}: {what} of more than {limit} bytes; at most {limit} are read")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _regular(st: os.stat_result, path: str, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: cannot read {what}: not a regular file")
