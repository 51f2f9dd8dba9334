"""Capacity and health from sysfs attributes in the kernel's own formats (Documentation/ABI/testing/
sysfs-bus-pci, sysfs-bus-pci-devices-aer_stats, sysfs-bus-vfio-mdev), worked out by hand."""

from __future__ import annotations

import os

import pytest

from passthrough_exporter.rendering.metrics import MetricOptions, render
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.reading.sysfs import Trace
from passthrough_exporter.reading.sysfs.attrs import BadAttribute, link_width, numa_node, parse_int, sriov_count
from passthrough_exporter.reading.sysfs.devices import aer_total, link_speed, power_state
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.hosts import INTEL, NVIDIA
from tests.support.local import judge_tree
from tests.support.sysfs_builder import SysfsTree

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
    health = device_object(snap, gpu.name)["health"]
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


def downtrained(snap) -> list:
    return [f for f in snap.findings if f.code == "link_downtrained"]


def test_a_link_is_judged_against_its_slot_once_per_physical_link(tree):
    """Both cards trained x8 of x16. The first sits in a slot wired x8: the narrower of x16 and x8 is
    x8, which it has. The second's slot is x16: x8 is below it, one finding on function 0 only, though
    both its functions report the same link. An idle link's lower speed is never a finding."""
    hosts.slot_widths(tree)
    SysfsTree.write(tree.pci_path("0000:01:00.0") / "current_link_speed", "2.5 GT/s PCIe")
    SysfsTree.write(tree.pci_path("0000:01:00.0") / "max_link_speed", "16.0 GT/s PCIe")
    snap = judge_tree(tree)
    assert dict(snap.inventory.errors) == {}
    assert snap.inventory.devices["pci_0000_00_03_0"].link_width == (8, 16)  # bridges are read, never judged
    found = downtrained(snap)
    assert [(f.severity, f.subject) for f in found] == [("warning", "pci_0000_02_00_0")]
    assert found[0].message == ("pci_0000_02_00_0 (0000:02:00.0) trained its PCIe link at x8 of x16: "
                                "it runs with a fraction of its bandwidth")
    text = render(snap).decode()
    assert text.count('passthrough_finding{code="link_downtrained"') == 1
    assert 'passthrough_finding{code="link_downtrained",severity="warning",subject="pci_0000_02_00_0"} 1.0' in text
    assert 'passthrough_pcie_link_speed_gts{device="pci_0000_01_00_0",kind="current"} 2.5' in text


def test_the_slot_width_is_named_when_it_limits(tree):
    """05:00.0, a x16 card in a slot wired x8, trained x4: below the slot's x8. 06:00.0's root port
    has no link attributes: the card's own x4 is the measure. 07:00.1 is the only function present
    of its card, so it is the lowest and speaks for the link."""
    hosts.base(tree)
    tree.pci("0000:00:1c.0", INTEL, 0x1D10, 0x060400, driver="pcieport", group=5, reset_method=None, link_width=(4, 8))
    tree.pci("0000:05:00.0", NVIDIA, 0x2204, 0x030000, parent="0000:00:1c.0", group=6, link_width=(4, 16))
    tree.pci("0000:00:1d.0", INTEL, 0x1D12, 0x060400, driver="pcieport", group=7, reset_method=None)
    tree.pci("0000:06:00.0", INTEL, 0x1533, 0x020000, parent="0000:00:1d.0", group=8, link_width=(2, 4))
    tree.pci("0000:00:1e.0", INTEL, 0x1D14, 0x060400, driver="pcieport", group=9, reset_method=None, link_width=(1, 4))
    tree.pci("0000:07:00.1", INTEL, 0x1533, 0x020000, parent="0000:00:1e.0", group=10, link_width=(1, 4))
    messages = {f.subject: f.message for f in downtrained(judge_tree(tree))}
    assert messages == {
        "pci_0000_05_00_0": "pci_0000_05_00_0 (0000:05:00.0) trained its PCIe link at x4 of x8 (the slot's width; "
                            "the card supports x16): it runs with a fraction of its bandwidth",
        "pci_0000_06_00_0": "pci_0000_06_00_0 (0000:06:00.0) trained its PCIe link at x2 of x4: "
                            "it runs with a fraction of its bandwidth",
        "pci_0000_07_00_1": "pci_0000_07_00_1 (0000:07:00.1) trained its PCIe link at x1 of x4: "
                            "it runs with a fraction of its bandwidth",
    }


def test_a_d3cold_device_is_not_woken_but_its_cached_max_speed_is_read(tree):
    """Every link file is there, with values that would be read were the device awake: only
    max_link_speed (the kernel's cached copy) and power_state are read; config space, the current
    link and max_link_width (a config read) are not touched."""
    hosts.base(tree)
    path = tree.pci("0000:01:00.0", NVIDIA, 0x2204, 0x030000, driver="vfio-pci", group=2, reset_method="flr",
                    power_state="D3cold", link_width=(16, 16),
                    attrs={"current_link_speed": "16.0 GT/s PCIe", "max_link_speed": "32.0 GT/s PCIe"})
    trace = Trace()
    inv = SysfsSource(str(tree.sys), str(tree.proc)).read(trace)
    dev = inv.devices["pci_0000_01_00_0"]
    assert dev.link_speed == (None, 32.0) and dev.link_width == (None, None)
    assert dev.header_type is None and dev.power_state == "D3cold" and dict(inv.errors) == {}
    real = os.path.realpath(path)
    touched = {os.path.basename(p) for p in trace.files if os.path.dirname(p) == real}
    assert {"max_link_speed", "power_state"} <= touched
    assert not touched & {"config", "current_link_speed", "current_link_width", "max_link_width"}
    snap = judge_tree(tree)
    assert device_object(snap, dev.name)["health"]["link_speed_gts"] == {"current": None, "max": 32.0}
    assert device_object(snap, dev.name)["health"]["link_width"] == {"current": None, "max": None}
    text = render(snap).decode()
    assert 'passthrough_pcie_link_speed_gts{device="pci_0000_01_00_0",kind="max"} 32.0' in text
    assert 'passthrough_pcie_link_speed_gts{device="pci_0000_01_00_0",kind="current"}' not in text
    assert 'passthrough_pcie_link_width{device="pci_0000_01_00_0"' not in text
    assert not downtrained(snap)


def test_unknown_and_error_power_states_are_kept_as_they_are(tree):
    """The ABI's "error" (the kernel could not read the state) and "unknown" are states, told apart
    from a device without the file: in the JSON and as the one power-state series of the device."""
    hosts.base(tree)
    tree.pci("0000:00:02.0", INTEL, 0x3E92, 0x030000, driver="i915", group=1, power_state="error")
    tree.pci("0000:00:14.0", INTEL, 0xA36D, 0x0C0330, driver="xhci_hcd", group=3, power_state="unknown")
    tree.pci("0000:00:16.0", INTEL, 0xA360, 0x078000, driver="mei_me", group=4)  # no power_state file
    snap = judge_tree(tree)
    assert dict(snap.inventory.errors) == {}
    states = {n: device_object(snap, n)["health"]["power_state"]
              for n in ("pci_0000_00_02_0", "pci_0000_00_14_0", "pci_0000_00_16_0")}
    assert states == {"pci_0000_00_02_0": "error", "pci_0000_00_14_0": "unknown", "pci_0000_00_16_0": None}
    series = [line for line in render(snap).decode().splitlines() if line.startswith("passthrough_device_power_state{")]
    assert series == ['passthrough_device_power_state{device="pci_0000_00_02_0",state="error"} 1.0',
                      'passthrough_device_power_state{device="pci_0000_00_14_0",state="unknown"} 1.0']


@pytest.mark.parametrize("parse, text, expected", [
    (link_width, "32", 32), (link_width, "1", 1), (link_width, "0", None), (link_width, "255", None),
    (link_width, "33", BadAttribute), (link_width, "-4", BadAttribute), (link_width, "x16", BadAttribute),
    (numa_node, "-1", None), (numa_node, "1023", 1023), (numa_node, "-2", BadAttribute),
    (numa_node, "1024", BadAttribute),
    (sriov_count, "65535", 65535), (sriov_count, "65536", BadAttribute), (sriov_count, "-1", BadAttribute),
    (parse_int, str(2**63 - 1), 2**63 - 1), (parse_int, str(2**63), BadAttribute), (parse_int, "-1", BadAttribute),
    (parse_int, "+5", BadAttribute), (parse_int, "1_000", BadAttribute), (parse_int, "\u0663", BadAttribute),
    (link_speed, "64.0 GT/s PCIe", 64.0), (link_speed, "2.5 GT/s", 2.5), (link_speed, "Unknown", None),
    (link_speed, "0 GT/s PCIe", BadAttribute), (link_speed, "1000.5 GT/s", BadAttribute),
    (link_speed, "1e3 GT/s", BadAttribute), (link_speed, "-8.0 GT/s", BadAttribute),
    (link_speed, "infinity GT/s", BadAttribute), (link_speed, "NaN GT/s", BadAttribute),
    (aer_total, f"TOTAL_ERR_COR {2**63}", BadAttribute), (aer_total, "TOTAL_ERR_COR -3", BadAttribute),
    (power_state, "error", "error"), (power_state, "unknown", "unknown"), (power_state, "D3cold", "D3cold"),
    (power_state, "Unknown", BadAttribute),
])
def test_numbers_are_bounded_where_they_are_parsed(parse, text, expected):
    """The kernel's "no value" spellings (a link that is down reads width 0, an unknown maximum 255,
    no NUMA node -1) are unknown; anything out of range is garbage."""
    if expected is BadAttribute:
        with pytest.raises(BadAttribute):
            parse(text)
    else:
        assert parse(text) == expected


def test_an_asleep_function_0_does_not_silence_the_link_of_function_1(tree):
    """The second slot_widths card (x16 slot, trained x8) with function 0 in D3cold: its link is not
    read, so function 1, the lowest function whose link is known, reports the one finding."""
    hosts.slot_widths(tree)
    SysfsTree.write(tree.pci_path("0000:02:00.0") / "power_state", "D3cold")
    assert [f.subject for f in downtrained(judge_tree(tree))] == ["pci_0000_02_00_1"]
