"""What changed between two boots: devices replaced, gone or new at their addresses, IOMMU groups
whose members changed (merged or split) or that were renumbered.

Pure: two `BootRecord`s in, a list of `Change`s out. The built-in `changes` plugin turns them into
findings and `passthrough-exporter diff` prints them. A field one boot did not know (None) is
unknown, never a difference: a serial the host did not give never makes a device "replaced".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model import BootRecord, DeviceRecord, natural_key

KINDS = ("replaced", "gone", "new", "group_changed", "group_renumbered")


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: `subject` a device name, or `group:<N>` (the number now) when renumbered."""

    kind: str  # one of KINDS
    subject: str
    before: str  # what the previous boot had, in words ("144d:a80a", "group 5: pci_..., pci_...")
    after: str
    members: tuple[str, ...] = ()  # group_renumbered: the group's functions

    def line(self) -> str:
        """`pci_0000_03_00_0: replaced: 144d:a80a -> 144d:a808`."""
        kind = self.kind.replace("_", " ")
        return f"{self.subject}: {kind}: {self.before} -> {self.after}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "subject": self.subject, "before": self.before, "after": self.after}
        if self.members:
            out["members"] = list(self.members)
        return out

    def order(self) -> tuple[tuple[str, int], int]:
        return (natural_key(self.subject), KINDS.index(self.kind))


def _ids(vendor: str | None, product: str | None) -> str:
    return f"{_hex(vendor)}:{_hex(product)}"


def _hex(value: str | None) -> str:
    if value is None:
        return "?"
    return value[2:] if value.lower().startswith("0x") else value


def identity_text(d: DeviceRecord) -> str:
    """A device's ids as lspci writes them: `144d:a80a`."""
    return _ids(d.vendor_id, d.product_id)


def identity_differs(a: DeviceRecord, b: DeviceRecord) -> tuple[str, ...]:
    """The identity fields that differ, both known; () when they are the same device as far as told."""
    return tuple(f for f in DeviceRecord.IDENTITY
                 if getattr(a, f) is not None and getattr(b, f) is not None and getattr(a, f) != getattr(b, f))


def _replaced(name: str, a: DeviceRecord, b: DeviceRecord, fields: tuple[str, ...]) -> Change:
    before, after = [identity_text(a)], [identity_text(b)]
    if {"subsystem_vendor_id", "subsystem_product_id"} & set(fields):
        before.append(f"subsystem {_ids(a.subsystem_vendor_id, a.subsystem_product_id)}")
        after.append(f"subsystem {_ids(b.subsystem_vendor_id, b.subsystem_product_id)}")
    if "device_class" in fields:
        before.append(f"class {_hex(a.device_class)}")
        after.append(f"class {_hex(b.device_class)}")
    if "serial" in fields:  # the record keeps digests, never the serial: say only that it differs
        before.append("serial A")
        after.append("serial B")
    return Change("replaced", name, " ".join(before), " ".join(after))


def _group_text(number: int | None, members: frozenset[str]) -> str:
    if number is None:
        return "no IOMMU group"
    return f"group {number} ({', '.join(sorted(members))})"


def compare(previous: BootRecord, now: BootRecord) -> list[Change]:
    """Every change from `previous` to `now`, by subject in natural order.

    - replaced: the same address (name) holds another identity (ids, subsystem ids, class, serial);
    - gone / new: a device of one boot only;
    - group_changed: a device of both boots whose IOMMU group holds other functions now (merged,
      split, a new function joined; functions gone are told as gone, not again here); a group
      unknown in either boot is no difference;
    - group_renumbered: a group with exactly the same functions under another number.
    """
    before, after = previous.by_name(), now.by_name()
    groups_before, groups_after = previous.groups(), now.groups()
    changes: list[Change] = []
    for name in sorted(before.keys() - after.keys()):
        d = before[name]
        changes.append(Change("gone", name, f"{identity_text(d)} at {d.address or name}", "nothing"))
    for name in sorted(after.keys() - before.keys()):
        d = after[name]
        changes.append(Change("new", name, "nothing", f"{identity_text(d)} at {d.address or name}"))
    for name in sorted(before.keys() & after.keys()):
        a, b = before[name], after[name]
        if a.type != b.type:
            changes.append(Change("replaced", name, f"{a.type} {identity_text(a)}", f"{b.type} {identity_text(b)}"))
            continue
        fields = identity_differs(a, b)
        if fields:
            changes.append(_replaced(name, a, b, fields))
        # A group unknown on either side (no IOMMU, an unreadable link) is no difference: the host's own
        # findings tell an IOMMU that is off; a missing input is never taken for a regrouping.
        if a.type != "pci" or a.iommu_group is None or b.iommu_group is None:
            continue
        was = groups_before.get(a.iommu_group, frozenset())
        now_members = groups_after.get(b.iommu_group, frozenset())
        was_kept = frozenset(m for m in was if m in after)  # a function gone is a change of its own
        if was_kept != now_members:
            changes.append(Change("group_changed", name, _group_text(a.iommu_group, was),
                                  _group_text(b.iommu_group, now_members)))
    # Renumbered: the same members, another number (group_changed covers every other case).
    # Judged on the functions of both boots, so a function gone or new does not hide a renumbering.
    common = before.keys() & after.keys()
    numbers_before = {frozenset(members & common): number for number, members in groups_before.items()}
    for number, members in groups_after.items():
        old = numbers_before.get(frozenset(members & common)) if members & common else None
        if old is not None and old != number:
            changes.append(Change("group_renumbered", f"group:{number}", f"group {old}", f"group {number}",
                                  tuple(sorted(members))))
    return sorted(changes, key=Change.order)
