"""What is true now, per device: in use, assigned, not eligible, available or blocked, and why blocked.

One state per device, in this order of precedence (as `passthrough_pool_devices` counts them):
`in_use` (a VM or another user-space driver has it open), else `assigned` (a libvirt domain is
configured with it), else `ineligible`, else `available` when nothing blocks it, else `blocked`.
Host drivers are not "in use": handing the device out unbinds them, and the affected set says what
the host loses.

NVIDIA's vendor-specific vGPU (a VF with `nvidia/`, no mdev) is handed out VF by VF: a VF carrying a
type follows the rules above; one without a type, or whose type cannot be read, is blocked, and so
is its PF while any VF carries a type (or may: its type cannot be read). An NVIDIA display-class VF read
without the host's sysfs (`nvidia_vgpu` None) may carry one: it is blocked, and so is its PF.

An SR-IOV PF one of whose listed VFs could not be read is blocked: that VF may be in use, or carry
a vGPU, and handing the PF out takes it along.

This is the one availability rule: the JSON `available` and `blocked_by`, the metrics, the pools,
`devices --available` and the host page all read what `states` returns.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Set as AbstractSet
from dataclasses import dataclass
from types import MappingProxyType

from .facts import Facts
from ..model import AffectedSet, Device, Inventory, Verdict

STATES = ("available", "in_use", "assigned", "blocked", "ineligible")
MASS_STORAGE = "0x01"  # PCI base class of SATA, SAS, RAID, NVMe and virtio-blk controllers
DISPLAY = "0x03"  # PCI base class of GPUs (VGA, 3D controllers): what a vendor-specific vGPU VF is
NVIDIA = "0x10de"  # the vendor of the only vendor-specific vGPU (nvidia/): other GPUs' VFs carry no type
USB_MASS_STORAGE = "08"  # bInterfaceClass of USB disks and flash drives
# The reason of a vGPU VF that carries no type: the only blocker the metrics count as free capacity
# (passthrough_vgpu_available), so it is spelled once, here.
NO_VGPU_TYPE = "no vGPU type set on this VF"


@dataclass(frozen=True, slots=True)
class Live:
    states: Mapping[str, str]  # device -> one of STATES
    blocked_by: Mapping[str, str]  # blocked device -> why, in words


def host_blocker(inventory: Inventory, facts: Facts) -> str | None:
    """Why VFIO cannot assign any PCI function on this host now, or None when it can.

    The kernel's rule: VFIO needs IOMMU groups, and refuses a device without interrupt remapping
    unless unsafe interrupts are allowed. Remapping that cannot be told is not held against it
    (`interrupt_remapping_unknown` says so instead).
    """
    host = inventory.host
    if not host.iommu_groups_present:
        return "the IOMMU is off: VFIO cannot assign devices on this host"
    if host.interrupt_remapping is False and not facts.weakened["unsafe_interrupts"]:
        return "interrupt remapping is off: VFIO refuses to assign devices on this host"
    return None


def states(inventory: Inventory, facts: Facts, verdicts: Mapping[str, Verdict],
           affected: Mapping[str, AffectedSet], failed: Mapping[str, tuple[str, ...]] | None = None) -> Live:
    """Each device's state; `failed`: the plugins that failed on a device (its rule skipped there), so
    that device is never "available": what the skipped rule would have said cannot be told."""
    failed = failed or {}
    busy = set(facts.in_use)
    busy.update(d.name for d in inventory if d.assigned_to)
    # Mediated devices carved out of a function: libvirt lists them as children, sysfs per type.
    carved = {d.parent for d in inventory if d.type == "mdev" and d.parent}
    carved.update(d.name for d in inventory if any(t.instances for t in d.mdev_types))
    no_vfio = host_blocker(inventory, facts)
    no_iommu = inventory.host.noiommu_groups
    storage = may_hold_root(inventory) if facts.root_unknown else frozenset()
    busy_in: dict[int, tuple[str, ...]] = {}  # id(shared set) -> its first matches: once per group
    storage_in: dict[int, tuple[str, ...]] = {}
    out: dict[str, str] = {}
    why: dict[str, str] = {}
    for dev in inventory:
        name = dev.name
        if name in facts.in_use:
            out[name] = "in_use"
            continue
        if dev.assigned_to:
            out[name] = "assigned"
            continue
        if not verdicts[name].eligible:
            out[name] = "ineligible"
            continue
        reason = None
        along = affected[name]
        if name in failed:
            reason = (f"plugin {', '.join(failed[name])} failed on this device: cannot tell whether it can be "
                      "handed out")
        elif dev.type == "pci" and no_vfio is not None:
            reason = no_vfio
        elif dev.type == "pci" and dev.iommu_group is None:
            reason = "no IOMMU group: the IOMMU does not cover it, so VFIO cannot assign it"
        elif dev.type == "pci" and dev.iommu_group in no_iommu:
            reason = "its group is VFIO's no-IOMMU group (unsafe no-IOMMU mode): VFIO cannot assign it to a VM"
        elif name in carved:
            reason = "mediated devices are carved out of it"
        elif dev.physfn is not None and _vgpu_unread(dev):
            reason = "without the host's sysfs, whether a vGPU type is set on it cannot be read"
        elif dev.nvidia_vgpu and dev.vgpu_type is None:
            reason = "its vGPU type cannot be read: cannot tell whether it can be handed out"
        elif (vfs := inventory.virtual_functions(name)) and (vgpu := _vgpu_on_vfs(inventory, vfs)) is not None:
            reason = vgpu
        elif dev.virtfns and (lost := next((vf for vf in dev.virtfns if vf not in inventory), None)) is not None:
            reason = (f"its virtual function {lost} could not be read: cannot tell whether it is in use or "
                      "carries a vGPU")
        elif (hit := _first_in(along, busy, busy_in)) is not None:
            reason = f"{hit}, which goes with it, is {'in use' if hit in facts.in_use else 'assigned'}"
        elif name in storage or _first_in(along, storage, storage_in) is not None:
            reason = "the root filesystem's device is unknown: cannot tell whether this device, or one that goes with it, holds it"
        elif dev.nvidia_vgpu and not dev.vgpu_type:
            # Last, so that "no type" is the VF's one blocker wherever it is its reason: the metrics
            # count exactly those VFs as free vGPU capacity.
            reason = NO_VGPU_TYPE
        if reason is None:
            out[name] = "available"
        else:
            out[name] = "blocked"
            why[name] = reason
    return Live(MappingProxyType(out), MappingProxyType(why))


def _vgpu_unread(dev: Device) -> bool:
    """An NVIDIA display-class VF whose `nvidia/` was not read (a source without the host's sysfs): it
    may carry a vGPU type. Another vendor's GPU VF or a NIC's VF never has one: judged as before."""
    return (dev.nvidia_vgpu is None and dev.physfn is not None and dev.vendor_id == NVIDIA
            and (dev.pci_class or "").lower().startswith(DISPLAY))


def _vgpu_on_vfs(inventory: Inventory, vfs: tuple[str, ...]) -> str | None:
    """Why a PF is blocked by its VFs' vendor-specific vGPUs: one carries a type (the GPU is shared
    out), or one's type cannot be read (it may carry one). None when neither."""
    unknown = None
    for vf in vfs:
        dev = inventory.devices[vf]
        if dev.nvidia_vgpu and dev.vgpu_type:
            return f"vGPUs are set on its virtual functions ({vf} carries type {dev.vgpu_type})"
        if unknown is not None:
            continue
        if _vgpu_unread(dev):
            unknown = (f"without the host's sysfs, whether its virtual function {vf} carries a vGPU type "
                       "cannot be read: it may carry one")
        elif dev.nvidia_vgpu and dev.vgpu_type is None:
            unknown = f"the vGPU type of its virtual function {vf} cannot be read: it may carry one"
    return unknown


def _first_in(along: AffectedSet, names: AbstractSet[str], cache: dict[int, tuple[str, ...]]) -> str | None:
    """A device of `names` that goes along with `along.device` (never the device itself). The shared
    part (a whole IOMMU group, maybe thousands of functions) is searched once for all its members:
    its two first matches are kept, so each member finds one that is not itself."""
    if not names:
        return None
    key = id(along.shared)
    first = cache.get(key)
    if first is None:
        first = cache[key] = tuple(heapq.nsmallest(2, (n for n in along.shared if n in names)))
    hit = next((n for n in first if n != along.device), None)
    return hit if hit is not None else min((n for n in along.own if n in names), default=None)


def may_hold_root(inventory: Inventory) -> frozenset[str]:
    """What may hold the root filesystem when the source cannot tell which device does: mass-storage
    controllers, SCSI LUNs and USB devices with a mass-storage interface. A device that takes one
    along (its IOMMU group partner, the xHCI above a USB stick) is blocked through its affected set;
    a USB keyboard is forwarded alone and stays available."""
    out: set[str] = set()
    for dev in inventory:
        if dev.type == "pci" and (dev.pci_class or "").lower().startswith(MASS_STORAGE):
            out.add(dev.name)
        elif dev.type == "scsi":
            out.add(dev.name)
        elif dev.type == "usb" and dev.usb_class == USB_MASS_STORAGE and dev.parent:
            out.add(dev.parent)
    return frozenset(out)
