"""The `check` report: findings of a judged snapshot grouped into virt-host-validate style checks.

The plugins name the checks (`passthrough_checks`: a title and the finding codes it covers) and
give each finding its fix; this module knows no code. A check's status is the worst severity
among its findings (critical -> FAIL, warning -> WARN, info or nothing -> PASS). Codes no check
claims go under a last check of their own, so nothing a plugin reports is lost; a plugin that failed
while judging adds a last line UNKNOWN, so a report with a rule missing never reads as a clean PASS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..judging.snapshot import Snapshot
from ..model import Check, Finding
from ..textsafe import visible

STATUS_BY_SEVERITY = {"critical": "FAIL", "warning": "WARN", "info": "PASS"}
# Worst last: a failure found outranks what could not be told, which outranks a warning.
STATUSES = ("PASS", "WARN", "UNKNOWN", "FAIL")
EXIT_CODES = {"PASS": 0, "WARN": 1, "FAIL": 2, "UNKNOWN": 3}  # the monitoring-plugin convention
INFO_SHOWN = 5  # info findings printed per check; more are counted (a big host has many groups)
OTHER = "Findings of other plugins"
PLUGINS_RAN = "Every rule plugin ran"


@dataclass(frozen=True, slots=True)
class CheckResult:
    title: str
    status: str  # PASS | WARN | UNKNOWN | FAIL
    findings: tuple[Finding, ...]
    note: str = ""  # why the status, when no finding says it


def _status(findings: tuple[Finding, ...]) -> str:
    return _worst(STATUS_BY_SEVERITY[f.severity] for f in findings)


def _worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=STATUSES.index, default="PASS")


def run_checks(snapshot: Snapshot, checks: Sequence[Check]) -> list[CheckResult]:
    known = {code for check in checks for code in check.codes}
    results = []
    for check in checks:
        mine = tuple(f for f in snapshot.findings if f.code in check.codes)
        results.append(CheckResult(check.title, _status(mine), mine))
    other = tuple(f for f in snapshot.findings if f.code not in known)
    if other:
        results.append(CheckResult(OTHER, _status(other), other))
    # A plugin that failed reported nothing where it failed: its checks' PASS cannot be trusted.
    failed = snapshot.errors.get("plugin_error", 0)
    if failed:
        results.append(CheckResult(PLUGINS_RAN, "UNKNOWN", (), f"{failed} plugin failure(s) while judging "
                                   "(see the log): what a failed rule would have found is not in this report"))
    return results


def exit_code(results: list[CheckResult]) -> int:
    """0 when every check passes, 1 with warnings, 3 when a plugin failed, 2 with failures."""
    return EXIT_CODES[_worst(r.status for r in results)]


def _notes(snapshot: Snapshot) -> list[str]:
    """Facts worth a line even when all is well: where `/` lives, what the groups look like and how
    VFIO devices can be opened."""
    inv = snapshot.inventory
    out = []
    for name in snapshot.facts.root_functions:
        state = "not eligible" if not snapshot.verdicts[name].eligible else "ELIGIBLE"
        out.append(f"root filesystem ({', '.join(inv.host.root_disks)}) is on {name}: {state}")
    out.append(f"IOMMU group layout: {len(inv.groups)} groups, hash {snapshot.facts.layout_hash}")
    out.append(backends_line(snapshot.facts.backends, snapshot.facts.backends_unknown))
    return out


def backends_line(backends: Mapping[str, bool | None], why_unknown: Mapping[str, str]) -> str:
    """`VFIO backends: group, cdev, iommufd`; those the host lacks as `absent:`, those it cannot
    tell as `unknown:` with why (`Facts.backends_unknown`): `VFIO backends: group; absent: cdev, iommufd`."""
    offered = [b for b, on in backends.items() if on]
    absent = [b for b, on in backends.items() if on is False]
    unknown = [f"{b} ({why_unknown[b]})" for b, on in backends.items() if on is None]
    parts = [", ".join(offered) or ("none known" if unknown else "none")]
    if absent:
        parts.append(f"absent: {', '.join(absent)}")
    if unknown:
        parts.append(f"unknown: {', '.join(unknown)}")
    return "VFIO backends: " + "; ".join(parts)


def render_text(snapshot: Snapshot, results: list[CheckResult]) -> str:
    width = max((len(r.title) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{r.title:<{width}} : {r.status}")
        shown = [f for f in r.findings if f.severity != "info"]
        infos = [f for f in r.findings if f.severity == "info"]
        shown += infos[:INFO_SHOWN]
        for f in shown:
            lines.append(f"    {f.severity} {f.code} [{f.subject}]: {f.message}")
        if len(infos) > INFO_SHOWN:
            lines.append(f"    ... and {len(infos) - INFO_SHOWN} more info findings (see --json)")
        if r.note:
            lines.append(f"    {r.note}")
        for hint in dict.fromkeys(f.fix for f in r.findings if f.severity != "info" and f.fix):
            lines.append(f"    fix: {hint}")
    lines += [f"note: {n}" for n in _notes(snapshot)]
    # Line by line: a VM name or a plugin's message carrying a newline or ESC stays inside its line.
    return "\n".join(map(visible, lines)) + "\n"


def render_json(snapshot: Snapshot, results: list[CheckResult]) -> dict[str, Any]:
    inv = snapshot.inventory
    return {
        "status": _worst(r.status for r in results),
        "checks": [
            {"check": r.title, "status": r.status, "findings": [f.to_json() for f in r.findings]}
            | ({"note": r.note} if r.note else {})
            for r in results
        ],
        "root_devices": None if inv.host.root_devices is None else list(inv.host.root_devices),
        "root_disks": list(inv.host.root_disks),
        "group_layout_hash": snapshot.facts.layout_hash,
        "vfio_backends": dict(snapshot.facts.backends),  # each backend: true, false or null (unknown)
    }
