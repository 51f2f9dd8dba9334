"""A device as JSON: the object the `devices --json` listing and the HTTP API print, one per device.

The one shape of a device for every reader; the rendered record stores each device's object once per
refresh (`rendered`), and the CLI writes them as it goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..model import AffectedSet, Device, Verdict

if TYPE_CHECKING:  # the server imports this module (through `rendered`), and no judging but the query
    from ..judging.snapshot import Snapshot


def device_object(snap: Snapshot, name: str, full: bool = False) -> dict[str, Any]:
    """The JSON object of one device, as the CLI and the HTTP API print it: in lists with
    `affected_count`; `full` (the one-device object) adds the sorted `affected` list."""
    affected = snap.affected.get(name)
    if affected is None:
        affected = AffectedSet(name)
    holder = snap.facts.in_use.get(name, _FREE)
    obj = _fields(snap.facts.vgpu_names, snap.inventory.devices[name], snap.verdicts[name], len(affected))
    obj["in_use"] = holder is not _FREE
    obj["held_by"] = None if holder is None or holder is _FREE else holder.to_json()
    obj["available"] = snap.states.get(name) == "available"
    obj["blocked_by"] = snap.blocked_by.get(name)
    if full:
        obj["affected"] = list(affected.names())
    return obj


_FREE = object()  # not in facts.in_use (where None means in use, holder unknown)
_AER_KINDS = ("correctable", "nonfatal", "fatal")


def _fields(vgpu_names: Mapping[str, Mapping[int, str]], dev: Device, verdict: Verdict,
            affected_count: int) -> dict[str, Any]:
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
    kind = dev.type
    if kind == "pci":
        # Item by item rather than update(**...): one object per device of a 20,000-device listing.
        obj["subsystem_vendor_id"] = dev.subsystem_vendor_id
        obj["subsystem_product_id"] = dev.subsystem_product_id
        obj["serial"] = dev.serial
        obj["pcie_root"] = dev.pcie_root
        obj["boot_vga"] = dev.boot_vga
        obj["reset_methods"] = None if dev.reset_methods is None else list(dev.reset_methods)
        obj["header_type"] = dev.header_type
        obj["physfn"] = dev.physfn
        obj["virtfns"] = list(dev.virtfns)
        obj["sriov_totalvfs"] = dev.sriov_totalvfs
        obj["sriov_numvfs"] = dev.sriov_numvfs
        obj["vfio_dev"] = dev.vfio_dev
        obj["unreachable"] = dev.unreachable
        speed, width, aer = dev.link_speed, dev.link_width, dev.aer_errors
        obj["health"] = {
            "link_speed_gts": {"current": speed[0], "max": speed[1]},
            "link_width": {"current": width[0], "max": width[1]},
            "aer_errors": dict(zip(_AER_KINDS, aer)),
            "power_state": dev.power_state,
        }
        obj["mdev_types"] = [{"type": t.type_id, "name": t.name, "device_api": t.device_api,
                              "available_instances": t.available, "instances": t.instances} for t in dev.mdev_types]
        obj["vgpu"] = _vgpu(vgpu_names, dev) if dev.nvidia_vgpu else None
    else:
        obj["health"] = None  # the kernel keeps link, AER and power state for PCI functions
    if kind == "usb_device" or kind == "usb":
        if kind == "usb_device":
            obj["serial"] = dev.serial
        obj["usb_class"] = dev.usb_class
        obj["busnum"] = dev.busnum
        obj["devnum"] = dev.devnum
    elif kind == "scsi":
        obj["scsi_type"] = dev.scsi_type
        obj["block_devices"] = list(dev.block_devices)
    if dev.notes:
        obj["notes"] = list(dev.notes)
    return obj


def _vgpu(vgpu_names: Mapping[str, Mapping[int, str]], dev: Device) -> dict[str, Any]:
    """A VF's vendor-specific vGPU: the type it carries (0 none, null unknown) with its name when
    any VF of its PF lists it (`Facts.vgpu_names`), and the types that can be created on it now
    (null unknown)."""
    current = dev.vgpu_type
    name = vgpu_names.get(dev.physfn, {}).get(current) if current and dev.physfn else None
    creatable = dev.vgpu_creatable
    return {"type": current, "name": name,
            "creatable": None if creatable is None else [{"type": t.type_id, "name": t.name} for t in creatable]}
