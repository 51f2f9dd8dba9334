"""`serve`'s refreshes in a child process, so that the server's process does nothing but serve.

Reading and judging 20,000 devices keeps CPython's interpreter lock for seconds. In the server's
process every scrape landing then waits for the lock at each switch (a p99 of 50 ms at 20k); in a
child, the refresh has a lock, and memory, of its own. The server keeps the bytes it serves (a
`Served`), never a snapshot, and a child that dies (a plugin's crash, the OOM killer) costs one
failed refresh, counted in passthrough_collect_errors_total and shown in passthrough_source_up; the
next refresh starts a new child.

The child is a fresh interpreter (`python -m passthrough_exporter.worker_process FD ARGS...`: not a fork
of a threaded server) given the command line `serve` got, so it loads the same plugins, options and
source. It answers each request with one refresh, over a socket pair: a small pickled header, and
two sealed memory files holding the large buffers. The server reads the first (the exposition, its
gzip, the findings, the page) with pread, a copy made without its interpreter lock, and maps the
second (every device's JSON object) read-only: a page of it costs the server memory only once a
client asks for device objects. Any error while talking to the child ends that child; a watchdog
bounds every exchange. The child ends when the server closes its end, or dies.
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
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection

from .metrics import MetricOptions
from .refresher import Built, Failed, RefreshLoop
from .served import Served
from .sources import SourceError

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # seconds for a new child to load its plugins and open its source


class _Watchdog:
    """Kills the child if one exchange with it takes longer than `timeout`: every read then ends.
    Never once the exchange is over, however late the timer's thread runs."""

    def __init__(self, proc: subprocess.Popen, timeout: float) -> None:
        self.fired = False
        self._done = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self._fire, (proc,))
        self._timer.daemon = True

    def _fire(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
        proc.kill()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


class WorkerRefresher(RefreshLoop):
    """Runs each refresh in the child process; the schedule and failure rules are RefreshLoop's."""

    def __init__(self, argv: Sequence[str], source_name: str, interval: float = 60.0,
                 options: MetricOptions | None = None) -> None:
        self.argv = list(argv)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._sock: socket.socket | None = None
        self._starting: socket.socket | None = None  # the socket of a child starting, until it is ready
        self._reload = False  # a reload was asked for: the next refresh starts a new child first
        # The child and its socket: replaced by the refresher thread, shut down by stop().
        self._state = threading.Lock()
        super().__init__(source_name, interval, options)
        # A refresh that takes longer is stuck (a hung libvirtd): the child is replaced, the refresh
        # counted as failed. Generous for a 20,000-device host (seconds), short of hiding for long.
        self.refresh_timeout = max(60.0, min(600.0, 3 * self.interval))

    def start_worker(self) -> None:
        """Start the child and wait until it has its source open; SourceError with its words if it cannot."""
        proc, sock, conn = self._spawn()
        with self._state:
            self._proc, self._sock, self._conn = proc, sock, conn

    def _spawn(self) -> tuple[subprocess.Popen, socket.socket, Connection]:
        """A new child, ready: its process, socket and message connection. SourceError with its words
        if it cannot start (a bad policy, a source it cannot open), with nothing of it left."""
        # OSError (out of descriptors or processes) is the caller's, with nothing left open.
        ours, theirs = socket.socketpair()
        try:
            with theirs:
                conn = Connection(os.dup(ours.fileno()))  # the messages; `ours` passes the files
                try:
                    # -P: the server's working directory is not put on the child's module path.
                    proc = subprocess.Popen(
                        [sys.executable, "-P", "-m", "passthrough_exporter.worker_process", str(theirs.fileno()),
                         *self.argv], stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
                except BaseException:
                    conn.close()
                    raise
        except BaseException:
            ours.close()
            raise
        with self._state:
            self._starting = ours
            if self._stop.is_set():  # stop() came first: the hello below ends at once
                ours.shutdown(socket.SHUT_RDWR)
        why = None
        watch = _Watchdog(proc, START_TIMEOUT)
        try:
            with watch:
                hello = conn.recv()
            if hello[0] != "ready":
                why = hello[1]
        except Exception as exc:  # noqa: BLE001 - whatever it was, this child is no good
            why = "the refresh worker did not start: " + _why(exc, proc, watch, START_TIMEOUT)
        finally:
            with self._state:
                self._starting = None
        if why is not None:
            _end(proc, ours, conn)
            raise SourceError(why)
        return proc, ours, conn

    def reload(self) -> None:
        """Start a new child at once (it reads the policy and the plugins' files again) and, once it
        is ready, refresh with it; a child that cannot start (a bad policy) leaves the old one serving."""
        self._reload = True
        self._wake.set()

    def _replace_worker(self) -> None:
        """The reload, on the refresher's thread: the only one that talks to the child."""
        try:
            proc, sock, conn = self._spawn()
        except (SourceError, OSError) as exc:
            if not self._stop.is_set():
                log.error("reload failed, refreshing as before: %s", exc)
            return
        with self._state:
            old = self._proc, self._sock, self._conn
            self._proc, self._sock, self._conn = proc, sock, conn
        _end(*old)
        log.info("reloaded: a new refresh worker read the policy and the plugins' options again")

    def _build(self, errors_total: Mapping[str, int]) -> Built | Failed:
        if self._reload:
            self._reload = False
            self._replace_worker()
        try:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    log.warning("the refresh worker had exited (%s) since the last refresh; starting another",
                                _exit_text(self._proc.returncode))
                self._stop_worker()
                self._proc = None  # told here: a child that cannot start is not taken for one that exited
                self.start_worker()
        except SourceError as exc:
            return Failed("source_error", str(exc))
        except OSError as exc:  # no descriptor or process left for it
            self._proc = None
            return Failed("refresh_error", f"cannot start the refresh worker: {exc}")
        proc, conn = self._proc, self._conn
        assert proc is not None and conn is not None
        watch = _Watchdog(proc, self.refresh_timeout)
        try:
            with watch:
                conn.send(("refresh", dict(errors_total)))
                answer = conn.recv()
                if answer[0] == "failed":
                    return Failed(answer[1], answer[2])
                _, errors, findings, header, sizes = answer
                buffers = self._map_buffers(sizes)
            return Built(Served.from_wire(header, buffers), errors, findings)
        except Exception as exc:  # noqa: BLE001 - died, hung, or out of step: never reused
            if self._stop.is_set():  # stop() shut the socket: it ends the child itself
                return Failed("refresh_error", "stopped")
            why = _why(exc, proc, watch, self.refresh_timeout)
            self._stop_worker()
            self._proc = None  # told here: the next refresh starts another without a second line
            return Failed("refresh_error", why)

    def _map_buffers(self, sizes: list[int]) -> list[bytes | memoryview]:
        """The buffers of one refresh, from the child's two sealed memory files. The first (the
        exposition, its gzip, the findings, the page) is read out with pread, which copies without
        the interpreter lock, and let go: a client still sending an old exposition holds bytes, not
        a mapping and its descriptor. The second, every device's JSON object, stays mapped
        read-only with the table: none of its pages costs the server memory until a client asks."""
        assert self._sock is not None
        _, fds, flags, _ = socket.recv_fds(self._sock, 1, 2)
        try:
            if flags & socket.MSG_CTRUNC or len(fds) != 2:
                # Our buffer has room for both: what truncates them is the server's descriptor limit.
                raise EOFError("the refresh worker's memory files did not arrive: Too many open files")
            _check_sealed(fds[0], sum(sizes[:-1]))
            _check_sealed(fds[1], sizes[-1])
            out: list[bytes | memoryview] = []
            offset = 0
            for size in sizes[:-1]:
                out.append(os.pread(fds[0], size, offset))
                if len(out[-1]) != size:
                    raise EOFError("the refresh worker's memory file is short")
                offset += size
            out.append(memoryview(mmap.mmap(fds[1], sizes[-1], prot=mmap.PROT_READ)) if sizes[-1] else b"")
        finally:
            for fd in fds:
                os.close(fd)
        return out

    def _stop_worker(self, grace: float = 5.0) -> None:
        with self._state:
            conn, sock, proc = self._conn, self._sock, self._proc
            self._conn = self._sock = None
        _end(proc, sock, conn, grace)

    def stop(self) -> None:
        """Stop refreshing and end the child, even in the middle of a refresh."""
        with self._state:
            self._stop.set()
            for sock in (self._sock, self._starting):
                if sock is not None:
                    try:  # wakes the refresher thread if it waits for a child; the child sees the end too
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        super().stop()
        thread = self._thread
        if thread is not None and thread.is_alive():  # still in an exchange: end it from the child's side
            proc = self._proc
            if proc is not None:
                proc.kill()
            thread.join(5)
        if thread is None or not thread.is_alive():  # never close what the thread may still read
            self._stop_worker(grace=1.0)  # then killed: what it was refreshing is not wanted any more


def _end(proc: subprocess.Popen | None, sock: socket.socket | None, conn: Connection | None,
         grace: float = 5.0) -> None:
    """End a child: close our end, which it leaves on between refreshes, and kill it after `grace`."""
    if conn is not None:
        conn.close()
    if sock is not None:
        sock.close()
    if proc is not None and proc.poll() is None:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _check_sealed(fd: int, size: int) -> None:
    """A memory file that holds `size` bytes and can no longer shrink (under a mapping, a read past
    its end would kill the server)."""
    if not fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
        raise EOFError("the refresh worker's memory file is not sealed")
    if os.fstat(fd).st_size < size:
        raise EOFError("the refresh worker's memory file is short")


def _why(exc: Exception, proc: subprocess.Popen, watch: _Watchdog, timeout: float) -> str:
    """What went wrong in an exchange with the child, in its own words where it has some."""
    if watch.fired:
        return f"the refresh worker did not finish within {timeout:g}s and was killed"
    if isinstance(exc, EOFError) and not str(exc):  # the child's end closed: it is exiting
        try:
            return f"the refresh worker exited ({_exit_text(proc.wait(2))})"
        except subprocess.TimeoutExpired:
            pass
    return f"the refresh worker's answer could not be read: {type(exc).__name__}: {exc}"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
