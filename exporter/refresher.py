"""Keeps what the server hands out fresh in the background, so a scrape never waits on the source.

One refresh at a time: on start, every `interval`, and early when a scrape finds the snapshot
older than the interval. A refresh reads the source, judges it and renders every body once
(`renderer.render_served`); the server then only copies bytes. A failed refresh keeps the
previous bodies and marks the source down. `Refresher` runs the refresh in this process;
`worker.WorkerRefresher` (what `serve` uses) in a child process, with the same outcome.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from . import logs
from .bodies import Bodies
from .gcpause import gc_paused
from .inspector import Inspector
from .metrics import MetricOptions
from .renderer import render_served
from .served import Served
from .snapshot import Snapshot
from .sources import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Published:
    """What the server hands out, replaced as a whole: one refresh's bodies and their cache."""

    served: Served
    ready: bool  # False until the first refresh succeeded
    # The bodies made from `served` on request (device lists by filter, gzipped forms); dropped with it.
    bodies: Bodies = field(default_factory=Bodies, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Built:
    served: Served
    errors: Mapping[str, int]  # bad inputs skipped in this refresh, by kind
    findings: int = 0  # how many findings it judged


@dataclass(frozen=True, slots=True)
class Failed:
    kind: str  # source_error | refresh_error
    why: str


def build_once(source: Source, inspector: Inspector, options: MetricOptions, errors_total: Mapping[str, int],
               started: float | None = None) -> Built | Failed:
    """One refresh: read, judge, render. `errors_total` are the counts before it; the exposition
    shows them plus this refresh's. Never raises: a failure is an answer."""
    started = time.monotonic() if started is None else started
    try:
        inventory = source.read()
    except Exception as exc:  # the source could not be read: the caller keeps the old bodies
        return Failed("source_error", str(exc))
    try:
        snap = inspector.judge(inventory, source=source.name, started=started)
        totals = Counter(errors_total)
        totals.update(snap.errors)
        served = render_served(replace(snap, errors_total=dict(totals)), options)
    except Exception as exc:  # a bug, or input nobody foresaw: never a silently stale snapshot
        log.exception("refresh failed unexpectedly")
        return Failed("refresh_error", f"{type(exc).__name__}: {exc}")
    return Built(served, dict(snap.errors), len(snap.findings))


class RefreshLoop:
    """The schedule, the failure rule and the published bodies; `_build` runs one refresh."""

    def __init__(self, source_name: str, interval: float = 60.0, options: MetricOptions | None = None) -> None:
        self.source_name = source_name
        self.interval = interval
        self.options = options or MetricOptions()
        self._errors_total: Counter[str] = Counter()
        self._failing = False  # the last refresh failed: the next success is worth a line
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_attempt = time.monotonic()
        self._published = Published(render_served(Snapshot.empty(source_name), self.options), ready=False)

    def _build(self, errors_total: Mapping[str, int]) -> Built | Failed:
        raise NotImplementedError

    def current(self) -> Published:
        """The last complete bodies; triggers a background refresh if they are stale."""
        # Measured from the last attempt, not the last success: a source that is down is retried
        # once per interval, not once per scrape.
        if time.monotonic() - self._last_attempt > self.interval:
            self._wake.set()
        return self._published

    @property
    def errors_total(self) -> Mapping[str, int]:
        return dict(self._errors_total)

    def refresh(self) -> bool:
        """Run one refresh now unless one is already running; True when this call did the work."""
        if not self._refresh_lock.acquire(blocking=False):
            return False
        try:
            self._refresh()
        finally:
            self._refresh_lock.release()
        return True

    def _refresh(self) -> None:
        self._last_attempt = time.monotonic()
        logs.REPEATS.next_refresh()
        outcome = self._build(dict(self._errors_total))
        if self._stop.is_set():  # stopped meanwhile (the worker's end was closed): nothing to tell
            return
        if isinstance(outcome, Failed):
            self._fail(outcome.kind, outcome.why)
            return
        self._errors_total.update(outcome.errors)
        previous, served = self._published, outcome.served
        self._published = Published(served, ready=True)
        # A refresh that finds what the last one found is not news: at debug, or a host refreshed
        # every minute writes 1,440 lines a day saying nothing. The first, and any change in the
        # devices or the findings, are.
        changed = not previous.ready or served.devices != previous.served.devices \
            or served.findings != previous.served.findings
        log.log(logging.INFO if changed else logging.DEBUG,
                "refreshed %d devices from %s in %.3fs (%d findings, %d bad inputs skipped)", served.devices,
                self.source_name, served.status.duration, outcome.findings, sum(outcome.errors.values()))
        if self._failing:
            log.info("refresh from %s works again", self.source_name)
            self._failing = False

    def _fail(self, kind: str, why: str) -> None:
        """A failed refresh: counted, the source marked down, the previous devices still served."""
        self._errors_total[kind] += 1
        self._failing = True
        log.error("refresh from %s failed, keeping the previous snapshot: %s", self.source_name, why)
        previous = self._published
        status = replace(previous.served.status, source_up=False, errors_total=dict(self._errors_total))
        self._published = Published(previous.served.with_status(status), ready=previous.ready)

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
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class Refresher(RefreshLoop):
    """Refreshes in this process (the one-process form: tests, and programs embedding the exporter)."""

    def __init__(self, source: Source, inspector: Inspector, interval: float = 60.0,
                 options: MetricOptions | None = None) -> None:
        self.source = source
        self.inspector = inspector
        super().__init__(source.name, interval, options)

    def _build(self, errors_total: Mapping[str, int]) -> Built | Failed:
        with gc_paused():
            return build_once(self.source, self.inspector, self.options, errors_total, self._last_attempt)
