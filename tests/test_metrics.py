"""The metrics, read through a registry of the test's own, and the whole exposition against a golden file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

from passthrough_exporter.buildinfo import revision
from passthrough_exporter.rendering.metrics import MetricOptions, SnapshotCollector, render
from tests.support import hosts
from tests.support.local import judge_tree

GOLDEN = Path(__file__).parent / "golden" / "workstation.prom"
TIMING = ("passthrough_refresh_duration_seconds", "passthrough_last_refresh_timestamp_seconds")


def registry_for(snap, options=None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snap, options))
    return reg


@pytest.fixture
def workstation(tree):
    hosts.workstation(tree)
    return judge_tree(tree)


def test_device_series(workstation):
    reg = registry_for(workstation)
    gpu = {"device": "pci_0000_01_00_0", "type": "pci"}
    assert reg.get_sample_value("passthrough_device_eligible", gpu) == 1
    assert reg.get_sample_value("passthrough_device_affected_devices", gpu) == 1
    assert reg.get_sample_value("passthrough_device_info", {
        **gpu, "parent": "pci_0000_00_01_0", "vendor_id": "0x10de", "product_id": "0x2484",
        "class": "0x030000", "driver": "nvidia", "iommu_group": "2", "numa_node": "",
        "pcie_root": "pci0000:00"}) == 1
    nic = {"device": "pci_0000_06_00_0", "type": "pci"}
    # 8 group peers + 6 below them (usb3, 3-1, its interface; host2, its target, its LUN)
    assert reg.get_sample_value("passthrough_device_affected_devices", nic) == 14
    # Interfaces, hosts and targets cannot be passed: no per-device series by default.
    assert reg.get_sample_value("passthrough_device_eligible", {"device": "usb_1_1_2_1_0", "type": "usb"}) is None
    assert reg.get_sample_value("passthrough_device_eligible", {"device": "usb_1_1_2", "type": "usb_device"}) == 1


def test_group_and_host_series(workstation):
    reg = registry_for(workstation)
    assert reg.get_sample_value("passthrough_iommu_group_devices", {"group": "5"}) == 9
    assert reg.get_sample_value("passthrough_iommu_group_host_devices", {"group": "5"}) == 4  # xhci, ahci, 2x igb
    assert reg.get_sample_value("passthrough_iommu_group_viable", {"group": "5"}) == 0
    # Group 32 holds one VF on vfio-pci: viable, one vfio device.
    assert reg.get_sample_value("passthrough_iommu_group_viable", {"group": "32"}) == 1
    assert reg.get_sample_value("passthrough_iommu_group_vfio_devices", {"group": "32"}) == 1
    assert reg.get_sample_value("passthrough_iommu_enabled") == 1
    assert reg.get_sample_value("passthrough_isolation_weakened", {"reason": "acs_override"}) == 0
    assert reg.get_sample_value("passthrough_source_up", {"source": "sysfs"}) == 1
    assert reg.get_sample_value("passthrough_collect_errors_total", {"kind": "vanished"}) == 0


def test_series_can_be_narrowed(workstation):
    full = registry_for(workstation)
    narrow = registry_for(workstation, MetricOptions(device_types=("pci",), include_vfs=False))
    count = lambda reg: len([s for m in reg.collect() if m.name == "passthrough_device_eligible" for s in m.samples])  # noqa: E731
    assert count(full) == 30  # 19 PCI functions + 7 USB devices (root hubs and hubs included) + 4 LUNs
    assert count(narrow) == 17  # 19 PCI functions minus the two VFs
    assert narrow.get_sample_value("passthrough_device_eligible", {"device": "pci_0000_81_02_0", "type": "pci"}) is None
    assert narrow.get_sample_value("passthrough_iommu_group_devices", {"group": "31"}) == 1  # groups stay


def test_weakened_isolation(tree):
    hosts.base(tree)
    tree.cmdline("root=/dev/sda1 pcie_acs_override=downstream,multifunction")
    tree.module_param("vfio_iommu_type1", "allow_unsafe_interrupts", "Y")
    reg = registry_for(judge_tree(tree))
    assert reg.get_sample_value("passthrough_isolation_weakened", {"reason": "acs_override"}) == 1
    assert reg.get_sample_value("passthrough_isolation_weakened", {"reason": "unsafe_interrupts"}) == 1
    assert reg.get_sample_value("passthrough_isolation_weakened", {"reason": "unsafe_noiommu"}) == 0


def without_timing(text: str) -> str:
    """The text without what changes from run to run: timings, and the commit in build_info."""
    text = text.replace(f'revision="{revision()}"', 'revision="REVISION"')
    return "".join(line + "\n" for line in text.splitlines() if not any(t in line for t in TIMING))


def test_golden_exposition(workstation):
    """The whole /metrics text for the workstation fixture host, checked by hand line by line.

    Regenerate with PASSTHROUGH_UPDATE_GOLDEN=1 and read the diff before committing it.
    """
    got = without_timing(render(workstation).decode())
    if os.environ.get("PASSTHROUGH_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()
