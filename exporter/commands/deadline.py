"""A one-shot command's deadline (`--timeout`): it ends in time, whatever a source or plugin does.

A cron job or a systemd timer runs `textfile` or `check` again and again: one that hangs on a
libvirt socket that never answers, or in a plugin's endless loop, would pile up and leave the
metrics stale without a word. So a timer thread ends the process when the time is up.

A thread and `os._exit`, not SIGALRM raising in the main thread: Python runs a signal handler
only between bytecodes of the main thread, so a call blocked in C (libvirt waiting on its socket)
would never see it, and an exception can be caught by the very plugin that hangs. `os._exit` ends
the process whatever its threads are doing, with no clean-up that could block in turn (a temporary
file being written may be left behind). The message is written straight to the descriptor:
`sys.stderr`'s lock may be held by the stuck thread.
"""

from __future__ import annotations

import os
import threading

DEFAULT = 120.0  # seconds: as long as `serve` gives its refresh worker to start


class Deadline:
    """Ends the process with `code` and a one-line `message` unless cancelled within `seconds`."""

    def __init__(self, seconds: float, code: int, message: str) -> None:
        self._line = (message.rstrip("\n") + "\n").encode("utf-8", "backslashreplace")
        self._code = code
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True  # never what keeps the process alive

    def _expire(self) -> None:
        # Written from a thread of its own: a full pipe nobody reads must not keep us from ending.
        writer = threading.Thread(target=_write_stderr, args=(self._line,), daemon=True)
        writer.start()
        writer.join(1.0)
        os._exit(self._code)

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _write_stderr(data: bytes) -> None:
    try:
        os.write(2, data)
    except OSError:  # stderr closed: the exit code alone tells
        pass
