"""libvirt XML -> model: node devices (`virsh nodedev-dumpxml`) and domains' `<hostdev>` elements.

Pure functions over XML text, no connection, so they are tested on captured files. The parser
is hardened: libvirt output is trusted less than it looks (remote daemons, hand-edited test
files), so no entities, no DTDs, no network, and a size bound before lxml sees a byte.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from lxml import etree

from ...model import COMPUTER, Device, device_name
from ..sysfs.attrs import (BadAttribute, bounded_int, hex_id, numa_node, nvme_class, parse_int, pcie_root,
                           sriov_count)

log = logging.getLogger(__name__)

T = TypeVar("T")
Count = Callable[[str], None]

MAX_XML_BYTES = 1 << 20  # a node device is a few KiB; VPD-heavy NICs stay far below this

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False, remove_comments=True
)

# libvirt's names for SCSI peripheral types (udevGetSCSIType), back to the kernel's numbers.
SCSI_TYPES = {
    "disk": 0, "tape": 1, "processor": 3, "worm": 4, "cdrom": 5, "scanner": 6,
    "mod": 7, "changer": 8, "raid": 12, "enclosure": 13,
}

_USB_DEVICE = re.compile(r"usb_(\d+)_(\d+(?:_\d+)*)")
_USB_ROOT = re.compile(r"usb_(usb\d+)")


class BadXML(ValueError):
    """A document that is too big, not XML or lacks what every node device has."""


def parse(text: str | bytes, limit: int = MAX_XML_BYTES) -> etree._Element:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if len(data) > limit:
        raise BadXML(f"document is {len(data)} bytes, more than {limit}")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise BadXML(str(exc)) from None
    if root.getroottree().docinfo.doctype:
        raise BadXML("document has a DOCTYPE")  # libvirt never writes one
    return root


@dataclass(frozen=True, slots=True)
class NodeDevice:
    """A parsed node device, plus what only matters while building the inventory."""

    device: Device
    sysfs_path: str | None = None  # libvirt's <path>: the device's directory on its host
    block: str | None = None  # storage: the block node (sda), for the SCSI LUN above it
    storage_vendor: str | None = None
    storage_model: str | None = None


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip(), base)
    except ValueError:
        return None


def _pci_class(text: str) -> str:
    return hex_id(text, 6)  # 0x010802; a sign or a seventh digit is garbage, never a class


def _usb_class(text: str) -> str:
    return f"{bounded_int(text, 0, 0xFF):02x}"


def _attr(text: str | None, parse: Callable[[str], T], what: str, count: Count | None) -> T | None:
    """A number libvirt copied from sysfs, parsed by the sysfs source's own function (same bounds):
    missing -> None; garbage -> None, logged and counted as `bad_attribute`, like a sysfs attribute."""
    if text is None:
        return None
    try:
        return parse(text.strip())
    except BadAttribute as exc:
        log.warning("%s skipped (bad_attribute): %s", what, exc)
        if count is not None:
            count("bad_attribute")
        return None


def _hex_id(el: etree._Element | None, width: int) -> str | None:
    if el is None or el.get("id") is None:
        return None
    try:
        return hex_id(el.get("id"), width)
    except BadAttribute:
        return None


def _text(el: etree._Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


def pci_address(domain: int | None, bus: int | None, slot: int | None, function: int | None) -> str | None:
    """'0000:01:00.0', or None when a part is missing or out of range (libvirt's tests carry bus 4294967295)."""
    parts = (domain, bus, slot, function)
    limits = (0xFFFF, 0xFF, 0x1F, 0x7)
    if any(p is None or not 0 <= p <= lim for p, lim in zip(parts, limits)):
        return None
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


def address_element(el: etree._Element) -> str | None:
    """An `<address domain='0x0000' bus='0x02' slot='0x00' function='0x1'/>` as a sysfs address."""
    return pci_address(*(_int(el.get(k), 0) if el.get(k) else None for k in ("domain", "bus", "slot", "function")))


def usb_address(name: str, interface: bool) -> str | None:
    """The sysfs name a udev-style libvirt name encodes: usb_1_1_2 -> 1-1.2, usb_1_1_2_1_0 -> 1-1.2:1.0."""
    root = _USB_ROOT.fullmatch(name)
    if root:
        return None if interface else root.group(1)
    m = _USB_DEVICE.fullmatch(name)
    if not m:
        return None  # HAL-era names (usb_device_1d6b_1_...) encode no port path
    bus, ports = m.group(1), m.group(2).split("_")
    if interface:
        if len(ports) < 3:
            return None
        ports, config, number = ports[:-2], ports[-2], ports[-1]
        return f"{bus}-{'.'.join(ports)}:{config}.{number}"
    return f"{bus}-{'.'.join(ports)}"


def node_device(text: str | bytes, count: Count | None = None) -> NodeDevice:
    """One `<device>` document. Unknown capability types become plain devices of that type.
    `count(kind)` is told of each garbage number left out (`bad_attribute`)."""
    root = parse(text)
    if root.tag != "device":
        raise BadXML(f"root element is <{root.tag}>, not <device>")
    name = _text(root.find("name"))
    if not name:
        raise BadXML("device without a <name>")
    cap = root.find("capability")
    kind = cap.get("type") if cap is not None else None
    if not kind:
        raise BadXML(f"{name}: no capability type")
    parent = _text(root.find("parent"))
    if name == COMPUTER or kind == "system":
        parent = None
    elif parent is None:
        parent = COMPUTER
    base = dict(name=name, type=kind, parent=parent, driver=_text(root.find("driver/name")))
    path = _text(root.find("path"))
    if kind == "pci":
        return NodeDevice(_pci(cap, base, path, count), path)
    if kind in ("usb_device", "usb"):
        return NodeDevice(_usb(cap, base, path, count), path)
    if kind == "scsi_host":
        host = _int(_text(cap.find("host")))
        return NodeDevice(Device(**base, address=None if host is None else f"host{host}"), path)
    if kind == "scsi_target":
        return NodeDevice(Device(**base, address=_text(cap.find("target"))), path)
    if kind == "scsi":
        hbtl = [_int(_text(cap.find(k))) for k in ("host", "bus", "target", "lun")]
        address = None if None in hbtl else ":".join(map(str, hbtl))
        scsi_type = SCSI_TYPES.get(_text(cap.find("type")) or "")
        return NodeDevice(Device(**base, address=address, scsi_type=scsi_type), path)
    if kind == "storage":
        block = _text(cap.find("block"))
        return NodeDevice(
            Device(**base), path,
            block=block.rsplit("/", 1)[-1] if block else None,
            storage_vendor=_text(cap.find("vendor")),
            storage_model=_text(cap.find("model")),
        )
    return NodeDevice(Device(**base), path)  # net, drm, mdev, css, ...: kept so the tree stays whole


def _pci(cap: etree._Element, base: dict, path: str | None, count: Count | None) -> Device:
    parts = [_int(_text(cap.find(k)), 0) for k in ("domain", "bus", "slot", "function")]
    address = pci_address(*parts)
    notes = () if address else ("PCI address missing or out of range in libvirt's XML",)
    cls = _attr(_text(cap.find("class")), _pci_class, "class", count)
    group = cap.find("iommuGroup")
    numa = cap.find("numa")
    physfn = cap.find("capability[@type='phys_function']/address")
    vfs_cap = cap.find("capability[@type='virt_functions']")
    vfs = [a for a in (address_element(e) for e in vfs_cap.iterfind("address")) if a] if vfs_cap is not None else []
    pf = address_element(physfn) if physfn is not None else None
    header = None
    if cap.find("capability[@type='pci-bridge']") is not None:
        header = 1
    elif cap.find("capability[@type='cardbus-bridge']") is not None:
        header = 2
    name = base["name"]
    group_number = _attr(group.get("number") if group is not None else None, parse_int, f"{name}: iommuGroup", count)
    node = _attr(numa.get("node") if numa is not None else None, numa_node, f"{name}: numa node", count)
    total_vfs = _attr(vfs_cap.get("maxCount") if vfs_cap is not None else None, sriov_count, f"{name}: maxCount", count)
    return Device(
        **base,
        address=address,
        **_ids(cap),
        pci_class=cls,
        iommu_group=group_number,
        numa_node=node,
        pcie_root=pcie_root(path),  # <path> is the function's directory in its host's /sys/devices
        header_type=header,
        physfn=device_name("pci", pf) if pf else None,
        virtfns=tuple(device_name("pci", a) for a in vfs),
        sriov_totalvfs=total_vfs,
        sriov_numvfs=len(vfs) if vfs_cap is not None else None,
        # The VPD's SN, but an NVMe controller's serial is its controller's (sysfs fills it): see nvme_class.
        serial=None if nvme_class(cls) else _text(cap.find(VPD_SERIAL)),
        notes=notes,
    )


VPD_SERIAL = "capability[@type='vpd']/fields[@access='readonly']/serial_number"


def _ids(cap: etree._Element) -> dict[str, str | None]:
    """<vendor id='0x8086'>Intel</vendor> and <product ...>: the same in pci and usb_device."""
    vendor, product = cap.find("vendor"), cap.find("product")
    return {"vendor_id": _hex_id(vendor, 4), "product_id": _hex_id(product, 4),
            "vendor": _text(vendor), "product": _text(product)}


def _usb(cap: etree._Element, base: dict, path: str | None, count: Count | None) -> Device:
    interface = base["type"] == "usb"
    # <path> names the sysfs directory exactly; the name is the fallback (udev-style names only).
    address = path.rstrip("/").rsplit("/", 1)[-1] if path else usb_address(base["name"], interface)
    if interface:
        cls = _attr(_text(cap.find("class")), _usb_class, "class", count)  # libvirt prints it in decimal
        return Device(**base, address=address, usb_class=cls)
    return Device(
        **base,
        address=address,
        **_ids(cap),
        busnum=_attr(_text(cap.find("bus")), parse_int, f"{base['name']}: bus", count),
        devnum=_attr(_text(cap.find("device")), parse_int, f"{base['name']}: device", count),
    )


# --- domains -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostdevRef:
    """One host device a domain holds, as its XML names it. Only the fields of its kind are set."""

    kind: str  # pci | usb | scsi | mdev
    pci_address: str | None = None
    vendor_id: str | None = None
    product_id: str | None = None
    busnum: int | None = None
    devnum: int | None = None
    scsi_adapter: str | None = None  # scsi_host0
    scsi_address: tuple[int, int, int] | None = None  # bus, target, unit
    uuid: str | None = None


def domain_hostdevs(text: str | bytes) -> tuple[str, list[HostdevRef]]:
    """The domain's name and the host devices its `<hostdev>` (and `<interface type='hostdev'>`) elements hold."""
    root = parse(text, limit=8 * MAX_XML_BYTES)
    name = _text(root.find("name"))
    if root.tag != "domain" or not name:
        raise BadXML("not a domain document")
    refs: list[HostdevRef] = []
    for hd in root.iterfind("devices/hostdev[@mode='subsystem']"):
        ref = _hostdev(hd.get("type"), hd.find("source"))
        if ref is not None:
            refs.append(ref)
    # SR-IOV VFs handed over as network interfaces are PCI hostdevs too.
    for iface in root.iterfind("devices/interface[@type='hostdev']"):
        addr = iface.find("source/address[@type='pci']")
        if addr is not None and address_element(addr):
            refs.append(HostdevRef("pci", pci_address=address_element(addr)))
    return name, refs


def _hostdev(kind: str | None, src: etree._Element | None) -> HostdevRef | None:
    if src is None:
        return None
    if kind == "pci":
        addr = src.find("address")
        a = address_element(addr) if addr is not None else None
        return HostdevRef("pci", pci_address=a) if a else None
    if kind == "usb":
        addr = src.find("address")
        return HostdevRef(
            "usb",
            vendor_id=_hex_id(src.find("vendor"), 4),
            product_id=_hex_id(src.find("product"), 4),
            busnum=_int(addr.get("bus"), 0) if addr is not None and addr.get("bus") else None,
            devnum=_int(addr.get("device"), 0) if addr is not None and addr.get("device") else None,
        )
    if kind == "scsi" and src.get("protocol") is None:  # protocol='iscsi': a remote LUN, not a host device
        adapter = src.find("adapter")
        addr = src.find("address")
        if adapter is None or addr is None:
            return None
        btu = tuple(_int(addr.get(k), 0) if addr.get(k) else None for k in ("bus", "target", "unit"))
        if None in btu:
            return None
        return HostdevRef("scsi", scsi_adapter=adapter.get("name"), scsi_address=btu)  # type: ignore[arg-type]
    if kind == "mdev":
        addr = src.find("address")
        return HostdevRef("mdev", uuid=addr.get("uuid")) if addr is not None and addr.get("uuid") else None
    return None
