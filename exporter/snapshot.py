"""The judged snapshot: one read of the devices plus every verdict, affected set and finding.

Immutable, so the HTTP server and the metrics collector can serve it from any thread while the
next one is being built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .facts import Facts
from .model import AffectedSet, Device, Finding, Inventory, Verdict


@dataclass(frozen=True, slots=True)
class Snapshot:
    inventory: Inventory
    facts: Facts  # derived from the inventory before the rules ran
    verdicts: Mapping[str, Verdict]
    affected: Mapping[str, AffectedSet]
    # device -> in_use | assigned | ineligible | available | blocked (see `live`)
    states: Mapping[str, str] = field(default_factory=dict)
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

    def device_object(self, name: str, full: bool = False) -> dict[str, Any]:
        """The JSON object of one device, as the CLI and the HTTP API print it: in lists with
        `affected_count`; `full` (the one-device object) adds the sorted `affected` list."""
        affected = self.affected.get(name) or AffectedSet(name)
        obj = device_object(self.inventory.devices[name], self.verdicts[name], len(affected))
        holder = self.facts.in_use.get(name)
        obj.update(in_use=name in self.facts.in_use, held_by=None if holder is None else holder.to_json(),
                   available=self.states.get(name) == "available")
        if full:
            obj["affected"] = list(affected.names())
        return obj

def device_object(dev: Device, verdict: Verdict, affected_count: int) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "name": dev.name,
        "type": dev.type,
        "parent": dev.parent,
        "address": dev.address,
        "vendor_id": dev.vendor_id,
        "product_id": dev.product_id,
        "vendor": dev.vendor,
        "product": dev.product,
        "class": dev.pci_class,
        "driver": dev.driver,
        "iommu_group": dev.iommu_group,
        "numa_node": dev.numa_node,
        "eligible": verdict.eligible,
        "reasons": list(verdict.reasons),
        "warnings": list(verdict.warnings),
        "affected_count": affected_count,
        "assigned_to": dev.assigned_to,
        "assigned_running": dev.assigned_running,
    }
    if dev.type == "pci":
        obj.update(
            subsystem_vendor_id=dev.subsystem_vendor_id,
            subsystem_product_id=dev.subsystem_product_id,
            boot_vga=dev.boot_vga,
            reset_methods=None if dev.reset_methods is None else list(dev.reset_methods),
            header_type=dev.header_type,
            physfn=dev.physfn,
            virtfns=list(dev.virtfns),
            sriov_totalvfs=dev.sriov_totalvfs,
            sriov_numvfs=dev.sriov_numvfs,
            vfio_dev=dev.vfio_dev,
            unreachable=dev.unreachable,
            health={
                "link_speed_gts": {"current": dev.link_speed[0], "max": dev.link_speed[1]},
                "link_width": {"current": dev.link_width[0], "max": dev.link_width[1]},
                "aer_errors": dict(zip(("correctable", "nonfatal", "fatal"), dev.aer_errors)),
                "power_state": dev.power_state,
            },
            mdev_types=[{"type": t.type_id, "name": t.name, "device_api": t.device_api,
                         "available_instances": t.available, "instances": t.instances} for t in dev.mdev_types],
        )
    else:
        obj["health"] = None  # the kernel keeps link, AER and power state for PCI functions
    if dev.type in ("usb_device", "usb"):
        obj.update(usb_class=dev.usb_class, busnum=dev.busnum, devnum=dev.devnum)
    elif dev.type == "scsi":
        obj.update(scsi_type=dev.scsi_type, block_devices=list(dev.block_devices))
    if dev.notes:
        obj["notes"] = list(dev.notes)
    return obj
