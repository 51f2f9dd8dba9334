"""The judged snapshot: one read of the devices plus every verdict, affected set and finding.

Immutable, so the HTTP server and the metrics collector can serve it from any thread while the
next one is being built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..model import AffectedSet, Finding, Inventory, Verdict
from .facts import Facts


@dataclass(frozen=True, slots=True)
class Snapshot:
    inventory: Inventory
    facts: Facts  # derived from the inventory before the rules ran
    verdicts: Mapping[str, Verdict]
    affected: Mapping[str, AffectedSet]
    # device -> in_use | assigned | ineligible | available | blocked (see `live`)
    states: Mapping[str, str] = field(default_factory=dict)
    blocked_by: Mapping[str, str] = field(default_factory=dict)  # blocked device -> why, in words
    findings: tuple[Finding, ...] = ()
    source: str = "sysfs"
    source_up: bool = True
    # bad inputs skipped while reading and judging, by kind (this refresh only)
    errors: Mapping[str, int] = field(default_factory=dict)
    # the same, summed over every refresh since the exporter started (a Prometheus counter)
    errors_total: Mapping[str, int] = field(default_factory=dict)
    finished_at: float = 0.0  # unix time
    duration: float = 0.0  # seconds the refresh took

    @classmethod
    def empty(cls, source: str) -> Snapshot:
        """What is served before the first refresh: no devices, the source not (yet) up."""
        inventory = Inventory([])
        return cls(inventory, Facts.of(inventory), {}, {}, source=source, source_up=False)
