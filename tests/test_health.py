"""Capacity and health from sysfs attributes in the kernel's own formats (Documentation/ABI/testing/
sysfs-bus-pci, sysfs-bus-pci-devices-aer_stats, sysfs-bus-vfio-mdev), worked out by hand."""

from __future__ import annotations

import hosts
from helpers import judge_tree
from hosts import INTEL, NVIDIA

from passthrough_exporter.metrics import MetricOptions, render

AER_CORRECTABLE = """Receiver Error 2
Bad TLP 0
Bad DLLP 1
RELAY_NUM Rollover 0
Replay Timer Timeout 0
Advisory Non-Fatal 0
Corrected Internal Error 0
Header Log Overflow 0
TOTAL_ERR_COR 3"""
AER_FATAL = """Undefined 0
Data Link Protocol 1
Surprise Down Error 0
Poisoned TLP 0
Flow Control Protocol 0
Completion Timeout 0
Completer Abort 0
Unexpected Completion 0
Receiver Overflow 0
Malformed TLP 0
ECRC 0
Unsupported Request 0
ACS Violation 0
Uncorrectable Internal Error 0
MC Blocked TLP 0
AtomicOp Egress Blocked 0
TLP Prefix Blocked Error 0
Poisoned TLP Egress Blocked 0
TOTAL_ERR_FATAL 1"""
AER_NONFATAL = AER_FATAL.replace("Data Link Protocol 1", "Data Link Protocol 0").replace(
    "Completion Timeout 0", "Completion Timeout 5").replace("TOTAL_ERR_FATAL 1", "TOTAL_ERR_NONFATAL 5")


def gpu_host(tree):
    """A GPU that trained x4 of x16 at 8 of 16 GT/s, one fatal and five non-fatal errors, in D0;
    a second GPU asleep in D3cold with a 16 GT/s x16 link; a vGPU card with two types, one in use."""
    hosts.base(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2204, 0x030000, driver="vfio-pci", group=2, reset_method="flr", attrs={
        "current_link_speed": "8.0 GT/s PCIe", "max_link_speed": "16.0 GT/s PCIe",
        "current_link_width": "4", "max_link_width": "16", "power_state": "D0",
        "aer_dev_correctable": AER_CORRECTABLE, "aer_dev_fatal": AER_FATAL, "aer_dev_nonfatal": AER_NONFATAL})
    tree.pci("0000:02:00.0", NVIDIA, 0x2204, 0x030000, driver="vfio-pci", group=3, reset_method="flr", attrs={
        "current_link_speed": "Unknown", "max_link_speed": "16.0 GT/s PCIe",
        "current_link_width": "16", "max_link_width": "16", "power_state": "D3cold"})
    tree.pci("0000:41:00.0", NVIDIA, 0x1EB8, 0x030200, driver="nvidia", group=4, reset_method="flr",
             attrs={"current_link_speed": "8 GT/s", "max_link_speed": "8 GT/s"})  # an older kernel's spelling
    tree.mdev_type("0000:41:00.0", "nvidia-222", "GRID T4-1Q", available=14, instances=2)
    tree.mdev_type("0000:41:00.0", "nvidia-223", "GRID T4-2Q", available=0)


def test_link_aer_and_power_are_read_in_the_kernels_format(tree):
    gpu_host(tree)
    snap = judge_tree(tree)
    assert dict(snap.inventory.errors) == {}
    gpu = snap.inventory.devices["pci_0000_01_00_0"]
    assert gpu.link_speed == (8.0, 16.0) and gpu.link_width == (4, 16)
    assert gpu.aer_errors == (3, 5, 1) and gpu.power_state == "D0"
    asleep = snap.inventory.devices["pci_0000_02_00_0"]
    # Asleep in D3cold: neither its config space nor its current link is read, which would wake it;
    # its maximum speed is the kernel's cached copy, read.
    assert asleep.link_speed == (None, 16.0) and asleep.link_width == (None, None)
    assert asleep.header_type is None and asleep.power_state == "D3cold"
    assert asleep.aer_errors == (None,) * 3
    assert snap.inventory.devices["pci_0000_41_00_0"].link_speed == (8.0, 8.0)
    health = snap.device_object(gpu.name)["health"]
    assert health == {"link_speed_gts": {"current": 8.0, "max": 16.0}, "link_width": {"current": 4, "max": 16},
                      "aer_errors": {"correctable": 3, "nonfatal": 5, "fatal": 1}, "power_state": "D0"}


def test_findings_for_a_downtrained_link_and_fatal_errors(tree):
    gpu_host(tree)
    snap = judge_tree(tree)
    found = {(f.code, f.severity, f.subject) for f in snap.findings if f.code in ("link_downtrained", "pcie_fatal_errors")}
    assert found == {("link_downtrained", "warning", "pci_0000_01_00_0"),
                     ("pcie_fatal_errors", "critical", "pci_0000_01_00_0")}
    link = next(f for f in snap.findings if f.code == "link_downtrained")
    assert "at x4 of x16" in link.message and link.fix


def test_health_and_capacity_metrics(tree):
    gpu_host(tree)
    text = render(judge_tree(tree)).decode()
    for line in (
        'passthrough_pcie_link_speed_gts{device="pci_0000_01_00_0",kind="current"} 8.0',
        'passthrough_pcie_link_speed_gts{device="pci_0000_01_00_0",kind="max"} 16.0',
        'passthrough_pcie_link_width{device="pci_0000_01_00_0",kind="current"} 4.0',
        'passthrough_pcie_aer_errors_total{device="pci_0000_01_00_0",severity="correctable"} 3.0',
        'passthrough_pcie_aer_errors_total{device="pci_0000_01_00_0",severity="nonfatal"} 5.0',
        'passthrough_pcie_aer_errors_total{device="pci_0000_01_00_0",severity="fatal"} 1.0',
        'passthrough_device_power_state{device="pci_0000_01_00_0",state="D0"} 1.0',
        'passthrough_device_power_state{device="pci_0000_02_00_0",state="D3cold"} 1.0',
        'passthrough_mdev_available_instances{device="pci_0000_41_00_0",mdev_type="nvidia-222",name="GRID T4-1Q"} 14.0',
        'passthrough_mdev_available_instances{device="pci_0000_41_00_0",mdev_type="nvidia-223",name="GRID T4-2Q"} 0.0',
        'passthrough_mdev_instances{device="pci_0000_41_00_0",mdev_type="nvidia-222"} 2.0',
        'passthrough_mdev_instances{device="pci_0000_41_00_0",mdev_type="nvidia-223"} 0.0',
    ):
        assert line in text, line
    assert 'passthrough_pcie_link_speed_gts{device="pci_0000_02_00_0",kind="current"}' not in text  # asleep
    assert 'passthrough_pcie_link_speed_gts{device="pci_0000_02_00_0",kind="max"} 16.0' in text
    # Two GPUs of one model on no NUMA node: both on vfio-pci and free; the vGPU card is carved up.
    assert ('passthrough_pool_devices{numa_node="",product="",product_id="0x2204",state="available",type="pci",'
            'vendor_id="0x10de"} 2.0') in text
    assert ('passthrough_pool_devices{numa_node="",product="",product_id="0x1eb8",state="blocked",type="pci",'
            'vendor_id="0x10de"} 1.0') in text


def test_health_series_can_be_narrowed(tree):
    gpu_host(tree)
    text = render(judge_tree(tree), MetricOptions(include_health=False)).decode()
    assert "\npassthrough_pcie_link_width{" not in text and "\npassthrough_pcie_aer_errors_total{" not in text
    assert "\npassthrough_device_power_state{" not in text
    assert 'passthrough_mdev_instances{device="pci_0000_41_00_0",mdev_type="nvidia-222"} 2.0' in text  # capacity stays


def test_a_virtual_function_reads_no_link_and_sriov_counts_come_from_the_pf(tree):
    hosts.base(tree)
    tree.pci("0000:3b:00.0", INTEL, 0x1572, 0x020000, driver="i40e", group=20, sriov_totalvfs=64,
             attrs={"current_link_width": "8", "max_link_width": "8"})
    tree.pci("0000:3b:02.0", INTEL, 0x154C, 0x020000, driver="iavf", group=21, physfn="0000:3b:00.0",
             attrs={"current_link_width": "1", "max_link_width": "8"})  # a VF's link is its PF's: not read
    snap = judge_tree(tree)
    assert snap.inventory.devices["pci_0000_3b_02_0"].link_width == (None, None)
    assert "link_downtrained" not in {f.code for f in snap.findings}
    text = render(snap).decode()
    assert 'passthrough_sriov_vfs{device="pci_0000_3b_00_0",kind="total"} 64.0' in text
    assert 'passthrough_sriov_vfs{device="pci_0000_3b_00_0",kind="enabled"} 1.0' in text


def test_garbage_health_attributes_are_counted_not_fatal(tree):
    hosts.base(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2204, 0x030000, group=2, attrs={
        "current_link_speed": "fast", "aer_dev_fatal": "no totals here", "power_state": "D4"})
    snap = judge_tree(tree)
    assert dict(snap.inventory.errors) == {"bad_attribute": 3}
    dev = snap.inventory.devices["pci_0000_01_00_0"]
    assert dev.link_speed == (None, None) and dev.aer_errors == (None, None, None) and dev.power_state is None
    assert snap.verdicts[dev.name].eligible
