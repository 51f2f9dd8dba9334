"""The sysfs source on formats nobody here wrote: libvirt's captured USB tree and umockdev recordings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.model import device_name
from passthrough_exporter.reading.sources.libvirt_xml import node_device
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from tests.support import umockdev_tree
from tests.support.sysfs_builder import SysfsTree, vpd_blob


def read(sys_root: Path):
    return Inspector().judge(SysfsSource(str(sys_root), str(sys_root / "no-proc")).read())


def test_vpd_serial_as_libvirt_reads_it(realdata, tmp_path):
    """libvirt's BlueField-2 sample (nodedevschemadata/pci_0000_42_00_0_vpd.xml): a VPD laid out from its
    read-only fields, read by the sysfs source, gives the serial libvirt's XML gives, `><` and all."""
    xml = (realdata / "libvirt-nodedev" / "nodedevschemadata" / "pci_0000_42_00_0_vpd.xml").read_text()
    by_libvirt = node_device(xml).device
    name = ("BlueField-2 DPU 25GbE Dual-Port SFP56, Crypto Enabled, 16GB on-board DDR, 1GbE OOB management, "
            "Tall Bracket")
    blob = vpd_blob(name.encode(), [
        (b"EC", b"B1"), (b"MN", b"foobar"), (b"PN", b"MBF2H332A-AEEOT"), (b"SN", b"MT2113X00000><"),
        (b"V0", b"PCIeGen4 x8"), (b"V2", b"MBF2H332A-AEEOT"), (b"V3", b"3c53d07eec484d8aab34dabd24fe575aa"),
        (b"VA", b"MLX:MN=MLNX:CSKU=V2:UUID=V3:PCI=V0:MODL=BF2H332A")])
    t = SysfsTree(tmp_path)
    t.pci("0000:42:00.0", 0x15B3, 0xA2D6, 0x020000, group=65)
    t.vpd("0000:42:00.0", blob)
    inv = SysfsSource(str(t.sys), str(t.proc)).read()
    by_sysfs = inv.devices["pci_0000_42_00_0"]
    assert by_libvirt.serial == by_sysfs.serial == "MT2113X00000><"
    assert dict(inv.errors) == {}


def test_libvirt_usb_capture(realdata, tmp_path):
    """libvirt's tests/virusbtestdata: flat directories, no interfaces, no PCI parents."""
    bus = tmp_path / "sys" / "bus" / "usb"
    shutil.copytree(realdata / "libvirt-sysfs" / "virusbtestdata" / "sys_bus_usb", bus)
    snap = read(tmp_path / "sys")
    parents = {d.name: d.parent for d in snap.inventory if d.name != "computer"}
    assert parents == {
        "usb_usb1": "computer", "usb_usb2": "computer", "usb_usb3": "computer", "usb_usb4": "computer",
        "usb_1_1": "usb_usb1",
        "usb_1_1_5": "usb_1_1", "usb_1_1_6": "usb_1_1",
        "usb_1_1_5_3": "usb_1_1_5", "usb_1_1_5_4": "usb_1_1_5", "usb_1_1_5_5": "usb_1_1_5",
        "usb_1_1_5_6": "usb_1_1_5",
        "usb_1_1_5_3_1": "usb_1_1_5_3", "usb_1_1_5_3_3": "usb_1_1_5_3",
        "usb_2_1": "usb_usb2", "usb_2_1_2": "usb_2_1",
    }
    dev = snap.inventory.devices
    # SOURCE.md: usb4 is the USB 3 root hub; three identical 18d1:4e22 devices told apart by devnum.
    assert (dev["usb_usb4"].vendor_id, dev["usb_usb4"].product_id) == ("0x1d6b", "0x0003")
    same = [dev[n] for n in ("usb_1_1_5_4", "usb_1_1_5_5", "usb_1_1_5_6")]
    assert {(d.vendor_id, d.product_id) for d in same} == {("0x18d1", "0x4e22")}
    assert [d.devnum for d in same] == [33, 29, 20]
    assert all(d.type == "usb_device" for d in snap.inventory if d.name != "computer")
    assert not any(snap.verdicts[f"usb_usb{i}"].eligible for i in range(1, 5))
    assert snap.affected["usb_1_1_5"] == ("usb_1_1_5_3", "usb_1_1_5_3_1", "usb_1_1_5_3_3", "usb_1_1_5_4",
                                          "usb_1_1_5_5", "usb_1_1_5_6")
    assert sum(snap.inventory.errors.values()) == 0


RECORDINGS = [
    "umockdev/devices/cameras/canon-powershot-sx200.umockdev",
    "umockdev/devices/mobiles/sony-xperia-mini-pro.umockdev",
    "umockdev/devices/input/usbkbd.umockdev",
    "umockdev/devices/input/usbkbd.pcap.umockdev",
    "umockdev/devices/hidraw/fido2.umockdev",
    "umockdev/devices/spi/elanfingerprint.umockdev",
    "umockdev/devices/input/synaptics-touchpad.umockdev",
    "umockdev/devices/cros_ec/crosfingerprint.umockdev",
] + [f"libfprint-umockdev/tests/{d}/device" for d in (
    "aes3500", "egis0570", "elan", "elanmoc", "goodixmoc", "nb1010", "synaptics", "upektc_img",
    "vfs0050", "vfs301", "vfs5011", "vfs7552")]


@pytest.mark.parametrize("recording", RECORDINGS)
def test_umockdev_recordings(realdata, tmp_path, recording):
    records = umockdev_tree.build(realdata / recording, tmp_path / "sys")
    snap = read(tmp_path / "sys")
    # What the recording says, worked out from its own P: paths and E: properties.
    recorded = {r["path"]: r for r in records if r["env"].get("SUBSYSTEM") in ("pci", "usb")}
    expected = {}
    for path, rec in recorded.items():
        parent, up = "computer", path.rsplit("/", 1)[0]
        while up:
            if up in recorded:
                parent = device_name(recorded[up]["env"]["SUBSYSTEM"], up.rsplit("/", 1)[1])
                break
            up = up.rsplit("/", 1)[0]
        group = rec["links"].get("iommu_group")
        expected[device_name(rec["env"]["SUBSYSTEM"], path.rsplit("/", 1)[1])] = (
            parent, int(group.rsplit("/", 1)[1]) if group else None)
    got = {d.name: (d.parent, d.iommu_group) for d in snap.inventory if d.name != "computer"}
    assert got == expected
    for path, rec in recorded.items():
        dev = snap.inventory.devices[device_name(rec["env"]["SUBSYSTEM"], path.rsplit("/", 1)[1])]
        if rec["env"]["SUBSYSTEM"] == "pci":
            assert dev.pci_class == "0x" + rec["attrs"]["class"].strip().lower().removeprefix("0x")
            assert dev.header_type is not None  # from the recorded config blob
        elif rec["env"].get("DEVTYPE") == "usb_device":
            assert dev.type == "usb_device"
            assert dev.vendor_id == "0x" + rec["attrs"]["idVendor"].strip()


def test_umockdev_fido2_groups_and_tree(realdata, tmp_path):
    umockdev_tree.build(realdata / "umockdev/devices/hidraw/fido2.umockdev", tmp_path / "sys")
    snap = read(tmp_path / "sys")
    dev = snap.inventory.devices
    assert dev["pci_0000_00_08_1"].iommu_group == 6 and dev["pci_0000_05_00_3"].iommu_group == 14
    assert dev["pci_0000_05_00_3"].parent == "pci_0000_00_08_1"
    assert dev["pci_0000_00_08_1"].header_type == 1 and not snap.verdicts["pci_0000_00_08_1"].eligible
    assert dev["pci_0000_05_00_3"].pci_class == "0x0c0330" and dev["pci_0000_05_00_3"].driver == "xhci_hcd"
    assert [dev[n].parent for n in ("usb_usb1", "usb_1_2", "usb_1_2_3", "usb_1_2_3_1_0")] == [
        "pci_0000_05_00_3", "usb_usb1", "usb_1_2", "usb_1_2_3"]
    assert dev["usb_1_2"].usb_class == "09" and not snap.verdicts["usb_1_2"].eligible  # the 0bda:5411 hub
    assert snap.verdicts["usb_1_2_3"].eligible  # the security key
    assert snap.affected["usb_1_2_3"] == ("usb_1_2_3_1_0",)


def test_umockdev_without_pci_parent(realdata, tmp_path):
    """goodixmoc: the xHCI above usb3 was not recorded, so the root hub hangs off the computer."""
    umockdev_tree.build(realdata / "libfprint-umockdev/tests/goodixmoc/device", tmp_path / "sys")
    snap = read(tmp_path / "sys")
    assert {d.name: d.parent for d in snap.inventory} == {
        "computer": None, "usb_usb3": "computer", "usb_3_2": "usb_usb3"}
