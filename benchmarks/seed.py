"""A reference implementation of the seed's (Kimchi's) affected-devices algorithm, for comparison.

Kimchi answered `_passthrough_affected_by=DEV` by taking the device's IOMMU group (walking up to
the nearest ancestor that has one), then scanning every device and walking each one's parents the
same way to find the devices in that group; without a group it fell back to the device's children.
Kimchi also re-listed every device from libvirt for each question. `affected_all` leaves that out
(the device dicts are built once: the algorithm alone); `affected_all_relisting` puts it back, with
one read of the sysfs source standing in for libvirt's listing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from passthrough_exporter.model import Inventory

DevInfo = dict[str, Any]


def dev_infos(inventory: Inventory) -> list[DevInfo]:
    """Device dicts shaped like Kimchi's: `iommuGroup` only present where libvirt reports one."""
    out = []
    for d in inventory:
        info: DevInfo = {"name": d.name, "parent": d.parent, "device_type": d.type}
        if d.iommu_group is not None:
            info["iommuGroup"] = d.iommu_group
        out.append(info)
    return out


def _same_iommugroup_devices(infos: list[DevInfo], device: DevInfo) -> list[str]:
    dev_dict = {i["name"]: i for i in infos}  # as the seed did, once per question
    def get_iommu_group(info: DevInfo) -> int:
        # A child belongs to the same IOMMU group as its parent.
        if "iommuGroup" in info:
            return info["iommuGroup"]
        parent = info["parent"]
        while parent is not None:
            parent_info = dev_dict.get(parent)
            if parent_info is None:
                break
            if "iommuGroup" in parent_info:
                return parent_info["iommuGroup"]
            parent = parent_info["parent"]
        return -1

    group = get_iommu_group(device)
    if group == -1:
        return []
    return [i["name"] for i in infos if i["name"] != device["name"] and get_iommu_group(i) == group]


def _children(infos: list[DevInfo], device: DevInfo) -> list[str]:
    out, frontier = [], {device["name"]}
    while frontier:  # Kimchi scanned the list once per tree level
        level = [i["name"] for i in infos if i["parent"] in frontier]
        out += level
        frontier = set(level)
    return out


def affected_by(infos: list[DevInfo], device: DevInfo) -> list[str]:
    found = _same_iommugroup_devices(infos, device)
    return found or _children(infos, device)


def affected_all(infos: list[DevInfo], sample: list[DevInfo] | None = None) -> int:
    """Affected sets of every device (or of `sample`); returns the total size so nothing is optimised away."""
    return sum(len(affected_by(infos, d)) for d in (infos if sample is None else sample))


def affected_all_relisting(read: Callable[[], Inventory], sample: list[str]) -> int:
    """Affected sets of the devices named in `sample`, re-listing every device for each question."""
    total = 0
    for name in sample:
        infos = dev_infos(read())
        total += len(affected_by(infos, next(i for i in infos if i["name"] == name)))
    return total
