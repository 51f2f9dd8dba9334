"""How the refreshes are going: the status families, which close every exposition.

The refresh worker renders what the host is (metrics.py); the server renders these itself, once per
refresh outcome, from what it saw of the refresh: whether it succeeded, how long it took, what was
skipped. So a refresh that fails, hangs or dies changes them without the worker, and the serving
process needs neither prometheus-client nor the snapshot to say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .. import __version__
from ..buildinfo import revision
from .exposition import Family, Row, Spec, render_families

# The status families, in exposition order: the last of every exposition (metrics.METRICS ends with them).
STATUS_METRICS: dict[str, Spec] = {
    "passthrough_source_up": Spec("gauge", "1 when the last refresh succeeded, 0 when it failed for any reason.",
                                  ("source",)),
    "passthrough_refresh_duration_seconds": Spec("gauge", "Time the last successful refresh took."),
    "passthrough_last_refresh_timestamp_seconds": Spec("gauge", "Unix time the last successful refresh finished."),
    "passthrough_collect_errors": Spec("counter", "Bad inputs skipped while reading and judging.", ("kind",)),
    "passthrough_exporter_build_info": Spec("gauge",
        "A metric with a constant '1' value labeled by the version and the commit the exporter was built from.",
        ("version", "revision")),
}


@dataclass(frozen=True, slots=True)
class Status:
    """How the last refresh went: all the status families say."""

    source: str
    source_up: bool
    duration: float  # seconds the last successful refresh took
    finished_at: float  # unix time it finished; 0 until one has
    errors_total: Mapping[str, int]  # by kind, every kind there is (metrics.ERROR_KINDS) with its 0


def status_families(st: Status) -> list[Family]:
    """The families of STATUS_METRICS, in their order."""
    # No refresh has succeeded yet: no duration or time to tell (a timestamp of 0 would read as stale).
    ever = st.finished_at > 0
    rows: dict[str, list[Row]] = {
        "passthrough_source_up": [((st.source,), 1 if st.source_up else 0)],
        "passthrough_refresh_duration_seconds": [((), st.duration)] if ever else [],
        "passthrough_last_refresh_timestamp_seconds": [((), st.finished_at)] if ever else [],
        "passthrough_collect_errors": [((kind,), st.errors_total.get(kind, 0))
                                       for kind in sorted(st.errors_total)],
        "passthrough_exporter_build_info": [((__version__, revision()), 1)],
    }
    return [Family.of(name, spec, rows[name]) for name, spec in STATUS_METRICS.items()]


# The host page is rendered by the refresh that read the host; whether its source is up now is the
# server's to say: the page carries this mark where the server writes it (`source_state`).
SOURCE_STATE_MARK = b"<!--source-state-->"


def source_state(status: Status) -> bytes:
    """The host page's words for the source's state, in its markup."""
    if status.source_up:
        return b'<span class="ok">up</span>'
    return b'<span class="bad">down (showing the last good read)</span>'


def render_status(status: Status) -> bytes:
    """The status families' text: the exposition's tail."""
    return render_families(status_families(status))
