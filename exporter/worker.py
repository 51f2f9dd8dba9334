"""`serve`'s refreshes in a child process, so that the server's process does nothing but serve.

Reading and judging 20,000 devices keeps CPython's interpreter lock for seconds. In the server's
process every scrape landing then waits for the lock at each switch (a p99 of 50 ms at 20k); in a
child, the refresh has a lock, and memory, of its own. The server keeps the bytes it serves (a
`Served`), never a snapshot, and a child that dies (a plugin's crash, the OOM killer) costs one
failed refresh, counted in passthrough_collect_errors_total and shown in passthrough_source_up; the
next refresh starts a new child.

The child is a fresh interpreter (`python -m passthrough_exporter.worker_process FD ARGS...`: not a fork
of a threaded server) given the command line `serve` got, so it loads the same plugins, options and
source. It answers each request with one refresh, over a socket pair: a small pickled header, and a
sealed memory file holding the large buffers (the exposition, the page, the device objects), which
the server maps read-only: nothing is copied through the socket or under the server's interpreter
lock, and a page of it costs the server memory only once a client asks for it. The child ends
when the server closes its end, or dies.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection

from .metrics import MetricOptions
from .refresher import Built, Failed, RefreshLoop
from .served import Served
from .sources import SourceError

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # seconds for a new child to load its plugins and open its source
REFRESH_TIMEOUT = 600.0  # a refresh that takes longer is stuck (a hung libvirtd): the child is replaced


class WorkerRefresher(RefreshLoop):
    """Runs each refresh in the child process; the schedule and failure rules are RefreshLoop's."""

    def __init__(self, argv: Sequence[str], source_name: str, interval: float = 60.0,
                 options: MetricOptions | None = None) -> None:
        self.argv = list(argv)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._sock: socket.socket | None = None
        super().__init__(source_name, interval, options)

    def start_worker(self) -> None:
        """Start the child and wait until it has its source open; SourceError with its words if it cannot."""
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "passthrough_exporter.worker_process", str(theirs.fileno()), *self.argv],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        self._sock = ours  # receives the buffers' descriptor
        self._conn = Connection(os.dup(ours.fileno()))  # the messages
        try:
            hello = self._receive(START_TIMEOUT, "start")
        except (OSError, EOFError, TimeoutError) as exc:
            self._stop_worker()
            raise SourceError(f"the refresh worker did not start: {str(exc) or _exit_text(self._proc.returncode)}"
                              ) from None
        if hello[0] != "ready":
            self._stop_worker()
            raise SourceError(hello[1])

    def _receive(self, timeout: float, what: str) -> tuple:
        conn = self._conn
        assert conn is not None
        if not conn.poll(timeout):
            raise TimeoutError(f"the refresh worker did not {what} within {timeout:g}s")
        return conn.recv()

    def _build(self, errors_total: Mapping[str, int]) -> Built | Failed:
        try:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    log.warning("the refresh worker had exited (%s) since the last refresh; starting another",
                                _exit_text(self._proc.returncode))
                self._stop_worker()
                self.start_worker()
            conn = self._conn
            assert conn is not None
            conn.send(("refresh", dict(errors_total)))
            answer = self._receive(REFRESH_TIMEOUT, "finish a refresh")
            if answer[0] == "failed":
                return Failed(answer[1], answer[2])
            _, errors, header, sizes = answer
            return Built(Served.from_wire(header, self._map_buffers(sizes)), errors)
        except SourceError as exc:
            return Failed("source_error", str(exc))
        except (OSError, EOFError, TimeoutError) as exc:  # the child died or hangs: a new one next time
            if self._stop.is_set():  # stop() closed the socket: it ends the child itself
                return Failed("refresh_error", "stopped")
            self._stop_worker()
            code = self._proc.returncode if self._proc is not None else None
            self._proc = None  # told here: the next refresh starts another without a second line
            why = str(exc) if isinstance(exc, TimeoutError) else f"the refresh worker exited ({_exit_text(code)})"
            return Failed("refresh_error", why)

    def _map_buffers(self, sizes: list[int]) -> list[memoryview]:
        """The buffers of one refresh, mapped read-only from the child's memory file: nothing is
        copied, and no page costs the server memory until a client asks for it."""
        assert self._sock is not None
        _, fds, _, _ = socket.recv_fds(self._sock, 1, 1)
        if len(fds) != 1:
            raise EOFError("the refresh worker sent no buffers")
        try:
            total = sum(sizes)
            # Sealed, so it cannot shrink under the mapping (a read past its end would kill the server).
            if not fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
                raise EOFError("the refresh worker's buffers are not sealed")
            if os.fstat(fds[0]).st_size < total:
                raise EOFError("the refresh worker's buffers are short")
            view = memoryview(mmap.mmap(fds[0], total, prot=mmap.PROT_READ) if total else b"")
        finally:
            os.close(fds[0])
        out, start = [], 0
        for size in sizes:
            out.append(view[start:start + size])
            start += size
        return out

    def _stop_worker(self, grace: float = 5.0) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout=grace)  # it leaves when its end of the socket closes, between refreshes
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Stop refreshing and end the child, even in the middle of a refresh."""
        self._stop.set()
        if self._sock is not None:
            try:  # wakes the refresher thread if it waits for the child; the child sees the end too
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().stop()
        self._stop_worker(grace=1.0)  # then killed: what it was refreshing is not wanted any more


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
