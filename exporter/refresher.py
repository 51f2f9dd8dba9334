"""Keeps a judged snapshot fresh in the background, so a scrape never waits on the source.

One refresh at a time: on start, every `interval`, and early when a scrape finds the snapshot
older than the interval. A failed refresh keeps the previous snapshot and marks the source down.
Each published snapshot carries its exposition, rendered once (and gzipped once), so serving a
scrape only copies bytes, and a cache of its other response bodies, filled on first request.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import logs
from .bodies import Bodies
from .gcpause import gc_paused
from .inspector import Inspector
from .metrics import MetricOptions, render
from .snapshot import Snapshot
from .sources import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Published:
    """What the server hands out: a snapshot, its exposition and its body cache, replaced as a whole."""

    snapshot: Snapshot
    metrics: bytes
    metrics_gzip: bytes
    ready: bool  # False until the first refresh succeeded
    # The JSON bodies of this snapshot, rendered on first request; dropped with the snapshot.
    bodies: Bodies = field(default_factory=Bodies, compare=False, repr=False)




class Refresher:
    def __init__(
        self,
        source: Source,
        inspector: Inspector,
        interval: float = 60.0,
        options: MetricOptions | None = None,
    ) -> None:
        self.source = source
        self.inspector = inspector
        self.interval = interval
        self.options = options or MetricOptions()
        self._errors_total: Counter[str] = Counter()
        self._failing = False  # the last refresh failed: the next success is worth a line
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_attempt = time.monotonic()
        empty = Snapshot.empty(source.name)
        self._published = self._publish(empty, ready=False)

    def current(self) -> Published:
        """The last complete snapshot; triggers a background refresh if it is stale."""
        # Measured from the last attempt, not the last success: a source that is down is retried
        # once per interval, not once per scrape.
        if time.monotonic() - self._last_attempt > self.interval:
            self._wake.set()
        return self._published

    def refresh(self) -> bool:
        """Run one refresh now unless one is already running; True when this call did the work."""
        if not self._refresh_lock.acquire(blocking=False):
            return False
        try:
            with gc_paused():
                self._refresh()
        finally:
            self._refresh_lock.release()
        return True

    def _refresh(self) -> None:
        started = self._last_attempt = time.monotonic()
        logs.REPEATS.next_refresh()
        previous = self._published
        try:
            inventory = self.source.read()
        except Exception as exc:  # the source could not be read: keep the old snapshot
            self._fail("source_error", previous, str(exc))
            return
        try:
            snap = self.inspector.judge(inventory, source=self.source.name, started=started)
            self._count(snap.errors)
            snap = dataclasses.replace(snap, errors_total=dict(self._errors_total))
            published = self._publish(snap, ready=True)
        except Exception as exc:  # a bug, or input nobody foresaw: never a silently stale snapshot
            log.exception("refresh failed unexpectedly")
            self._fail("refresh_error", previous, f"{type(exc).__name__}: {exc}")
            return
        self._published = published
        if self._failing:
            log.info("refresh from %s works again", self.source.name)
            self._failing = False
        log.info("refreshed %d devices from %s in %.3fs (%d findings, %d bad inputs skipped)",
                 len(inventory), self.source.name, snap.duration, len(snap.findings), sum(snap.errors.values()))

    def _fail(self, kind: str, previous: Published, why: str) -> None:
        """A failed refresh: counted, the source marked down, the previous devices still served."""
        self._count({kind: 1})
        self._failing = True
        log.error("refresh from %s failed, keeping the previous snapshot: %s", self.source.name, why)
        down = dataclasses.replace(previous.snapshot, source_up=False, errors_total=dict(self._errors_total))
        try:
            self._published = self._publish(down, ready=previous.ready)
        except Exception:  # cannot happen for a snapshot that rendered before; still, never stay "up"
            log.exception("cannot render the previous snapshot; serving none")
            empty = dataclasses.replace(Snapshot.empty(self.source.name), errors_total=dict(self._errors_total))
            self._published = self._publish(empty, ready=previous.ready)

    def _count(self, errors: Mapping[str, int]) -> None:
        self._errors_total.update(errors)

    def _publish(self, snap: Snapshot, ready: bool) -> Published:
        text = render(snap, self.options)
        return Published(snap, text, gzip.compress(text, compresslevel=6, mtime=0), ready)

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
                self._fail("refresh_error", self._published, f"{type(exc).__name__}: {exc}")
            self._wake.wait(self.interval)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
