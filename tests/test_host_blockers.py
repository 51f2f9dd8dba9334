"""The host must be able to assign: without IOMMU groups, or without interrupt remapping (unsafe
interrupts not allowed), no PCI function is available, and each says why. USB and SCSI need no IOMMU.

Answers worked out by hand from DESIGN.md ("Live state", "The host must be able to assign").
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from passthrough_exporter.rendering.metrics import render
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.local import judge_tree
from tests.support.process import EXE

IOMMU_OFF = "the IOMMU is off: VFIO cannot assign devices on this host"
REMAPPING_OFF = "interrupt remapping is off: VFIO refuses to assign devices on this host"


def iommu_off_with_flash_drive(tree):
    """The machine the tests run on, plus a USB flash drive: host bridge, virtio-blk 00:02.0 holding
    `/`, virtio NIC 00:03.0, xHCI 00:14.0 with the storage stick 1-1.4 below a hub; no IOMMU groups."""
    hosts.virtio_root(tree, groups=False)
    hosts.usb_tree(tree)
    # usb_tree gives the xHCI group 3: take groups away, as a kernel with the IOMMU off has none.
    (tree.pci_path("0000:00:14.0") / "iommu_group").unlink()
    shutil.rmtree(tree.sys / "kernel" / "iommu_groups")
    return tree


def test_iommu_off_blocks_every_pci_function_but_not_usb(tree):
    snap = judge_tree(iommu_off_with_flash_drive(tree))
    assert not snap.inventory.host.iommu_groups_present
    # virtio NIC and xHCI: eligible endpoints, blocked by the host, with the reason in the object.
    for name in ("pci_0000_00_03_0", "pci_0000_00_14_0"):
        obj = device_object(snap, name)
        assert (obj["eligible"], obj["available"], obj["blocked_by"]) == (True, False, IOMMU_OFF), name
        assert snap.states[name] == "blocked"
    # The root disk's controller is not eligible at all (it holds `/`); the bridge is infrastructure.
    assert snap.states["pci_0000_00_02_0"] == "ineligible" and snap.states["pci_0000_00_00_0"] == "ineligible"
    # USB needs no IOMMU: the mouse and the stick are forwarded alone and stay available (the root is known).
    for name in ("usb_1_1_2", "usb_1_1_4", "scsi_6_0_0_0"):
        assert snap.states[name] == "available" and device_object(snap, name)["blocked_by"] is None, name
    text = render(snap).decode()
    assert 'passthrough_device_available{device="pci_0000_00_03_0",type="pci"} 0.0' in text
    assert 'passthrough_device_available{device="usb_1_1_4",type="usb_device"} 1.0' in text
    assert ('passthrough_pool_devices{numa_node="",product="",product_id="0x1000",state="blocked",type="pci",'
            'vendor_id="0x1af4"} 1.0') in text


def test_iommu_off_on_the_command_line(tree):
    iommu_off_with_flash_drive(tree)
    args = ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc), "--path.pci-ids", "none"]
    out = subprocess.run([EXE, "devices", "--available", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["scsi_6_0_0_0", "usb_1_1_2", "usb_1_1_4"]
    out = subprocess.run([EXE, "devices", "--cap", "pci", "--json", *args], capture_output=True, text=True, timeout=60)
    blocked = {d["name"]: d["blocked_by"] for d in json.loads(out.stdout) if d["blocked_by"]}
    assert blocked == {"pci_0000_00_03_0": IOMMU_OFF, "pci_0000_00_14_0": IOMMU_OFF}


@pytest.mark.parametrize("unsafe, expected", [
    (None, REMAPPING_OFF),  # the module says nothing: VFIO's default refuses
    ("N", REMAPPING_OFF),
    ("Y", None),  # allowed (and reported critical as unsafe_interrupts): VFIO assigns
])
def test_groups_without_interrupt_remapping(tree, unsafe, expected):
    """IOMMU on (groups), x86 interrupt chips without IR-: VFIO refuses to assign unless unsafe
    interrupts are allowed. The NIC 00:19.0 (group 7, e1000e) and the GPU with its audio (group 2)."""
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    hosts.nvme_lvm_root(tree)
    tree.pci("0000:00:19.0", 0x8086, 0x15BC, 0x020000, driver="e1000e", group=7, reset_method="flr")
    tree.interrupts("IO-APIC", "PCI-MSI")
    if unsafe is not None:
        tree.module_param("vfio_iommu_type1", "allow_unsafe_interrupts", unsafe)
    snap = judge_tree(tree)
    assert snap.inventory.host.interrupt_remapping is False
    for name in ("pci_0000_00_19_0", "pci_0000_01_00_0", "pci_0000_01_00_1"):
        assert snap.states[name] == ("blocked" if expected else "available"), name
        assert device_object(snap, name)["blocked_by"] == expected
    codes = {f.code for f in snap.findings}
    assert ("unsafe_interrupts" in codes) == (unsafe == "Y")
    assert ("no_interrupt_remapping" in codes) == (unsafe != "Y")


def test_remapping_unknown_is_not_held_against_the_device(tree):
    """No readable /proc/interrupts: `interrupt_remapping_unknown` keeps `check` from passing, but the
    device is not blocked on a guess (DESIGN: on, unknown, or unsafe interrupts allowed)."""
    hosts.clean_host(tree)
    (tree.proc / "interrupts").unlink()
    snap = judge_tree(tree)
    assert snap.inventory.host.interrupt_remapping is None
    assert snap.states["pci_0000_00_19_0"] == "available"
    assert "interrupt_remapping_unknown" in {f.code for f in snap.findings}


def test_a_function_without_a_group_or_in_a_no_iommu_group_is_not_available(tree):
    """IOMMU on with remapping. The iGPU 00:02.0 has no group (intel_iommu=igfx_off leaves it out);
    the NIC 00:19.0 sits in group 9, which VFIO made in its no-IOMMU mode (name vfio-noiommu); the NIC
    00:1f.6 in a real group 7 stays available."""
    hosts.base(tree)
    hosts.nvme_lvm_root(tree)
    tree.pci("0000:00:02.0", 0x8086, 0x3E92, 0x030000, driver="i915", reset_method="flr")
    tree.pci("0000:00:19.0", 0x8086, 0x15BC, 0x020000, driver="vfio-pci", group=9, reset_method="flr")
    tree.vfio_group(9, "240:9", noiommu=True)
    tree.pci("0000:00:1f.6", 0x8086, 0x15BC, 0x020000, driver="e1000e", group=7, reset_method="flr")
    snap = judge_tree(tree)
    assert snap.inventory.host.noiommu_groups == frozenset({9}) and snap.inventory.host.iommu_groups_present
    assert snap.blocked_by["pci_0000_00_02_0"].startswith("no IOMMU group: ")
    assert snap.blocked_by["pci_0000_00_19_0"].startswith("its group is VFIO's no-IOMMU group")
    assert snap.states["pci_0000_00_1f_6"] == "available"


def test_only_no_iommu_groups_is_an_iommu_that_is_off(tree):
    """intel_iommu=off with enable_unsafe_noiommu_mode=Y: the only group is VFIO's no-IOMMU group. The
    IOMMU is off (metric 0, iommu_off_kernel), unsafe_noiommu is critical, and nothing is available."""
    tree.cmdline("BOOT_IMAGE=/vmlinuz intel_iommu=off")
    tree.module_param("vfio", "enable_unsafe_noiommu_mode", "Y")
    tree.pci("0000:00:19.0", 0x8086, 0x15BC, 0x020000, driver="vfio-pci", group=0, reset_method="flr")
    tree.vfio_group(0, "240:0", noiommu=True)
    snap = judge_tree(tree)
    assert not snap.inventory.host.iommu_groups_present
    assert snap.blocked_by["pci_0000_00_19_0"] == IOMMU_OFF
    codes = {(f.code, f.severity) for f in snap.findings}
    assert {("iommu_off_kernel", "warning"), ("unsafe_noiommu", "critical")} <= codes
    assert "passthrough_iommu_enabled 0.0" in render(snap).decode()
