"""Which VM has which device: one device in several domains, an IOMMU group split between VMs,
and domains whose host devices this host does not have.

Judges what the sources read: libvirt domains' `<hostdev>` elements (`Device.assignments`,
`HostFacts.missing_hostdevs`) and the processes holding device nodes now (`facts.in_use`).
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..judging.facts import Facts
from ..model import Check, Finding, Inventory

FIXES = {
    "assignment_conflict": "keep the device in one domain's configuration (`virsh edit DOMAIN`, remove the "
    "<hostdev>), or give the other domain a device of its own",
    "group_split": "give the whole IOMMU group to one VM (every function of it in the same domain), or move "
    "the card to a slot with its own group",
    "hostdev_missing": "remove the <hostdev> from the domain (`virsh edit DOMAIN`) or put the device back; "
    "until then the domain will not start",
}


@hookimpl
def passthrough_checks() -> list[Check]:
    return [
        Check("Each device and IOMMU group with one VM", ("assignment_conflict", "group_split")),
        Check("Domains' host devices present", ("hostdev_missing",)),
    ]


@hookimpl
def passthrough_findings(inventory: Inventory, facts: Facts) -> Iterator[Finding]:
    yield from _conflicts(inventory)
    yield from _splits(inventory, facts)
    for domain, what in inventory.host.missing_hostdevs:
        yield Finding("hostdev_missing", "warning", f"domain:{domain}",
                      f"domain {domain} is configured with a host device this host does not have ({what}): "
                      "it will not start", FIXES["hostdev_missing"])


def _conflicts(inventory: Inventory) -> Iterator[Finding]:
    for dev in inventory:
        if len(dev.assignments) < 2:
            continue
        running = [name for name, up in dev.assignments if up]
        names = ", ".join(f"{name} ({'running' if up else 'shut off'})" for name, up in dev.assignments)
        if len(running) > 1:
            yield Finding("assignment_conflict", "critical", dev.name,
                          f"{dev.name} is in the configuration of {len(dev.assignments)} domains, and "
                          f"{len(running)} of them run: {names}", FIXES["assignment_conflict"])
        else:
            yield Finding("assignment_conflict", "warning", dev.name,
                          f"{dev.name} is in the configuration of {len(dev.assignments)} domains: {names}; "
                          "only one of them can start", FIXES["assignment_conflict"])


def _splits(inventory: Inventory, facts: Facts) -> Iterator[Finding]:
    for number, members in inventory.groups.items():
        vms: dict[str, list[str]] = {}  # a VM -> its devices of this group
        for name in members:
            dev = inventory.devices[name]
            holder = facts.in_use.get(name)
            who = set()
            if dev.assigned_to:  # the domain that runs with it, else the first configured one
                who.add(dev.assigned_to)
            if holder is not None:
                who.add(holder.vm or f"process {holder.process} (pid {holder.pid})")
            for vm in who:
                vms.setdefault(vm, []).append(name)
        if len(vms) > 1:
            parts = "; ".join(f"{vm}: {', '.join(devs)}" for vm, devs in sorted(vms.items()))
            yield Finding("group_split", "critical", f"group:{number}",
                          f"IOMMU group {number} is split between {len(vms)} VMs ({parts}): they share "
                          "one DMA isolation domain", FIXES["group_split"])
