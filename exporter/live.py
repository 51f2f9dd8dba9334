"""What is true now, per device: in use, assigned, not eligible, available or blocked.

One state per device, in this order of precedence (as `passthrough_pool_devices` counts them):
`in_use` (a VM or another user-space driver has it open), else `assigned` (a libvirt domain is
configured with it), else `ineligible`, else `available` when nothing it would take along is in
use or assigned and no mediated device is carved out of it, else `blocked`. Host drivers are not
"in use": handing the device out unbinds them, and the affected set says what the host loses.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .facts import Facts
from .model import AffectedSet, Inventory, Verdict

STATES = ("available", "in_use", "assigned", "blocked", "ineligible")


def states(inventory: Inventory, facts: Facts, verdicts: Mapping[str, Verdict],
           affected: Mapping[str, AffectedSet]) -> Mapping[str, str]:
    busy = set(facts.in_use)
    busy.update(d.name for d in inventory if d.assigned_to)
    # Mediated devices carved out of a function: libvirt lists them as children, sysfs per type.
    carved = {d.parent for d in inventory if d.type == "mdev" and d.parent}
    carved.update(d.name for d in inventory if any(t.instances for t in d.mdev_types))
    shared_busy: dict[int, bool] = {}  # id(shared set) -> it holds a busy device: once per group
    out: dict[str, str] = {}
    for dev in inventory:
        name = dev.name
        if name in facts.in_use:
            out[name] = "in_use"
        elif dev.assigned_to:
            out[name] = "assigned"
        elif not verdicts[name].eligible:
            out[name] = "ineligible"
        else:
            along = affected[name]
            key = id(along.shared)
            hit = shared_busy.get(key)  # the device itself is not busy here: it would be in_use/assigned
            if hit is None:
                hit = shared_busy[key] = not busy.isdisjoint(along.shared)
            blocked = hit or not busy.isdisjoint(along.own) or name in carved
            out[name] = "blocked" if blocked else "available"
    return MappingProxyType(out)
