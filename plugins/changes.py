"""Upgrade impact: what changed since the previous boot (devices replaced, gone, regrouped; groups
renumbered), and which of it a VM depends on.

Judges what the source read: this boot's devices and `HostFacts.previous_boot` (the state file's
record of the previous boot, read by the source: no I/O here). The same boot read again finds the
same changes, so they hold for the whole boot; a boot without change has none.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .. import hookimpl
from ..judging.changes import Change
from ..judging.facts import Facts
from ..model import Check, Device, DeviceRecord, Finding, Inventory

CODES = ("device_replaced", "group_changed", "group_renumbered", "device_gone", "device_new", "state_unreadable",
         "no_previous_boot", "changes_not_tracked", "hostdev_changed")
FIXES = {
    "device_replaced": "check that the new device is the one meant (`lspci -nn -s ADDRESS`), then update the "
    "domains that use this address (`virsh edit DOMAIN`) or put the old device back",
    "group_changed": "pass every function of the new group to the VM or none (the firmware or kernel update "
    "changed ACS or the topology); move the card to a slot with its own group if that is not acceptable",
    "group_renumbered": "update whatever names /dev/vfio/<N> by number (scripts, container device lists) to the new number",
    "device_gone": "reseat or reinstall the device, check the firmware's slot settings, or remove it from the "
    "domains configured with it",
    "hostdev_changed": "before starting the domain, point its <hostdev> at the device it is meant to have "
    "(`virsh edit DOMAIN`), or put the hardware back as it was",
    "state_unreadable": "fix or remove the state file (--state.path) and give the exporter a writable state "
    "directory; until then changes since the previous boot cannot be told",
}


@hookimpl
def passthrough_checks() -> list[Check]:
    return [Check("Devices unchanged since the previous boot", CODES)]


@hookimpl
def passthrough_findings(inventory: Inventory, facts: Facts) -> Iterator[Finding]:
    host = inventory.host
    if not host.state_read:  # --no-state, or a tree that is not this host's: said, so the PASS is not taken for "unchanged"
        yield Finding("changes_not_tracked", "info", "host", "no state file is kept for this read (--no-state, or "
                      "a sysfs or procfs that is not this host's own without --state.path): changes since the "
                      "previous boot are not tracked")
        return
    if host.state_problem is not None:
        yield Finding("state_unreadable", "warning", "host", f"{host.state_problem}: changes since the previous "
                      "boot are not known", FIXES["state_unreadable"])
        return
    if host.previous_boot is None:
        yield Finding("no_previous_boot", "info", "host", "no record of a previous boot (the first boot with the "
                      "exporter, or its state was started afresh): nothing to compare with yet")
        return
    configured: dict[str, list[str]] = {}  # domain -> what changed among the devices it is configured with
    before = host.previous_boot.by_name()
    for change in facts.changes:
        domains = _domains(change, inventory, before)
        for domain in domains:
            configured.setdefault(domain, []).append(f"{change.subject} ({change.kind.replace('_', ' ')})")
        yield _finding(change, inventory, facts, domains)
    for domain, what in sorted(configured.items()):
        yield Finding("hostdev_changed", "critical", f"domain:{domain}",
                      f"domain {domain} is configured with {', '.join(what)}, changed since the previous boot: "
                      "it will not start, or will start with another device", FIXES["hostdev_changed"])


def _domains(change: Change, inventory: Inventory, before: Mapping[str, DeviceRecord]) -> list[str]:
    """The domains whose <hostdev> names the device a change is about (none for a renumbered group or
    a new device: a domain names an address, which still holds what it held). A device gone: only
    domains' configurations can still name it (nothing holds what is not there); the libvirt source
    lists those as missing host devices, by what the <hostdev> names (`before`: the previous boot's
    records by name)."""
    if change.kind in ("replaced", "group_changed"):
        dev = inventory.devices.get(change.subject)
        return [name for name, _ in dev.assignments] if dev is not None else []
    if change.kind == "gone":
        was = before[change.subject]
        return sorted({d for d, what in inventory.host.missing_hostdevs if _names(what, was.address)})
    return []


def _users(dev: Device | None, facts: Facts) -> list[str]:
    """Who depends on the device: the domains configured with it, the VM or process holding it."""
    if dev is None:
        return []
    out = [f"domain {name} ({'running' if up else 'shut off'})" for name, up in dev.assignments]
    holder = facts.in_use.get(dev.name)
    if holder is not None:
        out.append(f"VM {holder.vm}" if holder.vm else f"process {holder.process} (pid {holder.pid})")
    return out


def _finding(change: Change, inventory: Inventory, facts: Facts, domains: list[str]) -> Finding:
    """The finding of one change; `domains`: those configured with the device (`_domains`)."""
    name = change.subject
    if change.kind == "group_renumbered":
        return Finding("group_renumbered", "info", name,
                       f"IOMMU {change.before} is {change.after} since the previous boot, with the same functions "
                       f"({', '.join(change.members)}): /dev/vfio paths by number changed", FIXES["group_renumbered"])
    dev = inventory.devices.get(name)
    users = _users(dev, facts)
    used = f"; used by {', '.join(users)}" if users else ""
    severity = "critical" if users else "warning"
    if change.kind == "replaced":
        return Finding("device_replaced", severity, name,
                       f"another device sits at {name} since the previous boot: {change.before} then, "
                       f"{change.after} now{used}", FIXES["device_replaced"])
    if change.kind == "group_changed":
        return Finding("group_changed", severity, name,
                       f"{name}'s IOMMU group holds other functions since the previous boot: {change.before} then, "
                       f"{change.after} now; passing it takes the others along{used}", FIXES["group_changed"])
    if change.kind == "gone":  # only domains' configurations can still name it (`_domains`)
        severity = "critical" if domains else "warning"
        by = f"; domain(s) {', '.join(domains)} are configured with it" if domains else ""
        return Finding("device_gone", severity, name,
                       f"{name} ({change.before}) was there at the previous boot and is missing now{by}",
                       FIXES["device_gone"])
    # new: a device that was not there is no risk to a VM; told as info, claimed by the same check.
    return Finding("device_new", "info", name, f"{name} is new since the previous boot: {change.after}")


def _names(what: str, address: str | None) -> bool:
    """Whether a missing <hostdev>'s description names this address (0000:03:00.0 or 03:00.0)."""
    if not address:
        return False
    short = address.split(":", 1)[1] if address.count(":") == 2 else address
    return address in what or short in what
