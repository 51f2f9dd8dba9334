"""The device queries of the CLI and the HTTP API, with Kimchi's filter semantics: one `DeviceIndex`
answers both (the CLI builds it from its snapshot, the server receives it with each refresh)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..model import KNOWN_TYPES

if TYPE_CHECKING:
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


@dataclass(frozen=True, slots=True)
class DeviceIndex:
    """Every device of a snapshot, in name order, with what the documented filters ask of it.

    Plain data, small enough to cross to the server with each refresh. Affected sets keep the
    snapshot's sharing: a device's set is a shared part (one tuple object for every device of an
    IOMMU group and what hangs below it) and its own extras, both as positions in `names`.
    """

    names: tuple[str, ...]
    types: tuple[str, ...]
    eligible: bytes  # one byte per device, 1 or 0
    available: bytes  # eligible and free to hand out now (see `live`)
    affected: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # (shared, own) per device
    positions: dict[str, int] = field(compare=False, repr=False)  # name -> its position in `names`

    @classmethod
    def of(cls, snap: Snapshot) -> DeviceIndex:
        names = tuple(snap.inventory.devices)
        positions = {name: i for i, name in enumerate(names)}
        shared_parts: dict[int, tuple[int, ...]] = {}  # id of a shared frozenset (alive in `snap`) -> positions
        affected = []
        for name in names:
            aff = snap.affected.get(name)
            if aff is None:
                affected.append(((), ()))
                continue
            shared = shared_parts.get(id(aff.shared))
            if shared is None:
                shared = shared_parts[id(aff.shared)] = tuple(sorted(positions[n] for n in aff.shared))
            affected.append((shared, tuple(sorted(positions[n] for n in aff.own))))
        verdicts, states = snap.verdicts, snap.states
        return cls(names, tuple(dev.type for dev in snap.inventory),
                   bytes([bool(verdicts[n].eligible) for n in names]),
                   bytes([states.get(n) == "available" for n in names]), tuple(affected), positions)

    def __len__(self) -> int:
        return len(self.names)

    def affected_of(self, i: int) -> list[int]:
        """The positions of what goes with device i, in name order, i itself excluded."""
        shared, own = self.affected[i]
        return sorted({*shared, *own} - {i})

    def select(self, cap: str | None = None, passthrough: bool = False, affected_by: str | None = None,
               available: bool = False) -> list[int]:
        """Positions of the devices matching the filters, in name order.

        `affected_by` answers "what goes with this device" and cannot be combined with the others.
        `available`: eligible devices free to hand out now (see `live`).
        """
        check_filters(cap, passthrough, affected_by, available, self.positions.__contains__)
        if affected_by is not None:
            return self.affected_of(self.positions[affected_by])
        types, eligible, free = self.types, self.eligible, self.available
        return [i for i in range(len(self.names))
                if (cap is None or types[i] == cap) and (not passthrough or eligible[i])
                and (not available or free[i])]
