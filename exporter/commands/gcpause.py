"""Building a snapshot without the cyclic garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a snapshot's million objects are built.

    Every few hundred allocations CPython would otherwise trace young objects, and now and then all
    of them, the previous snapshot included: a third of a refresh at 20k devices (a tenth of
    `devices --json`), and a stall for every scrape that lands in a full collection. A snapshot
    holds no reference cycles, so reference counting frees it; the collector resumes afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
