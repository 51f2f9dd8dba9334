"""Names, parents, groups, verdicts and affected sets on fixture hosts, worked out by hand."""

from __future__ import annotations

from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.local import judge_tree


def parents(snap):
    return {d.name: d.parent for d in snap.inventory}


def test_desktop_gpu_and_audio_share_a_group(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    snap = judge_tree(tree)
    inv = snap.inventory
    assert sorted(inv.devices) == ["computer", "pci_0000_00_00_0", "pci_0000_00_01_0", "pci_0000_01_00_0", "pci_0000_01_00_1"]
    assert parents(snap) == {
        "computer": None,
        "pci_0000_00_00_0": "computer",
        "pci_0000_00_01_0": "computer",
        "pci_0000_01_00_0": "pci_0000_00_01_0",
        "pci_0000_01_00_1": "pci_0000_00_01_0",
    }
    gpu = inv.devices["pci_0000_01_00_0"]
    assert (gpu.vendor_id, gpu.product_id, gpu.pci_class, gpu.driver, gpu.iommu_group) == (
        "0x10de", "0x2484", "0x030000", "nvidia", 2)
    assert gpu.boot_vga and gpu.header_type == 0 and gpu.reset_methods == ("bus",)
    assert inv.groups == {0: ("pci_0000_00_00_0",), 1: ("pci_0000_00_01_0",), 2: ("pci_0000_01_00_0", "pci_0000_01_00_1")}
    assert inv.host.iommu_groups_present and inv.host.iommu_units == ("dmar0",)

    # GPUs are eligible (Kimchi's display blacklist is gone), with a warning for the boot VGA device.
    v = snap.verdicts["pci_0000_01_00_0"]
    assert v.eligible and v.reasons == ("PCI endpoint (display controller)",)
    # Both functions only have a bus reset: the safety rules warn about the missing FLR.
    no_flr = "no function-level reset (only bus): resets may fail or take the other functions of the device with them"
    assert v.warnings == ("boot VGA device: the host console and firmware use it", no_flr)
    assert snap.verdicts["pci_0000_01_00_1"].eligible
    assert snap.verdicts["pci_0000_01_00_1"].warnings == (no_flr,)
    for bridge in ("pci_0000_00_00_0", "pci_0000_00_01_0"):
        assert not snap.verdicts[bridge].eligible
        assert "host infrastructure" in snap.verdicts[bridge].reasons[0]
    assert snap.verdicts["computer"].reasons == ("no rule",)

    assert snap.affected["pci_0000_01_00_0"] == ("pci_0000_01_00_1",)
    assert snap.affected["pci_0000_01_00_1"] == ("pci_0000_01_00_0",)
    assert snap.affected["pci_0000_00_01_0"] == ("pci_0000_01_00_0", "pci_0000_01_00_1")  # its descendants
    assert snap.affected["pci_0000_00_00_0"] == ()


def test_chipset_group_behind_a_switch_takes_everything_along(tree):
    hosts.chipset_switch(tree)
    snap = judge_tree(tree)
    inv = snap.inventory
    group = ("pci_0000_00_1c_0", "pci_0000_02_00_0", "pci_0000_03_00_0", "pci_0000_03_01_0", "pci_0000_03_02_0",
             "pci_0000_04_00_0", "pci_0000_05_00_0", "pci_0000_06_00_0", "pci_0000_06_00_1")
    assert inv.groups == {5: group}
    assert parents(snap) == {
        "computer": None,
        "pci_0000_00_1c_0": "computer",
        "pci_0000_02_00_0": "pci_0000_00_1c_0",
        "pci_0000_03_00_0": "pci_0000_02_00_0",
        "pci_0000_03_01_0": "pci_0000_02_00_0",
        "pci_0000_03_02_0": "pci_0000_02_00_0",
        "pci_0000_04_00_0": "pci_0000_03_00_0",
        "pci_0000_05_00_0": "pci_0000_03_01_0",
        "pci_0000_06_00_0": "pci_0000_03_02_0",
        "pci_0000_06_00_1": "pci_0000_03_02_0",
        "usb_usb3": "pci_0000_04_00_0",
        "usb_3_1": "usb_usb3",
        "usb_3_1_1_0": "usb_3_1",
        "scsi_host2": "pci_0000_05_00_0",  # ata3 in between is not a device
        "scsi_target2_0_0": "scsi_host2",
        "scsi_2_0_0_0": "scsi_target2_0_0",
    }
    eligible = sorted(n for n, v in snap.verdicts.items() if v.eligible)
    assert eligible == ["pci_0000_04_00_0", "pci_0000_05_00_0", "pci_0000_06_00_0", "pci_0000_06_00_1",
                        "scsi_2_0_0_0", "usb_3_1"]
    everything_but = lambda me: tuple(sorted(set(inv.devices) - {"computer", me}))  # noqa: E731
    # Passing the NIC takes the whole group, and with the group every device below it.
    assert snap.affected["pci_0000_06_00_1"] == everything_but("pci_0000_06_00_1")
    assert snap.affected["pci_0000_04_00_0"] == everything_but("pci_0000_04_00_0")
    # USB and SCSI devices are forwarded alone: only their own descendants go along.
    assert snap.affected["usb_3_1"] == ("usb_3_1_1_0",)
    assert snap.affected["scsi_2_0_0_0"] == ()
    assert snap.affected["scsi_host2"] == ("scsi_2_0_0_0", "scsi_target2_0_0")


def test_sriov_pf_takes_its_vfs_and_vfs_go_alone(tree):
    hosts.sriov_nic(tree)
    snap = judge_tree(tree)
    pf = snap.inventory.devices["pci_0000_81_00_0"]
    assert pf.virtfns == ("pci_0000_81_02_0", "pci_0000_81_02_1")
    assert (pf.sriov_totalvfs, pf.sriov_numvfs) == (64, 2)
    vf = snap.inventory.devices["pci_0000_81_02_1"]
    assert vf.physfn == "pci_0000_81_00_0" and vf.driver == "vfio-pci" and vf.iommu_group == 32
    assert parents(snap)["pci_0000_81_02_0"] == "pci_0000_00_03_0"  # VFs hang off the port, not the PF
    assert snap.affected["pci_0000_81_00_0"] == ("pci_0000_81_02_0", "pci_0000_81_02_1")
    assert snap.affected["pci_0000_81_02_0"] == ()
    assert snap.verdicts["pci_0000_81_02_0"].reasons == (
        "PCI endpoint (network controller), SR-IOV virtual function of pci_0000_81_00_0",)
    assert snap.affected["pci_0000_00_03_0"] == ("pci_0000_81_00_0", "pci_0000_81_02_0", "pci_0000_81_02_1")


def test_vf_without_its_pf(tree):
    hosts.orphan_vf(tree)
    snap = judge_tree(tree)
    vf = snap.inventory.devices["pci_0000_82_10_0"]
    assert vf.physfn == "pci_0000_82_00_0" and "pci_0000_82_00_0" not in snap.inventory
    assert snap.verdicts["pci_0000_82_10_0"].eligible
    assert snap.affected["pci_0000_82_10_0"] == ()
    assert snap.affected["computer"] == ()


def test_usb_tree_with_hubs(tree):
    hosts.usb_tree(tree)
    snap = judge_tree(tree)
    assert parents(snap) == {
        "computer": None,
        "pci_0000_00_14_0": "computer",
        "usb_usb1": "pci_0000_00_14_0",
        "usb_usb2": "pci_0000_00_14_0",
        "usb_1_0_1_0": "usb_usb1",
        "usb_1_1": "usb_usb1",
        "usb_1_1_1_0": "usb_1_1",
        "usb_1_1_2": "usb_1_1",
        "usb_1_1_2_1_0": "usb_1_1_2",
        "usb_1_1_4": "usb_1_1",
        "usb_1_1_4_1_0": "usb_1_1_4",
        "scsi_host6": "usb_1_1_4_1_0",
        "scsi_target6_0_0": "scsi_host6",
        "scsi_6_0_0_0": "scsi_target6_0_0",
    }
    types = {d.name: d.type for d in snap.inventory}
    assert types["usb_usb1"] == types["usb_1_1"] == types["usb_1_1_2"] == "usb_device"
    assert types["usb_1_1_2_1_0"] == "usb"
    mouse = snap.inventory.devices["usb_1_1_2"]
    assert (mouse.vendor_id, mouse.product_id, mouse.vendor, mouse.product) == (
        "0x046d", "0xc077", "Logitech", "USB Optical Mouse")
    assert (mouse.busnum, mouse.devnum, mouse.usb_class) == (1, 3, "00")
    verdict = lambda n: snap.verdicts[n]  # noqa: E731
    assert verdict("usb_usb1").reasons == ("USB root hub: QEMU cannot pass a hub through",)
    assert verdict("usb_1_1").reasons == ("USB hub: QEMU cannot pass a hub through",)
    assert verdict("usb_1_1_2").eligible and verdict("usb_1_1_4").eligible
    assert verdict("usb_1_1_2_1_0").reasons == ("USB interface: pass its device usb_1_1_2 instead",)
    # A USB stick takes its interface and the disk behind it; not the controller (Kimchi did).
    assert snap.affected["usb_1_1_4"] == ("scsi_6_0_0_0", "scsi_host6", "scsi_target6_0_0", "usb_1_1_4_1_0")
    assert snap.affected["usb_1_1"] == (
        "scsi_6_0_0_0", "scsi_host6", "scsi_target6_0_0", "usb_1_1_1_0", "usb_1_1_2", "usb_1_1_2_1_0",
        "usb_1_1_4", "usb_1_1_4_1_0")
    # The controller takes the whole tree below it.
    assert snap.affected["pci_0000_00_14_0"] == tuple(sorted(set(snap.inventory.devices) - {"computer", "pci_0000_00_14_0"}))
    assert len(snap.affected["pci_0000_00_14_0"]) == 12


def test_scsi_host_target_and_luns(tree):
    hosts.sata_disks(tree)
    snap = judge_tree(tree)
    assert parents(snap) == {
        "computer": None,
        "pci_0000_00_17_0": "computer",
        "scsi_host0": "pci_0000_00_17_0",
        "scsi_host1": "pci_0000_00_17_0",
        "scsi_target0_0_0": "scsi_host0",
        "scsi_0_0_0_0": "scsi_target0_0_0",
        "scsi_0_0_0_1": "scsi_target0_0_0",
    }
    lun = snap.inventory.devices["scsi_0_0_0_1"]
    assert (lun.type, lun.scsi_type, lun.vendor, lun.product, lun.block_devices, lun.driver) == (
        "scsi", 5, "ATA", "DVD-RW", ("sr0",), "sr")
    assert snap.verdicts["scsi_0_0_0_0"].eligible
    assert not snap.verdicts["scsi_host0"].eligible and not snap.verdicts["scsi_target0_0_0"].eligible
    assert snap.affected["scsi_target0_0_0"] == ("scsi_0_0_0_0", "scsi_0_0_0_1")
    assert snap.affected["scsi_0_0_0_0"] == ()
    assert snap.affected["pci_0000_00_17_0"] == (
        "scsi_0_0_0_0", "scsi_0_0_0_1", "scsi_host0", "scsi_host1", "scsi_target0_0_0")


def test_host_without_iommu_groups_falls_back_to_descendants(tree):
    hosts.desktop_gpu(tree, groups=False)
    snap = judge_tree(tree)
    assert not snap.inventory.host.iommu_groups_present
    assert snap.inventory.groups == {}
    assert snap.inventory.devices["pci_0000_01_00_0"].iommu_group is None
    assert snap.verdicts["pci_0000_01_00_0"].eligible
    assert snap.affected["pci_0000_01_00_0"] == ()  # no group: the audio function is not known to follow
    assert snap.affected["pci_0000_00_01_0"] == ("pci_0000_01_00_0", "pci_0000_01_00_1")


def test_host_facts(tree):
    tree.cmdline("BOOT_IMAGE=/vmlinuz intel_iommu=on pcie_acs_override=downstream,multifunction -- single")
    tree.module_param("vfio_iommu_type1", "allow_unsafe_interrupts", "N")
    tree.module_param("vfio", "enable_unsafe_noiommu_mode", "Y")
    host = judge_tree(tree).inventory.host
    assert host.cmdline_params() == {"BOOT_IMAGE": "/vmlinuz", "intel_iommu": "on",
                                     "pcie_acs_override": "downstream,multifunction"}
    assert dict(host.module_params) == {"vfio.enable_unsafe_noiommu_mode": "Y",
                                        "vfio_iommu_type1.allow_unsafe_interrupts": "N"}
    assert not host.iommu_groups_present and host.iommu_units == ()


def test_serials_the_host_gives(tree, caplog):
    """VPD `SN`, an NVMe controller's `serial` (trailing padding trimmed), a USB device's `serial`; a VPD
    that fails its checksum gives none and is counted once, as one bad input."""
    hosts.serials(tree)
    snap = judge_tree(tree)
    serials = {d.name: d.serial for d in snap.inventory if d.type in ("pci", "usb_device")}
    assert serials == {
        "pci_0000_00_00_0": None,
        "pci_0000_00_14_0": None,
        "pci_0000_3b_00_0": "MT1234X00001",
        "pci_0000_3c_00_0": None,
        "pci_0000_3d_00_0": "S4EWNX0R123456",
        "usb_1_4": "4C530001230117115290",
        "usb_usb1": "0000:00:14.0",
    }
    assert dict(snap.inventory.errors) == {"bad_attribute": 1}
    assert [r.getMessage() for r in caplog.records if "vpd" in r.getMessage()] == [
        "0000:3c:00.0: vpd skipped (bad_attribute): checksum at offset 65 does not match"]
    assert snap.inventory.devices["usb_1_4_1_0"].serial is None  # an interface has none of its own


def test_nvme_serial_comes_before_the_vpd(tree):
    """The NVMe controller's serial anyone can read; the VPD only root: one identity for both."""
    hosts.base(tree)
    tree.pci("0000:3d:00.0", hosts.SAMSUNG, 0xA808, 0x010802, driver="nvme", group=22)
    tree.nvme_controller("0000:3d:00.0", "S4EWNX0R123456")
    tree.vpd("0000:3d:00.0", hosts.NIC_VPD)
    assert judge_tree(tree).inventory.devices["pci_0000_3d_00_0"].serial == "S4EWNX0R123456"


def test_the_vpd_of_a_sleeping_or_unreachable_device_is_not_read(tree):
    """Reading VPD goes through config space: a D3cold device would be woken, one off the bus answers
    all ones. Neither is read, nor counted."""
    hosts.base(tree)
    tree.pci("0000:3b:00.0", 0x15B3, 0x1017, 0x020000, group=20, power_state="D3cold")
    tree.pci("0000:3c:00.0", 0x15B3, 0x1017, 0x020000, group=21, unreachable=True)
    for addr in ("0000:3b:00.0", "0000:3c:00.0"):
        tree.vpd(addr, b"\xff" * 64)  # garbage: read, it would be counted
    snap = judge_tree(tree)
    assert snap.inventory.devices["pci_0000_3b_00_0"].serial is None
    assert snap.inventory.devices["pci_0000_3c_00_0"].serial is None
    assert dict(snap.inventory.errors) == {}


def test_serials_in_the_device_object(tree):
    hosts.serials(tree)
    snap = judge_tree(tree)
    assert device_object(snap, "pci_0000_3b_00_0")["serial"] == "MT1234X00001"
    assert device_object(snap, "pci_0000_3c_00_0")["serial"] is None
    assert device_object(snap, "usb_1_4")["serial"] == "4C530001230117115290"
    assert "serial" not in device_object(snap, "usb_1_4_1_0")  # interfaces: not a device of their own
    assert "serial" not in device_object(snap, "computer")
