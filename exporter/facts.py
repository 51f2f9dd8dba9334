"""Facts derived from an inventory once per refresh: how VFIO sees each IOMMU group, what weakens
isolation, which devices the root filesystem pins, and the group layout's fingerprint.

Computed once by the inspector before any rule runs, handed to the hooks as `facts`, and carried
on the judged snapshot, so the findings, the metrics and `check` always agree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .model import KNOWN_TYPES, Device, HostFacts, Inventory

VFIO_SAFE_DRIVERS = ("pci-stub",)  # besides vfio-pci and other vfio-* drivers
BRIDGE_CLASSES = ("0x0604", "0x0607", "0x0609")  # PCI-PCI, CardBus, semi-transparent bridges

WEAKENED_REASONS = ("acs_override", "unsafe_interrupts", "unsafe_noiommu")


def is_bridge(dev: Device) -> bool:
    return dev.header_type not in (None, 0) or (dev.pci_class or "").lower().startswith(BRIDGE_CLASSES)


def is_vfio_driver(driver: str | None) -> bool:
    return driver is not None and (driver.startswith("vfio") or driver in VFIO_SAFE_DRIVERS)


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

    @classmethod
    def of(cls, inventory: Inventory) -> Facts:
        roots = root_pci_functions(inventory)
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
        )

    @property
    def layout_id(self) -> int:
        """`layout_hash` as an integer, exact in a float64 sample value: published as
        `passthrough_iommu_group_layout_hash`, so an alert can fire on `changes(...[1h]) > 0`."""
        return int(self.layout_hash, 16)


def group_status(inventory: Inventory) -> dict[int, GroupStatus]:
    """Each IOMMU group's members sorted by how VFIO sees them."""
    out = {}
    for number, members in inventory.groups.items():
        vfio, host, bridges = [], [], []
        for name in members:
            dev = inventory.devices[name]
            if is_bridge(dev):
                bridges.append(name)
            elif is_vfio_driver(dev.driver):
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


def _flag(params: Mapping[str, str], key: str) -> bool:
    return params.get(key, "").strip().upper() in ("Y", "1", "TRUE")


def weakened(host: HostFacts) -> dict[str, bool]:
    """Each reason of `passthrough_isolation_weakened` and whether it holds on this host."""
    return {
        "acs_override": "pcie_acs_override" in host.cmdline_params(),
        "unsafe_interrupts": _flag(host.module_params, "vfio_iommu_type1.allow_unsafe_interrupts"),
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
