"""The PCIe root complex a function hangs below (`pcie_root`), spelled as Kubernetes DRA's standard
attribute `resource.kubernetes.io/pcieRoot` spells it: `pci<domain>:<bus>`, the root bus directory of
/sys/devices. Answers worked out by hand from DESIGN.md (Metrics, `pcie_root`) and `hosts.two_roots`.
"""

from __future__ import annotations

import pytest

from passthrough_exporter.reading.sysfs.attrs import pcie_root
from passthrough_exporter.rendering.metrics import render
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.local import judge_tree

ROOTS = {
    "pci_0000_00_00_0": "pci0000:00", "pci_0000_00_01_0": "pci0000:00", "pci_0000_01_00_0": "pci0000:00",
    "pci_0000_00_14_0": "pci0000:00",
    "pci_0000_40_00_0": "pci0000:40", "pci_0000_40_01_1": "pci0000:40", "pci_0000_41_00_0": "pci0000:40",
    "pci_0000_41_00_1": "pci0000:40",
}


def test_each_function_names_its_root_complex(tree):
    hosts.two_roots(tree)
    snap = judge_tree(tree)
    got = {d.name: d.pcie_root for d in snap.inventory if d.pcie_root is not None}
    assert got == ROOTS  # PCI functions only: a USB device or a SCSI disk has none
    assert dict(snap.inventory.errors) == {}
    assert device_object(snap, "pci_0000_41_00_0")["pcie_root"] == "pci0000:40"
    assert device_object(snap, "pci_0000_01_00_0")["pcie_root"] == "pci0000:00"
    assert "pcie_root" not in device_object(snap, "usb_1_1_2")


def test_the_info_series_carries_it(tree):
    hosts.two_roots(tree)
    text = render(judge_tree(tree)).decode()
    info = [line for line in text.splitlines() if line.startswith("passthrough_device_info{")]
    gpu = [line for line in info if 'device="pci_0000_41_00_0"' in line]
    assert gpu == ['passthrough_device_info{class="0x030000",device="pci_0000_41_00_0",driver="nvidia",'
                   'iommu_group="22",numa_node="",parent="pci_0000_40_01_1",pcie_root="pci0000:40",'
                   'product_id="0x2684",type="pci",vendor_id="0x10de"} 1.0']
    mouse = [line for line in info if 'device="usb_1_1_2"' in line]
    assert len(mouse) == 1 and 'pcie_root=""' in mouse[0]


@pytest.mark.parametrize("path, root", [
    ("/sys/devices/pci0000:40/0000:40:01.1/0000:41:00.0", "pci0000:40"),
    # Behind an Intel VMD the devices sit on a root bus of their own inside the VMD's function: the
    # outermost root bus is the complex they share with the VMD.
    ("/sys/devices/pci0000:00/0000:00:0e.0/pci10000:00/10000:00:02.0/10000:01:00.0", "pci0000:00"),
    # Platform host bridges (arm64 SoCs): the root bus directory is below the bridge's device.
    ("/sys/devices/platform/soc/fe800000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0", "pci0000:00"),
    ("/sys/devices/pci0001:c0/0001:c0:00.0", "pci0001:c0"),
    ("/tmp/capture/bus/pci/devices/0000:00:01.0", None),  # a flat copy: no tree, no answer
    ("/sys/devicesX/pci0000:40/0000:40:01.1", None),
    ("/sys/devices/pciXXXX:00/0000:00:01.0", None),
    ("/sys/devices/pci0000:0/0000:00:01.0", None),
    (None, None),
])
def test_root_bus_from_a_path(path, root):
    assert pcie_root(path) == root


def test_only_below_the_sysfs_devices_directory():
    assert pcie_root("/srv/pci0000:ff/sys/devices/pci0000:40/0000:40:01.1", "/srv/pci0000:ff/sys/devices") == "pci0000:40"
    assert pcie_root("/srv/pci0000:ff/sys/bus/pci/devices/0000:40:01.1", "/srv/pci0000:ff/sys/devices") is None


def test_a_sysfs_below_a_root_bus_named_directory(tmp_path):
    """The sysfs' own location never counts: only the directories below its devices/ do."""
    from tests.support.sysfs_builder import SysfsTree
    tree = SysfsTree(tmp_path / "pci0000:ff" / "host")
    hosts.two_roots(tree)
    snap = judge_tree(tree)
    assert {d.name: d.pcie_root for d in snap.inventory if d.pcie_root is not None} == ROOTS
