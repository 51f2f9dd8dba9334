"""Upgrade impact, the comparison: two boots' records in, the changes out, answers worked out by hand."""

from __future__ import annotations

import json
import shutil

import pytest

from passthrough_exporter.judging.changes import compare
from passthrough_exporter.model import BootRecord, Device, DeviceRecord, Inventory
from passthrough_exporter.reading.sources.sysfs import SysfsSource

from .support import hosts
from .support.sysfs_builder import SysfsTree

NVME = dict(vendor_id="0x144d", product_id="0xa80a", pci_class="0x010802",
            subsystem_vendor_id="0x144d", subsystem_product_id="0xa801")


def pci(addr: str, group: int | None, **kw: object) -> Device:
    fields = dict(NVME) | kw
    return Device(name="pci_" + addr.replace(":", "_").replace(".", "_"), type="pci", address=addr,
                  iommu_group=group, **fields)  # type: ignore[arg-type]


def record(*devices: Device, boot: str = "b") -> BootRecord:
    return BootRecord.of(Inventory(devices), boot)


def lines(previous: BootRecord, now: BootRecord) -> list[str]:
    return [c.line() for c in compare(previous, now)]


def test_the_same_devices_are_no_change():
    a = record(pci("0000:03:00.0", 5, serial="S1"), pci("0000:04:00.0", 6), boot="one")
    b = record(pci("0000:04:00.0", 6), pci("0000:03:00.0", 5, serial="S1"), boot="two")
    assert compare(a, b) == []


def test_a_group_renumbered_with_the_same_members():
    # Group 5 (03:00.0 and 03:00.1) is group 7 now; group 6 is untouched: one change, the group.
    a = record(pci("0000:03:00.0", 5), pci("0000:03:00.1", 5), pci("0000:04:00.0", 6))
    b = record(pci("0000:03:00.0", 7), pci("0000:03:00.1", 7), pci("0000:04:00.0", 6))
    changes = compare(a, b)
    assert [c.line() for c in changes] == ["group:7: group renumbered: group 5 -> group 7"]
    assert changes[0].members == ("pci_0000_03_00_0", "pci_0000_03_00_1")


def test_two_groups_merged():
    # Groups 5 (03:00.0) and 6 (04:00.0) are one group 5 now: each function's group holds another.
    a = record(pci("0000:03:00.0", 5), pci("0000:04:00.0", 6))
    b = record(pci("0000:03:00.0", 5), pci("0000:04:00.0", 5))
    assert lines(a, b) == [
        "pci_0000_03_00_0: group changed: group 5 (pci_0000_03_00_0) -> group 5 (pci_0000_03_00_0, pci_0000_04_00_0)",
        "pci_0000_04_00_0: group changed: group 6 (pci_0000_04_00_0) -> group 5 (pci_0000_03_00_0, pci_0000_04_00_0)",
    ]


def test_a_group_split():
    a = record(pci("0000:03:00.0", 5), pci("0000:03:00.1", 5))
    b = record(pci("0000:03:00.0", 5), pci("0000:03:00.1", 9))
    assert [c.kind for c in compare(a, b)] == ["group_changed", "group_changed"]


def test_a_card_replaced_by_another_unit_of_the_same_model():
    # Only the serial differs: replaced, and the serial itself is in neither the record nor the line.
    a = record(pci("0000:03:00.0", 5, serial="S3XNNA0M123456"))
    b = record(pci("0000:03:00.0", 5, serial="S3XNNA0M999999"))
    assert lines(a, b) == ["pci_0000_03_00_0: replaced: 144d:a80a serial A -> 144d:a80a serial B"]
    assert "S3XNNA0M" not in json.dumps(a.to_json())


def test_an_unknown_serial_is_no_difference():
    a = record(pci("0000:03:00.0", 5, serial="S1"))
    b = record(pci("0000:03:00.0", 5, serial=None))
    assert compare(a, b) == []


def test_another_model_at_the_same_address():
    a = record(pci("0000:03:00.0", 5))
    b = record(pci("0000:03:00.0", 5, product_id="0xa808", subsystem_product_id="0xa808"))
    assert lines(a, b) == ["pci_0000_03_00_0: replaced: 144d:a80a subsystem 144d:a801 -> 144d:a808 subsystem 144d:a808"]


def test_another_class_at_the_same_address():
    a = record(pci("0000:03:00.0", 5))
    b = record(pci("0000:03:00.0", 5, pci_class="0x010601"))
    assert lines(a, b) == ["pci_0000_03_00_0: replaced: 144d:a80a class 010802 -> 144d:a80a class 010601"]


def test_a_device_gone_and_a_device_new():
    # 04:00.0 (group 6, alone) is gone; 05:00.0 is new in group 8. The others are unchanged.
    a = record(pci("0000:03:00.0", 5), pci("0000:04:00.0", 6))
    b = record(pci("0000:03:00.0", 5), pci("0000:05:00.0", 8, vendor_id="0x10de", product_id="0x1eb8"))
    assert lines(a, b) == [
        "pci_0000_04_00_0: gone: 144d:a80a at 0000:04:00.0 -> nothing",
        "pci_0000_05_00_0: new: nothing -> 10de:1eb8 at 0000:05:00.0",
    ]


def test_a_function_gone_from_a_group_is_told_once():
    # 03:00.1 is gone; 03:00.0 keeps group 5 with no other function: gone, no group change.
    a = record(pci("0000:03:00.0", 5), pci("0000:03:00.1", 5))
    b = record(pci("0000:03:00.0", 5))
    assert lines(a, b) == ["pci_0000_03_00_1: gone: 144d:a80a at 0000:03:00.1 -> nothing"]


def test_a_function_joining_a_group_changes_it():
    a = record(pci("0000:03:00.0", 5))
    b = record(pci("0000:03:00.0", 5), pci("0000:03:00.1", 5))
    assert [c.kind for c in compare(a, b)] == ["group_changed", "new"]


def test_the_record_round_trips_through_json():
    a = record(pci("0000:03:00.0", 5, serial="S1", driver="vfio-pci"),
               Device(name="usb_1_2", type="usb_device", address="1-2", vendor_id="0x046d", product_id="0xc52b",
                      usb_class="00", serial="U1"), boot="0f1e")
    back = BootRecord.from_json(json.loads(json.dumps(a.to_json())))
    assert back == a
    assert [d.name for d in back.devices] == ["pci_0000_03_00_0", "usb_1_2"]
    assert back.by_name()["pci_0000_03_00_0"].driver == "vfio-pci"


@pytest.mark.parametrize("data", [
    None, [], {"version": 2, "boot_id": "x", "devices": []}, {"version": "1", "boot_id": "x", "devices": []},
    {"version": 1, "boot_id": "x", "devices": [{"name": 3, "type": "pci"}]},
    {"version": 1, "boot_id": "x", "devices": [{"name": "a", "type": "pci", "iommu_group": "5"}]},
    {"version": 1, "boot_id": 5, "devices": []},
])
def test_a_record_of_another_shape_or_a_newer_version_is_refused(data):
    with pytest.raises(ValueError):
        BootRecord.from_json(data)


def test_records_read_from_sysfs_trees(tmp_path):
    # The same slot, a Samsung 970 EVO Plus (144d:a80a) then a 980 PRO (144d:a808), in group 3 then 4.
    def host(path, product: int, group: int) -> BootRecord:
        tree = SysfsTree(path)
        tree.pci("0000:03:00.0", vendor=0x144D, device=product, cls=0x010802, group=group)
        return BootRecord.of(SysfsSource(str(tree.sys), str(tree.proc)).read(), "b")

    before, after = host(tmp_path / "a", 0xA80A, 3), host(tmp_path / "b", 0xA808, 4)
    assert lines(before, after) == [  # by subject, in natural order: "group:4" before "pci_..."
        "group:4: group renumbered: group 3 -> group 4",
        "pci_0000_03_00_0: replaced: 144d:a80a -> 144d:a808",
    ]


# --- what a normal reboot must not report ------------------------------------------------------


def test_an_nvme_drive_handed_to_vfio_is_not_replaced(tree):
    """On `nvme` the controller's serial is read; on vfio-pci there is no `nvme/` and its VPD's SN (if
    any) is another number: the serial is unknown then, never a second identity."""
    tree.pci("0000:3d:00.0", 0x144D, 0xA808, 0x010802, driver="nvme", group=22)
    tree.nvme_controller("0000:3d:00.0", "S4EWNX0R123456")
    tree.vpd("0000:3d:00.0", hosts.NIC_VPD, name="Example NIC", serial_number="S4EWNX0R123456-VPD")
    on_nvme = SysfsSource(str(tree.sys), str(tree.proc)).read()
    assert on_nvme.devices["pci_0000_3d_00_0"].serial == "S4EWNX0R123456"
    shutil.rmtree(tree.pci_path("0000:3d:00.0") / "nvme")
    on_vfio = SysfsSource(str(tree.sys), str(tree.proc)).read()
    assert on_vfio.devices["pci_0000_3d_00_0"].serial is None
    assert compare(BootRecord.of(on_nvme, "a"), BootRecord.of(on_vfio, "b")) == []


def test_a_group_unknown_in_one_boot_is_no_change():
    """An unreadable iommu_group link, or the IOMMU off after an update (told by the host's own
    findings), is a missing input, not a regrouping."""
    a = record(pci("0000:01:00.0", 2, vendor_id="0x10de"), pci("0000:01:00.1", 2, vendor_id="0x10de"), boot="a")
    b = record(pci("0000:01:00.0", None, vendor_id="0x10de"), pci("0000:01:00.1", None, vendor_id="0x10de"))
    assert compare(a, b) == [] and compare(b, a) == []


def test_virtual_functions_are_not_recorded():
    """VFs are made after boot (sriov_numvfs): a boot's first refresh may come before them."""
    pf = pci("0000:3b:00.0", 40, vendor_id="0x8086", product_id="0x1572", pci_class="0x020000")
    vf = pci("0000:3b:02.0", 41, vendor_id="0x8086", product_id="0x154c", pci_class="0x020000",
             physfn="pci_0000_3b_00_0")
    assert [d.name for d in record(pf, vf).devices] == ["pci_0000_3b_00_0"]
    assert compare(record(pf, vf, boot="a"), record(pf)) == []


def test_a_record_naming_a_device_twice_is_refused():
    data = record(pci("0000:03:00.0", 5)).to_json()
    data["devices"] = data["devices"] * 2
    with pytest.raises(ValueError, match="named twice"):
        BootRecord.from_json(data)
