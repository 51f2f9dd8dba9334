"""libvirt's node-device and domain XML: libvirt's own test files, and hostile documents."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passthrough_exporter.reading.sources.libvirt_xml import (
    MAX_XML_BYTES,
    BadXML,
    domain_hostdevs,
    node_device,
    usb_address,
)

NODEDEV = "libvirt-nodedev"


def _top_cap(text: str) -> str:
    """The first capability type, read without the parser under test."""
    return re.search(r"<capability type='([^']+)'", text).group(1)


def test_every_libvirt_schema_sample_parses(realdata):
    files = sorted((realdata / NODEDEV).glob("*/*.xml"))
    assert len(files) >= 55
    for path in files:
        text = path.read_text()
        if "<device>" not in text:
            continue  # mdevctl outputs with no device at all
        for block in re.findall(r"^<device>.*?^</device>", text, re.S | re.M):  # mdevctl files hold several
            dev = node_device(block).device
            assert dev.type == _top_cap(block), path.name
            assert dev.name == re.search(r"<name>([^<]+)</name>", block).group(1), path.name
            assert dev.parent == (None if dev.type == "system" else
                                  (re.search(r"<parent>([^<]+)</parent>", block) or [None, "computer"])[1]), path.name


def _sample(realdata, name: str):
    return node_device((realdata / NODEDEV / "nodedevschemadata" / name).read_text()).device


def test_sriov_samples_give_the_vf_links(realdata):
    pf = _sample(realdata, "pci_0000_02_10_7_sriov_vfs.xml")
    assert pf.virtfns == ("pci_0000_02_00_2", "pci_0000_02_00_3", "pci_0000_02_00_4", "pci_0000_02_00_5")
    assert pf.sriov_numvfs == 4 and pf.sriov_totalvfs is None and pf.physfn is None
    vf = _sample(realdata, "pci_0000_02_10_7_sriov.xml")
    assert vf.physfn == "pci_0000_02_00_1" and vf.virtfns == ()
    both = _sample(realdata, "pci_0000_02_10_7_sriov_pf_vfs_all_header_type.xml")
    assert both.physfn == "pci_0000_02_00_1" and len(both.virtfns) == 4
    assert both.sriov_totalvfs == 7 and both.header_type == 1
    empty = _sample(realdata, "pci_0000_02_10_7_sriov_zero_vfs_max_count.xml")
    assert empty.virtfns == () and empty.sriov_numvfs == 0


def test_pci_sample_fields(realdata):
    nic = _sample(realdata, "pci_0000_42_00_0_vpd.xml")
    assert (nic.name, nic.parent, nic.address, nic.vendor_id, nic.product_id, nic.pci_class) == (
        "pci_0000_42_00_0", "computer", "0000:42:00.0", "0x15b3", "0xa2d6", "0x020000")
    assert (nic.iommu_group, nic.numa_node, nic.sriov_totalvfs, nic.vendor) == (65, 0, 16, "Mellanox Technologies")
    assert nic.serial == "MT2113X00000><"  # the VPD's read-only serial_number, not a read-write field
    pf = _sample(realdata, "pci_8086_10c9_sriov_pf.xml")  # file name and device name differ
    assert pf.name == "pci_0000_02_00_0" and pf.iommu_group == 12
    odd = _sample(realdata, "pci_0000_00_02_0_header_type.xml")  # bus 4294967295
    assert odd.address is None and odd.notes
    assert _sample(realdata, "pci_1002_71c4.xml").iommu_group is None


def test_usb_and_scsi_samples(realdata):
    hub = _sample(realdata, "usb_device_1d6b_1_0000_00_1d_0.xml")
    assert (hub.type, hub.busnum, hub.devnum, hub.vendor_id, hub.product_id, hub.product) == (
        "usb_device", 2, 1, "0x1d6b", "0x0001", "1.1 root hub")
    assert hub.address is None  # a HAL-era name encodes no port path
    intf = _sample(realdata, "usb_device_1d6b_1_0000_00_1d_0_if0.xml")
    assert (intf.type, intf.usb_class, intf.parent) == ("usb", "09", "usb_device_1d6b_1_0000_00_1d_0")
    lun = _sample(realdata, "pci_8086_27c5_scsi_host_scsi_device_lun0.xml")
    assert (lun.type, lun.address, lun.scsi_type) == ("scsi", "0:0:0:0", 0)
    host = _sample(realdata, "hba_vport_ops.xml")
    assert (host.type, host.address, host.parent) == ("scsi_host", "host12", "pci_0000_06_00_1")
    target = _sample(realdata, "scsi_target0_0_0.xml")
    assert (target.type, target.address, target.parent) == ("scsi_target", "target0:0:0", "scsi_host0")
    for name, kind in (("net_00_13_02_b9_f9_d3.xml", "net"), ("drm_renderD129.xml", "drm"),
                       ("mdev_3627463d_b7f0_4fea_b468_f1da537d301b.xml", "mdev"), ("ap_matrix.xml", "ap_matrix")):
        assert _sample(realdata, name).type == kind
    computer = _sample(realdata, "computer.xml")
    assert (computer.name, computer.type, computer.parent) == ("computer", "system", None)


@pytest.mark.parametrize("name, interface, address", [
    ("usb_usb1", False, "usb1"),
    ("usb_1_1", False, "1-1"),
    ("usb_1_1_2", False, "1-1.2"),
    ("usb_3_10_4_1", False, "3-10.4.1"),
    ("usb_1_1_2_1_0", True, "1-1.2:1.0"),
    ("usb_1_0_1_0", True, "1-0:1.0"),
    ("usb_device_1d6b_1_0000_00_1d_0", False, None),
    ("usb_usb1", True, None),
])
def test_usb_address_from_name(name, interface, address):
    assert usb_address(name, interface) == address


# --- hostile or broken documents -----------------------------------------------------------

DEVICE = "<device><name>pci_0000_00_00_0</name><capability type='pci'>{}</capability></device>"


@pytest.mark.parametrize("text", [
    "<device><name>x</name>",  # truncated
    "not xml at all",
    "<device><capability type='pci'/></device>",  # no name
    "<device><name>x</name></device>",  # no capability
    "<domain><name>x</name></domain>",
    "<!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;&a;'>]><device><name>&b;</name>"
    "<capability type='pci'/></device>",  # entity expansion
    "<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><device><name>&x;</name>"
    "<capability type='pci'/></device>",  # external entity
])
def test_bad_documents_are_refused(text):
    with pytest.raises(BadXML):
        node_device(text)


def test_oversized_document_is_refused_before_parsing():
    with pytest.raises(BadXML, match="more than"):
        node_device(DEVICE.format("<vendor id='0x8086'>" + "x" * MAX_XML_BYTES + "</vendor>"))


def test_garbage_fields_leave_them_empty():
    dev = node_device(DEVICE.format("<class>zz</class><domain>0</domain><bus>x</bus><vendor id='0x123456'/>")).device
    assert (dev.type, dev.pci_class, dev.address, dev.vendor_id) == ("pci", None, None, None)


@pytest.mark.parametrize("vpd, serial", [
    ("<name>NIC</name><fields access='readonly'><serial_number> MT1234X00001 </serial_number></fields>",
     "MT1234X00001"),
    ("<name>NIC</name><fields access='readonly'><part_number>EX-1</part_number></fields>", None),
    ("<fields access='readonly'><serial_number>  </serial_number></fields>", None),
    ("<fields access='readwrite'><serial_number>RW1</serial_number></fields>", None),  # not the card's own
    ("", None),
])
def test_the_serial_is_the_vpds_read_only_serial_number(vpd, serial):
    dev = node_device(DEVICE.format(f"<domain>0</domain><bus>0</bus><slot>0</slot><function>0</function>"
                                    f"<capability type='vpd'>{vpd}</capability>")).device
    assert dev.serial == serial
    assert node_device(DEVICE.format("<domain>0</domain>")).device.serial is None


def test_numbers_go_through_the_sysfs_bounds_and_are_counted():
    """libvirt copies numa_node, the group and sriov_totalvfs from sysfs: the same parsers, the same
    bounds, each garbage number one bad_attribute; NUMA node -1 is no node, not garbage."""
    counted: list[str] = []
    dev = node_device(DEVICE.format(
        "<iommuGroup number='" + "9" * 400 + "'/><numa node='nan'/>"
        "<capability type='virt_functions' maxCount='inf'/>"), counted.append).device
    assert (dev.iommu_group, dev.numa_node, dev.sriov_totalvfs) == (None, None, None)
    assert counted == ["bad_attribute"] * 3
    counted.clear()
    dev = node_device(DEVICE.format("<iommuGroup number='12'/><numa node='-1'/>"
                                    "<capability type='virt_functions' maxCount='64'/>"), counted.append).device
    assert (dev.iommu_group, dev.numa_node, dev.sriov_totalvfs, counted) == (12, None, 64, [])


def test_domain_hostdevs_skip_what_is_not_a_host_device():
    name, refs = domain_hostdevs(
        "<domain><name>vm</name><devices>"
        "<hostdev mode='subsystem' type='scsi'><source protocol='iscsi' name='iqn.x/1'/></hostdev>"
        "<hostdev mode='capabilities' type='storage'><source><block>/dev/sdf1</block></source></hostdev>"
        "<hostdev mode='subsystem' type='scsi_host'><source protocol='vhost' wwpn='naa.5'/></hostdev>"
        "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source>"
        "<address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>"
        "<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/>"
        "</source></hostdev></devices></domain>"
    )
    assert name == "vm"
    assert [(r.kind, r.pci_address or r.uuid) for r in refs] == [
        ("mdev", "c2177883-f1bb-47f0-914d-32a22e3a8804"), ("pci", "0000:06:12.5")]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_node_device_refuses_garbage_with_badxml_only(text):
    try:
        node_device(text)
    except BadXML:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())  # the fixture only names a read-only directory
def test_damaged_real_documents_parse_or_are_refused(realdata, data):
    path = data.draw(st.sampled_from(sorted((realdata / NODEDEV / "nodedevschemadata").glob("*.xml"))))
    text = path.read_text()
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(max_size=20))
    try:
        node_device(text[:cut] + junk + text[cut:])
    except BadXML:
        pass


@pytest.mark.parametrize("text, expected, counted", [
    ("0x010802", "0x010802", []), ("010802", "0x010802", []),
    ("-0x010802", None, ["bad_attribute"]),  # once read as 0x-10802: past the storage and denied-class tests
    ("0x1010802", None, ["bad_attribute"]),
])
def test_a_pci_class_is_six_hex_digits_or_nothing(text, expected, counted):
    seen: list[str] = []
    dev = node_device(DEVICE.format(f"<class>{text}</class>"), seen.append).device
    assert (dev.pci_class, seen) == (expected, counted)
