"""Facts derived from an inventory once per refresh: how VFIO sees each IOMMU group, what weakens
isolation, which devices the root filesystem pins, the group layout's fingerprint, the VFIO
backends (group, cdev, iommufd) the host offers and the names of NVIDIA's vendor-specific vGPU types.

Computed once by the inspector before any rule runs, handed to the hooks as `facts`, and carried
on the judged snapshot, so the findings, the metrics and `check` always agree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from ..model import KNOWN_TYPES, BootRecord, Device, Holder, HostFacts, Inventory
from .changes import Change, compare

VFIO_SAFE_DRIVERS = ("pci-stub",)  # besides vfio-pci, its variant drivers and other vfio* drivers
VARIANT_SUFFIXES = ("vfio_pci", "vfio-pci")  # mlx5_vfio_pci, hisi_acc_vfio_pci, nvgrace_gpu_vfio_pci ...
BRIDGE_CLASSES = ("0x0604", "0x0607", "0x0609")  # PCI-PCI, CardBus, semi-transparent bridges

WEAKENED_REASONS = ("acs_override", "unsafe_interrupts", "unsafe_noiommu")


def is_bridge(dev: Device) -> bool:
    return dev.header_type not in (None, 0) or (dev.pci_class or "").lower().startswith(BRIDGE_CLASSES)


def is_vfio_driver(driver: str | None) -> bool:
    """A driver that hands the device to user space: vfio-pci, a VFIO variant driver, pci-stub."""
    return driver is not None and (
        driver.startswith("vfio") or driver.endswith(VARIANT_SUFFIXES) or driver in VFIO_SAFE_DRIVERS)


def on_vfio(dev: Device) -> bool:
    """The device is on a VFIO driver: the kernel made it a VFIO device node (vfio-dev/), or its
    driver is one (for kernels without VFIO device nodes)."""
    return dev.vfio_dev is not None or is_vfio_driver(dev.driver)


def gets_vfio_device(dev: Device) -> bool:
    """A PCI function VFIO itself drives, so the kernel gives it a VFIO device (and, with
    CONFIG_VFIO_DEVICE_CDEV, a cdev node): `on_vfio`, but not pci-stub, which only parks the device
    away from host drivers and never makes one."""
    return dev.type == "pci" and (dev.vfio_dev is not None or (
        is_vfio_driver(dev.driver) and dev.driver not in VFIO_SAFE_DRIVERS))


VFIO_BACKENDS = ("group", "cdev", "iommufd")  # how user space opens a VFIO device, oldest first


@dataclass(frozen=True, slots=True)
class GroupStatus:
    number: int
    devices: tuple[str, ...]  # every PCI function in the group
    vfio: tuple[str, ...]  # endpoints on a vfio driver or pci-stub
    host: tuple[str, ...]  # endpoints on any other driver
    bridges: tuple[str, ...]

    @property
    def viable(self) -> bool:
        """VFIO accepts the group: no endpoint is held by a host driver."""
        return not self.host

    @property
    def mixed(self) -> bool:
        """Part of the group is handed to VMs while the host still drives the rest."""
        return bool(self.vfio) and bool(self.host)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(n for n in self.devices if n not in self.bridges)


@dataclass(frozen=True, slots=True)
class Facts:
    """What every rule, metric and report needs about the host beyond single devices."""

    groups: Mapping[int, GroupStatus]  # by group number
    weakened: Mapping[str, bool]  # each of WEAKENED_REASONS -> whether it holds
    root_functions: tuple[str, ...]  # PCI functions behind the root filesystem that are listed
    root_peers: Mapping[str, str]  # device -> the root filesystem's function whose group it shares
    layout_hash: str  # group_layout_hash()
    # group -> its functions and every device below them: what any one of them takes along (one
    # set per group, shared by reference by every member's affected set)
    group_reach: Mapping[int, frozenset[str]]
    # Devices a VM or another user-space driver has open now -> who (None: in use, holder not seen)
    in_use: Mapping[str, Holder | None]
    # The source could not tell which PCI function holds the root filesystem (procfs unreadable,
    # `/` not on a block device traced to one): `root_device_unknown`, and storage is not available.
    root_unknown: bool = False
    # What changed since the previous boot (the state file's record, `HostFacts.previous_boot`): for
    # the changes rule and the host page alike; () with no previous boot on record.
    changes: tuple[Change, ...] = ()
    # PCI functions VFIO drives (`gets_vfio_device`) without a cdev node (`vfio-dev/vfio<N>/dev`):
    # a kernel before 6.1 (no vfio-dev/ at all) or without CONFIG_VFIO_DEVICE_CDEV. Sorted.
    cdev_missing: tuple[str, ...] = ()
    # PCI functions VFIO drives whose cdev cannot be told, when that leaves the cdev backend unknown
    # (none is missing): `vfio_cdev_unknown`. Sorted.
    cdev_unknown: tuple[str, ...] = ()
    # Each of VFIO_BACKENDS -> whether this host offers it (None: cannot be told): see vfio_backends().
    backends: Mapping[str, bool | None] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(VFIO_BACKENDS)))
    # Each backend that cannot be told (None in `backends`) -> why, in a few words.
    backends_unknown: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # NVIDIA's vendor-specific vGPU: PF -> type id -> the type's name, for every PF with a VF on it
    # (an empty mapping where no VF lists a name; see vgpu_type_names()): the PFs the metrics count
    # and the names they and the JSON print, worked out once per refresh.
    vgpu_names: Mapping[str, Mapping[int, str]] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, inventory: Inventory) -> Facts:
        roots = root_pci_functions(inventory)
        vfio = vfio_backends(inventory)
        peers: dict[str, str] = {}
        for root in roots:
            for peer in inventory.group_peers(root):
                peers.setdefault(peer, root)
        return cls(
            groups=MappingProxyType(group_status(inventory)),
            weakened=MappingProxyType(weakened(inventory.host)),
            root_functions=roots,
            root_peers=MappingProxyType(peers),
            layout_hash=group_layout_hash(inventory),
            group_reach=MappingProxyType(group_reach(inventory)),
            in_use=MappingProxyType(in_use(inventory)),
            root_unknown=not roots and any(d.type == "pci" for d in inventory),
            changes=since_previous_boot(inventory),
            cdev_missing=vfio.cdev_missing,
            cdev_unknown=vfio.cdev_unknown,
            backends=MappingProxyType(vfio.offered),
            backends_unknown=MappingProxyType(vfio.why_unknown),
            vgpu_names=MappingProxyType(vgpu_type_names(inventory)),
        )

    @property
    def layout_id(self) -> int:
        """`layout_hash` as an integer, exact in a float64 sample value: published as
        `passthrough_iommu_group_layout_hash`, so an alert can fire on `changes(...[1h]) > 0`."""
        return int(self.layout_hash, 16)


def since_previous_boot(inventory: Inventory) -> tuple[Change, ...]:
    """The changes from the previous boot on record to this read; () when there is none."""
    previous = inventory.host.previous_boot
    return () if previous is None else tuple(compare(previous, BootRecord.of(inventory)))


def vgpu_type_names(inventory: Inventory) -> dict[str, Mapping[int, str]]:
    """Each PF with a VF on NVIDIA's vendor-specific vGPU -> type id -> name, from the creatable
    lists of its VFs (`Inventory.virtual_functions`), the first VF listing a type naming it. A VF
    carrying a type often lists nothing (the GPU's capacity is used), so its type's name is only
    known from a sibling; when no VF lists it any more, sysfs has no name for it at all. Most hosts
    have no such VF: one look at every device, and the per-PF pass is skipped (60 ms a refresh at
    20,000 devices)."""
    out: dict[str, Mapping[int, str]] = {}
    if not any(d.nvidia_vgpu for d in inventory):
        return out
    for pf in inventory:
        vfs = [inventory.devices[vf] for vf in inventory.virtual_functions(pf.name)]
        if not any(vf.nvidia_vgpu for vf in vfs):
            continue
        names: dict[int, str] = {}
        for vf in vfs:
            for t in vf.vgpu_creatable or ():
                names.setdefault(t.type_id, t.name)
        out[pf.name] = MappingProxyType(names)
    return out


class VfioBackends(NamedTuple):
    """What `vfio_backends` tells."""

    offered: dict[str, bool | None]  # each of VFIO_BACKENDS -> True, False, None (cannot be told)
    why_unknown: dict[str, str]  # each backend that is None -> why, in a few words
    cdev_missing: tuple[str, ...]  # functions VFIO drives that have no cdev node
    cdev_unknown: tuple[str, ...]  # functions VFIO drives whose cdev cannot be told, when none is missing


def vfio_backends(inventory: Inventory) -> VfioBackends:
    """Which ways of opening a VFIO device the host offers (True, False, None: cannot be told, and why),
    and the functions VFIO drives without a cdev node or whose cdev cannot be told.

    group: True when a VFIO group node exists (`<sysfs>/class/vfio/<N>`); never False: without one
    no device may be on VFIO yet, or the tree may predate the read (an old capture).
    cdev: over the functions VFIO drives (pci-stub does not count: it never gets a VFIO device), each
    one's `Device.vfio_cdev`: False as soon as one has no cdev; else None when one cannot be told;
    True when every one has its cdev; None when VFIO drives none. Every one is unknown when iommufd is:
    a tree without `class/misc` (which every kernel has) is not a host's whole sysfs (a source without
    sysfs, a partial capture), so a vfio-dev/ or `dev` missing from it proves nothing.
    iommufd: the iommufd device, `HostFacts.iommufd`.
    """
    host = inventory.host
    vfio = [d for d in inventory if gets_vfio_device(d)]
    why: dict[str, str] = {}
    if not host.vfio_groups:
        why["group"] = "no VFIO group node"
    if host.iommufd is None:
        why["iommufd"] = "no <sysfs>/class/misc"
    missing: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    if not vfio:
        why["cdev"] = "no VFIO-driven device"
    elif host.iommufd is None:
        why["cdev"] = "no <sysfs>/class/misc"
        unknown = tuple(sorted(d.name for d in vfio))
    else:
        missing = tuple(sorted(d.name for d in vfio if d.vfio_cdev is False))
        if not missing:
            unknown = tuple(sorted(d.name for d in vfio if d.vfio_cdev is None))
            if unknown:
                why["cdev"] = "a VFIO device node cannot be read"
    offered = {
        "group": True if host.vfio_groups else None,
        "cdev": None if "cdev" in why else not missing,
        "iommufd": host.iommufd,
    }
    return VfioBackends(offered, {b: why[b] for b in VFIO_BACKENDS if b in why}, missing, unknown)


def group_status(inventory: Inventory) -> dict[int, GroupStatus]:
    """Each IOMMU group's members sorted by how VFIO sees them."""
    out = {}
    for number, members in inventory.groups.items():
        vfio, host, bridges = [], [], []
        for name in members:
            dev = inventory.devices[name]
            if is_bridge(dev):
                bridges.append(name)
            elif on_vfio(dev):
                vfio.append(name)
            elif dev.driver is not None:
                host.append(name)
        out[number] = GroupStatus(number, members, tuple(vfio), tuple(host), tuple(bridges))
    return out


def group_reach(inventory: Inventory) -> dict[int, frozenset[str]]:
    """Each group's functions and all devices below them, of the kinds every source reports."""
    out = {}
    for number, members in inventory.groups.items():
        reach = set(members)
        for name in members:
            reach.update(inventory.descendants(name))
        out[number] = frozenset(n for n in reach if inventory.devices[n].type in KNOWN_TYPES)
    return out


def in_use(inventory: Inventory) -> dict[str, Holder | None]:
    """Which devices are open by a VM or another user-space driver now, and by whom where known.

    Evidence anyone can read: VFIO enables a PCI function only while user space has it open
    (`enable` non-zero on a VFIO driver); a USB device one of whose interfaces is bound to usbfs
    was claimed by a program. Where processes could be read, the character device a process holds
    open for writing names it, matched by device number, never by the name it was opened under:
    a VFIO group's (`class/vfio/<N>/dev`: every endpoint of the group), a VFIO cdev's
    (`vfio-dev/vfio<N>/dev`) or a USB device's (`dev`). A device in use marks the VFIO members of
    its group in use too.
    """
    out: dict[str, Holder | None] = {}
    for dev in inventory:
        if dev.type == "pci" and dev.enabled and on_vfio(dev):
            out[dev.name] = None
        elif dev.type == "usb" and dev.driver == "usbfs" and dev.parent in inventory.devices:
            out[dev.parent] = None
    holders = inventory.host.holders
    if holders:
        for number, node in inventory.host.vfio_groups.items():
            holder = holders.get(node)
            if holder is not None:
                for name in inventory.groups.get(number, ()):
                    if not is_bridge(inventory.devices[name]):  # bridges are not handed out
                        out[name] = holder
        for dev in inventory:
            if dev.char_dev is not None and (holder := holders.get(dev.char_dev)) is not None:
                out[dev.name] = holder
    # A device in use marks the VFIO members of its group in use too: once per group, not per member.
    by_group: dict[int, Holder | None] = {}
    for name, holder in out.items():
        dev = inventory.devices[name]
        if dev.type == "pci" and dev.iommu_group is not None:
            if by_group.get(dev.iommu_group) is None:
                by_group[dev.iommu_group] = holder
    for number, holder in by_group.items():
        for peer in inventory.groups.get(number, ()):
            if out.get(peer) is None and on_vfio(inventory.devices[peer]):
                out[peer] = holder if holder is not None else out.get(peer)
    return out


def _flag(params: Mapping[str, str], key: str) -> bool:
    return params.get(key, "").strip().upper() in ("Y", "1", "TRUE")


def weakened(host: HostFacts) -> dict[str, bool]:
    """Each reason of `passthrough_isolation_weakened` and whether it holds on this host."""
    return {
        "acs_override": "pcie_acs_override" in host.cmdline_params(),
        # Either backend of VFIO can be told to hand out devices without interrupt remapping.
        "unsafe_interrupts": _flag(host.module_params, "vfio_iommu_type1.allow_unsafe_interrupts")
        or _flag(host.module_params, "iommufd.allow_unsafe_interrupts"),
        "unsafe_noiommu": _flag(host.module_params, "vfio.enable_unsafe_noiommu_mode"),
    }


def group_layout(inventory: Inventory) -> dict[int, tuple[str, ...]]:
    """Group number -> sorted PCI addresses of its members: what firmware and kernel updates change."""
    return {
        number: tuple(sorted(inventory.devices[n].address or n for n in members))
        for number, members in sorted(inventory.groups.items())
    }


def group_layout_hash(inventory: Inventory) -> str:
    """A stable fingerprint of the IOMMU group layout: 12 hex digits (48 bits).

    Same groups with the same members give the same hash on every host and every run, whatever
    the drivers; a regrouping (firmware, kernel or ACS setting changed) gives another one.
    """
    canonical = json.dumps({str(k): v for k, v in group_layout(inventory).items()}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def root_pci_functions(inventory: Inventory) -> tuple[str, ...]:
    """The PCI functions behind the root filesystem that this inventory lists."""
    roots = inventory.host.root_devices or ()
    return tuple(n for n in roots if (d := inventory.get(n)) is not None and d.type == "pci")
