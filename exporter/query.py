"""The device queries shared by the CLI and the HTTP API, with Kimchi's filter semantics."""

from __future__ import annotations

from collections.abc import Callable

from .model import KNOWN_TYPES
from .snapshot import Snapshot


class QueryError(Exception):
    """A query the user got wrong; `exit_code` for the CLI, `status` for HTTP."""

    exit_code = 1
    status = 400


class ConflictingFilters(QueryError):
    exit_code = 2
    status = 400

    def __init__(self) -> None:
        super().__init__("Conflicting flag filters specified.")


class DeviceNotFound(QueryError):
    exit_code = 1
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"Node device '{name}' not found")


def check_filters(cap: str | None, passthrough: bool, affected_by: str | None, available: bool,
                  exists: Callable[[str], bool]) -> None:
    """The filters' own rules, whatever answers them: a known type, `affected_by` alone, on a device
    that `exists`."""
    if cap is not None and cap not in KNOWN_TYPES:
        raise QueryError(f"unknown type {cap!r}; choose from {', '.join(KNOWN_TYPES)}")
    if affected_by is not None:
        if cap is not None or passthrough or available:
            raise ConflictingFilters()
        if not exists(affected_by):
            raise DeviceNotFound(affected_by)


def select(
    snapshot: Snapshot,
    cap: str | None = None,
    passthrough: bool = False,
    affected_by: str | None = None,
    available: bool = False,
) -> list[str]:
    """Device names matching the filters, sorted.

    `affected_by` answers "what goes with this device" and cannot be combined with the others.
    `available`: eligible devices free to hand out now (see `live`).
    """
    check_filters(cap, passthrough, affected_by, available, snapshot.inventory.__contains__)
    if affected_by is not None:
        return list(snapshot.affected[affected_by].names())
    states = snapshot.states
    return [
        dev.name
        for dev in snapshot.inventory
        if (cap is None or dev.type == cap) and (not passthrough or snapshot.verdicts[dev.name].eligible)
        and (not available or states.get(dev.name) == "available")
    ]
