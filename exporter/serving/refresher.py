"""`serve`'s refreshes: one at a time, in the refresh worker, published to the server whole.

A refresh runs on start, every `interval`, and early when a scrape finds the last one older than
the interval. The `Refresher` asks its worker (refresh_worker.py, a child process) for one; the
answer is a `Rendered` record, "unchanged" (the host read as last time: the record in force
stays), or a failure. The server then serves the `Published` state: the last record, and the
status families the refresher writes itself (status.py), so a refresh that fails, hangs or kills
its worker still shows in passthrough_source_up and passthrough_collect_errors_total while the
previous devices are served. A worker that dies or does not answer within `refresh_timeout` is
ended and costs that one refresh; the next refresh starts another. SIGHUP (`reload`) replaces the
worker, which reads the policy and the plugins' files again.

Why a child process: reading and judging 20,000 devices holds CPython's interpreter lock for
seconds, and a plugin may crash or hang. In a process of its own the refresh takes neither the
server's lock nor the server with it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol, TypeVar

from .. import logs
from ..rendering.bodies import Bodies, gzip_append
from ..rendering.rendered import EMPTY, Buffer, Rendered, receive
from ..rendering.status import SOURCE_STATE_MARK, Status, render_status, source_state

log = logging.getLogger(__name__)
T = TypeVar("T")

START_TIMEOUT = 120.0  # seconds for a new worker to load its plugins and open its source


class WorkerError(Exception):
    """The worker could not start or answer: its own words where it has some. `kind` is what the
    refresh it cost counts as; `usage`: the command line was wrong, and the worker has said how
    already (`serve` exits with this code)."""

    def __init__(self, why: str, kind: str = "refresh_error", usage: int | None = None) -> None:
        super().__init__(why)
        self.kind = kind
        self.usage = usage


class WorkerLike(Protocol):
    """What the Refresher needs of a worker (`Worker`; the tests' in-process one too)."""

    source: str
    error_kinds: tuple[str, ...]
    proc: Any  # has poll() -> exit status or None

    def ready(self, timeout: float) -> None: ...
    def exchange(self, timeout: float, held: int) -> tuple: ...
    def interrupt(self) -> None: ...
    def end(self, grace: float = 5.0) -> None: ...


@dataclass(frozen=True, slots=True)
class Published:
    """What the server serves, replaced as a whole at each refresh's end."""

    rendered: Rendered
    status: Status
    ready: bool  # False until the first refresh succeeded
    status_text: bytes = b""  # the status families: the exposition's tail
    page: bytes = b""  # the host page, saying whether the source is up
    # The bodies made from `rendered` on request (device lists by filter, gzipped forms); dropped with it.
    bodies: Bodies = field(default_factory=Bodies, compare=False, repr=False)

    @classmethod
    def of(cls, rendered: Rendered, status: Status, ready: bool, bodies: Bodies | None = None) -> Published:
        """`bodies`: those made from `rendered` so far, when it is served on (a new status alone)."""
        page = bytes(rendered.page).replace(SOURCE_STATE_MARK, source_state(status), 1)
        return cls(rendered, status, ready, render_status(status), page, bodies or Bodies())

    def metrics(self, extra: bytes, gzip: bool) -> list[Buffer]:
        """The exposition as parts to send: the host's families, the status families, then `extra`
        (the server's process metrics, made per scrape). Gzipped, only the tail is compressed."""
        tail = self.status_text + extra
        if gzip:
            return gzip_append(self.rendered.metrics_gzip, tail)
        return [self.rendered.metrics, tail]


class _Watchdog:
    """Kills the worker if one exchange with it takes longer than `timeout`: every read then ends.
    Never once the exchange is over, however late the timer's thread runs."""

    def __init__(self, proc: subprocess.Popen, timeout: float) -> None:
        self.fired = False
        self._done = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self._fire, (proc,))
        self._timer.daemon = True
        self._timer.start()

    def _fire(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
        proc.kill()

    def done(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


class Worker:
    """One refresh worker process and the socket to it; `exchange` asks it for one refresh."""

    def __init__(self, argv: Sequence[str]) -> None:
        """Start the worker process (`ready` waits for it); OSError when no process or descriptor
        is left for it."""
        ours, theirs = socket.socketpair()
        try:
            with theirs:
                self.conn = Connection(os.dup(ours.fileno()))  # the messages; `sock` reads the records' buffers
                try:
                    # -P: the server's working directory is not put on the worker's module path.
                    self.proc = subprocess.Popen(
                        [sys.executable, "-P", "-m", "passthrough_exporter.commands.refresh_worker", str(theirs.fileno()),
                         *argv], stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
                except BaseException:
                    self.conn.close()
                    raise
        except BaseException:
            ours.close()
            raise
        self.sock = ours
        self.source, self.error_kinds = "", ()

    def ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the worker has its source open: WorkerError with its words if it cannot, with
        nothing of it left."""
        hello = self._guarded(self.conn.recv, timeout, "start")
        if hello[0] == "usage":
            self.end()
            raise WorkerError("the command line was not accepted", usage=hello[1])
        if hello[0] != "ready":
            self.end()
            raise WorkerError(hello[2], kind=hello[1])
        self.source, self.error_kinds = hello[1], tuple(hello[2])

    def exchange(self, timeout: float, held: int) -> tuple:
        """One refresh: ("built", Rendered) | ("unchanged",) | ("failed", kind, why); `held` is the
        token of the record the server serves ("unchanged" refers to it). WorkerError when the
        worker died, hung or answered out of step: it is then ended, never reused."""
        def talk() -> tuple:
            self.conn.send(("refresh", held))
            answer = self.conn.recv()
            if answer[0] == "built":
                return "built", receive(self.sock, answer[1], answer[2])
            return answer
        return self._guarded(talk, timeout, "refresh")

    def _guarded(self, work: Callable[[], T], timeout: float, what: str) -> T:
        """`work()`, with the worker killed if it takes longer than `timeout` (every read then ends).
        Any error ends the worker: it is never reused."""
        watch = _Watchdog(self.proc, timeout)
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - died, hung, or out of step: whatever it was
            watch.done()
            self.end(grace=2.0)
            if watch.fired:
                raise WorkerError(f"the refresh worker did not finish its {what} within {timeout:g}s and was "
                                  "killed") from None
            if isinstance(exc, EOFError) and not str(exc):  # its end closed: it exited
                raise WorkerError(f"the refresh worker exited ({exit_text(self.proc.returncode)})") from None
            raise WorkerError(f"the refresh worker's answer could not be read: {type(exc).__name__}: {exc}") from None
        finally:
            watch.done()

    def interrupt(self) -> None:
        """Wake a thread waiting on this worker (stop): its reads end, and the worker sees the end too."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def end(self, grace: float = 5.0) -> None:
        """Close our end, which the worker waits on between refreshes, and kill it after `grace`."""
        self.conn.close()
        self.sock.close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Refresher:
    """The schedule, the failure rule and the published state; each refresh runs in a `Worker`."""

    def __init__(self, argv: Sequence[str], interval: float = 60.0,
                 worker: Callable[[list[str]], WorkerLike] = Worker) -> None:
        """`argv`: serve's command line, for each worker; `worker` makes one (tests pass their own)."""
        self.argv = list(argv)
        self.source_name = ""  # the worker's answer: what its source calls itself
        self.interval = interval
        # A refresh that takes longer is stuck (a hung libvirtd): the worker is replaced, the refresh
        # counted as failed. Generous for a 20,000-device host (seconds), short of hiding for long.
        self.refresh_timeout = max(60.0, min(600.0, 3 * interval))
        self._new_worker = worker
        self._worker: WorkerLike | None = None
        self._starting: WorkerLike | None = None  # a worker waited for: stop() ends it too
        self._errors_total: Counter[str] = Counter()
        self._kinds: dict[str, int] = {}  # every kind the worker counts, each at 0: the series exist before an error
        self._failing = False  # the last refresh failed: the next success is worth a line
        self._reload = False  # the next refresh starts a new worker first
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_attempt = time.monotonic()
        self._published = Published.of(EMPTY, Status("", False, 0.0, 0.0, {}), ready=False)

    @property
    def errors_total(self) -> dict[str, int]:
        return dict(self._errors_total)

    def current(self) -> Published:
        """The last published state; triggers a background refresh if it is stale."""
        # Measured from the last attempt, not the last success: a source that is down is retried
        # once per interval, not once per scrape.
        if time.monotonic() - self._last_attempt > self.interval:
            self._wake.set()
        return self._published

    def start_worker(self) -> None:
        """Start the first worker now: WorkerError with its words if it cannot (`serve` then exits)."""
        self._worker = self._started_worker()
        self.source_name = self._worker.source
        self._kinds = dict.fromkeys(self._worker.error_kinds, 0)
        self._published = Published.of(EMPTY, Status(self.source_name, False, 0.0, 0.0, self._totals()), ready=False)

    def reload(self) -> None:
        """Start a new worker at once (it reads the policy and the plugins' files again) and refresh
        with it; a worker that cannot start (a bad policy) leaves the old one refreshing."""
        self._reload = True
        self._wake.set()

    def refresh(self) -> bool:
        """Run one refresh now unless one is already running; True when this call did the work."""
        if not self._refresh_lock.acquire(blocking=False):
            return False
        try:
            self._refresh()
        finally:
            self._refresh_lock.release()
        return True

    def _started_worker(self) -> WorkerLike:
        """A new worker, ready; WorkerError or OSError if it cannot start. Reachable by stop()
        while it starts, so that stopping never waits for a slow start nor leaves it behind."""
        worker = self._new_worker(self.argv)
        self._starting = worker
        try:
            if self._stop.is_set():
                worker.interrupt()
            worker.ready(START_TIMEOUT)
        finally:
            self._starting = None
        return worker

    def _refresh(self) -> None:
        self._last_attempt = started = time.monotonic()
        logs.REPEATS.next_refresh()
        previous = self._published
        try:
            answer = self._exchange(previous.rendered.token)
        except WorkerError as exc:
            answer = ("failed", exc.kind, str(exc))
        if self._stop.is_set():  # stopped meanwhile (the worker's end was closed): nothing to tell
            return
        if answer[0] == "failed":
            self._fail(answer[1], answer[2])
            return
        rendered = answer[1] if answer[0] == "built" else previous.rendered
        totals = self._errors_total + Counter(rendered.errors)
        status = Status(self.source_name, True, time.monotonic() - started, time.time(), {**self._kinds, **totals})
        # An unchanged host keeps the bodies made from its record too (device lists, gzipped forms).
        published = Published.of(rendered, status, True, None if answer[0] == "built" else previous.bodies)
        self._published, self._errors_total = published, totals
        # A refresh that finds what the last one found is not news: at debug, or a host refreshed
        # every minute writes 1,440 lines a day saying nothing. The first, and any change, are.
        changed = not previous.ready or (answer[0] == "built" and (
            len(rendered.index) != len(previous.rendered.index) or rendered.findings != previous.rendered.findings))
        log.log(logging.INFO if changed else logging.DEBUG,
                "refreshed %d devices from %s in %.3fs (%d findings, %d bad inputs skipped%s)", len(rendered.index),
                self.source_name, status.duration, rendered.findings_count, sum(rendered.errors.values()),
                "" if answer[0] == "built" else "; unchanged")
        if self._failing:
            log.info("refresh from %s works again", self.source_name)
            self._failing = False

    def _exchange(self, held: int) -> tuple:
        if self._reload:
            self._reload = False
            try:
                fresh = self._started_worker()
            except (WorkerError, OSError) as exc:
                if not self._stop.is_set():
                    log.error("reload failed, refreshing as before: %s", exc)
            else:
                old, self._worker = self._worker, fresh
                if old is not None:
                    old.end()
                log.info("reloaded: a new refresh worker read the policy and the plugins' options again")
        if self._worker is None:
            try:
                self._worker = self._started_worker()
            except WorkerError as exc:
                return "failed", exc.kind, str(exc)
            except OSError as exc:  # no descriptor or process left for it
                return "failed", "refresh_error", f"cannot start the refresh worker: {exc}"
        elif self._worker.proc.poll() is not None:
            log.warning("the refresh worker had exited (%s) since the last refresh; starting another",
                        exit_text(self._worker.proc.returncode))
            self._worker.end()
            self._worker = None
            return self._exchange(held)
        try:
            return self._worker.exchange(self.refresh_timeout, held)
        except WorkerError:
            self._worker = None  # ended by exchange: the next refresh starts another
            raise

    def _totals(self) -> dict[str, int]:
        return {**self._kinds, **self._errors_total}

    def _fail(self, kind: str, why: str) -> None:
        """A failed refresh: counted, the source marked down, the previous devices still served."""
        self._errors_total[kind] += 1
        self._failing = True
        log.error("refresh from %s failed, keeping the previous snapshot: %s", self.source_name, why)
        previous = self._published
        status = Status(self.source_name, False, previous.status.duration, previous.status.finished_at,
                        self._totals())
        # The page changes with the status: the bodies cache starts afresh (the device lists are made again once).
        self._published = Published.of(previous.rendered, status, previous.ready)

    # --- background thread ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="refresher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # a bug must not end the thread: the next interval tries again
                log.exception("refresh failed unexpectedly; keeping the previous snapshot")
                self._fail("refresh_error", f"{type(exc).__name__}: {exc}")
            self._wake.wait(self.interval)
            self._wake.clear()

    def stop(self) -> None:
        """Stop refreshing and end the worker, even in the middle of a refresh."""
        self._stop.set()
        self._wake.set()
        worker, starting = self._worker, self._starting
        if starting is not None:  # a worker starting (a reload, a replacement): ended, not waited for
            starting.interrupt()
            starting.proc.kill()
        if worker is not None:
            worker.interrupt()
        thread = self._thread
        if thread is not None:
            thread.join(5)
            if thread.is_alive() and worker is not None:  # still in an exchange: end it from the worker's side
                worker.proc.kill()
                thread.join(5)
        if worker is not None and (thread is None or not thread.is_alive()):  # never close what it still reads
            worker.end(grace=1.0)


def exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
