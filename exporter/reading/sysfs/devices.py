"""The per-bus readers: one device directory of /sys/bus/{pci,usb,scsi}/devices -> its fields.

Each reader returns the keyword arguments of a `Device` except its parent, which the caller
resolves from where the directories sit before building the device. Attributes a device can do
without are optional (missing: None; garbage: None and counted); a missing or garbage identity
attribute (a PCI vendor id, a USB idVendor) raises, and the caller skips the whole device.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Collection
from typing import Any

from ...model import MdevType, VgpuType, device_name
from .attrs import (SPEED_MAX, BadAttribute, bounded_float, dev_number, escape_bytes, hex_id, link_width, nvme_class,
                    numa_node, parse_int, pcie_root, shape, sriov_count, vgpu_type, vgpu_types)
from .files import Reader, error_kind
from .vpd import VPD_MAX, parse_vpd

log = logging.getLogger(__name__)

CONFIG_HEADER = 64  # the standard PCI header: all we read of config space

Fields = dict[str, Any]


def pci(reader: Reader, sysname: str, path: str, attrs: Collection[str]) -> Fields:
    # Flat on purpose: no closures or lambdas made per device, the reader's methods bound once.
    opt, link = reader.optional, reader.link_in
    group = link(attrs, path, "iommu_group") if "iommu_group" in attrs else None
    physfn = link(attrs, path, "physfn") if "physfn" in attrs else None
    virtfns = sorted([a for a in attrs if a[:6] == "virtfn" and a[6:].isascii() and a[6:].isdigit()],
                     key=_virtfn_number)
    # The power state first: reading a D3cold device's config space wakes it (the kernel resumes
    # it for the read), so a sleeping device keeps sleeping and its header and current link stay
    # unknown. max_link_speed is read: the kernel answers it from a cached copy ("PCI: Store all PCIe
    # Supported Link Speeds") without touching the device. max_link_width is not: it reads LNKCAP from
    # config space, which resumes the device since "PCI/sysfs: Ensure devices are powered for config
    # reads" and gave bogus values before it.
    power = opt(attrs, path, "power_state", power_state, sysname)
    asleep = power == "D3cold"
    header_type, unreachable = (None, False) if asleep else _config(reader, path, attrs, sysname)
    awake = not (asleep or unreachable)  # config space answers: what reads through it (VPD) may be read
    no_link = physfn is not None  # a VF's link is its PF's
    if "reset_method" in attrs:
        reset_methods: tuple[str, ...] | None = tuple((opt(attrs, path, "reset_method", str, sysname) or "").split())
    else:
        reset_methods = None if "reset" in attrs else ()
    vfio_dev, vfio_cdev, cdev_number = _vfio_node(reader, path, attrs, sysname)
    # Only a VF carries a vendor-specific vGPU type (NVIDIA's tooling reads nvidia/ on VFs alone): a
    # PF's nvidia/, if any, is not read. The `physfn` entry decides, even when its link is unreadable.
    if "physfn" not in attrs:
        vgpu = _NOT_A_VF
    else:
        vgpu = _nvidia_vgpu(reader, path, attrs, sysname) if "nvidia" in attrs else _NO_VGPU
    attr = reader.attr_in
    pci_class = hex_id(attr(attrs, path, "class"), 6)
    return {
        "name": device_name("pci", sysname),
        "type": "pci",
        "address": escape_bytes(sysname),
        "vendor_id": hex_id(attr(attrs, path, "vendor"), 4),
        "product_id": hex_id(attr(attrs, path, "device"), 4),
        "pci_class": pci_class,
        "subsystem_vendor_id": opt(attrs, path, "subsystem_vendor", _hex4, sysname),
        "subsystem_product_id": opt(attrs, path, "subsystem_device", _hex4, sysname),
        "driver": link(attrs, path, "driver") if "driver" in attrs else None,
        "iommu_group": _group_number(reader, group, sysname),
        "numa_node": opt(attrs, path, "numa_node", numa_node, sysname),
        "pcie_root": pcie_root(path, reader.devices),
        "boot_vga": opt(attrs, path, "boot_vga", _is_one, sysname) or False,
        "reset_methods": reset_methods,
        "header_type": header_type,
        "unreachable": unreachable,
        "vfio_dev": vfio_dev,
        "vfio_cdev": vfio_cdev,
        "char_dev": cdev_number,
        "enabled": opt(attrs, path, "enable", _nonzero, sysname),
        "physfn": device_name("pci", physfn) if physfn else None,
        "virtfns": tuple(device_name("pci", n) for n in (link(attrs, path, v) for v in virtfns) if n),
        "sriov_totalvfs": opt(attrs, path, "sriov_totalvfs", sriov_count, sysname),
        "sriov_numvfs": opt(attrs, path, "sriov_numvfs", sriov_count, sysname),
        "link_speed": (None, None) if no_link else (
            None if asleep else opt(attrs, path, "current_link_speed", link_speed, sysname),
            opt(attrs, path, "max_link_speed", link_speed, sysname)),
        "link_width": (None, None) if no_link or asleep else (
            opt(attrs, path, "current_link_width", link_width, sysname),
            opt(attrs, path, "max_link_width", link_width, sysname)),
        "aer_errors": (opt(attrs, path, "aer_dev_correctable", aer_total, sysname),
                       opt(attrs, path, "aer_dev_nonfatal", aer_total, sysname),
                       opt(attrs, path, "aer_dev_fatal", aer_total, sysname)),
        "power_state": power,
        "mdev_types": _mdev_types(reader, path, sysname) if "mdev_supported_types" in attrs else (),
        "nvidia_vgpu": vgpu[0],
        "vgpu_type": vgpu[1],
        "vgpu_creatable": vgpu[2],
        "serial": (_pci_serial(reader, path, attrs, sysname, awake and not nvme_class(pci_class))
                   if "nvme" in attrs or (awake and "vpd" in attrs) else None),
    }


def _pci_serial(reader: Reader, path: str, attrs: Collection[str], sysname: str, awake: bool) -> str | None:
    """The NVMe controller's serial, else the VPD's `SN`. The NVMe one first: anyone may read it,
    where `vpd` is root's, so a device keeps one identity whoever runs the exporter (and the slow VPD
    read is spared). A sleeping or unreachable device's VPD is not read: the read goes through config
    space, as the header's does."""
    if "nvme" in attrs:
        serial = _nvme_serial(reader, path, sysname)
        if serial is not None:
            return serial
    return _vpd_serial(reader, f"{path}/vpd", sysname) if awake and "vpd" in attrs else None


def _nvme_serial(reader: Reader, path: str, sysname: str) -> str | None:
    """`nvme/nvme<N>/serial`: the serial of the NVMe controller this function is."""
    base = f"{path}/nvme"
    for ctrl in reader.listdir(base):
        if ctrl.startswith("nvme"):
            cdir = f"{base}/{ctrl}"
            try:
                attrs = reader.entries(cdir)
            except OSError:
                return None  # gone with its controller (a reset): nothing to tell
            return reader.serial_in(attrs, cdir, "serial", f"{sysname} {ctrl}")
    return None


# Not errors: `vpd` is mode 0600 (an unprivileged exporter cannot read it), and ENODEV is the
# kernel's answer for a function without a VPD capability.
_NO_VPD = (errno.EACCES, errno.EPERM, errno.ENODEV)


def _vpd_serial(reader: Reader, vpd: str, sysname: str) -> str | None:
    """The `SN` keyword of a PCI function's VPD; None when it has none, or it cannot be read by this
    user. Read whole (32 KiB at most, a byte more to tell a longer one), parsed by `parse_vpd`; a
    bad VPD or a failed read is counted and logged, never raised."""
    try:
        data = reader.serial_file(vpd, VPD_MAX + 1)
    except OSError as exc:
        if exc.errno in _NO_VPD:
            return None
        kind = error_kind(exc)
        log.warning("%s: vpd skipped (%s): %s", sysname, kind, exc)
        reader.count(kind)
        return None
    found = parse_vpd(data)
    if found.error is not None:
        log.warning("%s: vpd skipped (bad_attribute): %s", sysname, found.error)
        reader.count("bad_attribute")
    return found.serial


def _virtfn_number(link: str) -> int:
    return int(link[6:])


def _hex4(text: str) -> str:
    return hex_id(text, 4)


def _is_one(text: str) -> bool:
    return text == "1"


def _nonzero(text: str) -> bool:
    return parse_int(text) != 0


# Documentation/ABI/testing/sysfs-bus-pci, power_state: "unknown", "error" (the kernel could not
# read the state), "D0", "D1", "D2", "D3hot", "D3cold"; each kept as it is, so a state that cannot be
# read is told from a device without the file.
POWER_STATES = ("D0", "D1", "D2", "D3hot", "D3cold", "unknown", "error")


def link_speed(text: str) -> float | None:
    """'16.0 GT/s PCIe' (or '8 GT/s' from older kernels) -> 16.0; 'Unknown' -> None."""
    if text.lower().startswith("unknown"):
        return None
    number, _, unit = text.partition(" ")
    if not unit.startswith("GT/s"):
        raise BadAttribute(f"not a link speed like '16.0 GT/s PCIe' ({shape(text)})")
    return bounded_float(number, SPEED_MAX)


def aer_total(text: str) -> int:
    """The TOTAL_ERR_* line of an aer_dev_* file (one 'name count' line per error kind)."""
    for line in text.splitlines():
        if line.startswith("TOTAL_ERR_"):
            return parse_int(line.rsplit(None, 1)[-1])
    raise BadAttribute(f"no TOTAL_ERR_ line ({shape(text)})")


def power_state(text: str) -> str:
    if text in POWER_STATES:
        return text
    raise BadAttribute(f"not a power state ({shape(text)})")


def _mdev_types(reader: Reader, path: str, sysname: str) -> tuple[MdevType, ...]:
    """mdev_supported_types/<type>/{name,device_api,available_instances,devices/}: vGPU capacity."""
    base = os.path.join(path, "mdev_supported_types")
    out = []
    for type_id in reader.listdir(base):
        tdir = os.path.join(base, type_id)
        try:
            attrs = reader.entries(tdir)
        except OSError:
            continue
        what = f"{sysname} mdev type {type_id}"
        out.append(MdevType(
            type_id=escape_bytes(type_id),
            name=reader.optional(attrs, tdir, "name", str, what),
            device_api=reader.optional(attrs, tdir, "device_api", str, what),
            available=reader.optional(attrs, tdir, "available_instances", parse_int, what),
            instances=len(reader.listdir(os.path.join(tdir, "devices"))) if "devices" in attrs else 0,
        ))
    return tuple(out)


_Vgpu = tuple[bool | None, int | None, tuple[VgpuType, ...] | None]  # nvidia_vgpu, vgpu_type, vgpu_creatable
_NOT_A_VF: _Vgpu = (None, None, None)
_NO_VGPU: _Vgpu = (False, None, None)
_UNKNOWN_VGPU: _Vgpu = (True, None, None)
_VGPU_FILES = ("current_vgpu_type", "creatable_vgpu_types")


def _nvidia_vgpu(reader: Reader, path: str, attrs: Collection[str], sysname: str) -> _Vgpu:
    """(nvidia/ is there, current type, creatable types) of a VF on NVIDIA's vendor-specific VFIO.

    Whatever is wrong with the directory leaves the type unknown (the VF blocked, never available):
    a link (sysfs attribute groups are directories, never links: one is counted as bad_attribute),
    a directory that cannot be listed (counted), or one holding neither file (not counted: like a
    missing attribute, unknown rather than an error).
    """
    if reader.link_in(attrs, path, "nvidia") is not None:
        log.warning("%s: nvidia/ skipped (bad_attribute): a link, where sysfs has a directory", sysname)
        reader.count("bad_attribute")
        return _UNKNOWN_VGPU
    base = f"{path}/nvidia"
    try:
        files = reader.entries(base)
    except OSError as exc:
        kind = error_kind(exc)
        log.warning("%s: nvidia/ skipped (%s): %s", sysname, kind, exc)
        reader.count(kind)
        return _UNKNOWN_VGPU
    if not any(name in files for name in _VGPU_FILES):
        return _UNKNOWN_VGPU
    what = f"{sysname} nvidia/"
    creatable = reader.optional(files, base, "creatable_vgpu_types", vgpu_types, what)
    return (True, reader.optional(files, base, "current_vgpu_type", vgpu_type, what),
            None if creatable is None else tuple(VgpuType(i, n) for i, n in creatable))


def _group_number(reader: Reader, group: str | None, sysname: str) -> int | None:
    if group is None:
        return None
    try:
        return parse_int(group)
    except BadAttribute:
        log.warning("%s: iommu_group link to %r is not a group number", sysname, group)
        reader.count("bad_attribute")
        return None


def _config(reader: Reader, path: str, attrs: Collection[str], sysname: str) -> tuple[int | None, bool]:
    """(header type, unreachable) from the config space header, read live from the device.

    A function that fell off the bus (a GPU after a failed reset, a link that went down) answers
    every config read with all ones: vendor 0xffff, header type 0x7f. That is not a bridge. The
    vendor id alone does not tell: an SR-IOV virtual function's reads 0xffff by the spec, while
    its class, revision and header type are real.
    """
    if "config" not in attrs:
        return None, False
    try:
        header = reader.read_in(attrs, path, "config", CONFIG_HEADER)
    except OSError as exc:
        reader.count(error_kind(exc))
        log.warning("%s: config unreadable: %s", sysname, exc)
        return None, False
    if len(header) >= 4 and header.count(0xFF) == len(header):  # every byte read: all ones
        return None, True
    if len(header) < 0x0F:
        log.warning("%s: config space too short (%d bytes)", sysname, len(header))
        reader.count("bad_attribute")
        return None, False
    return header[0x0E] & 0x7F, False  # bit 7 only says "multi-function"


def _vfio_node(reader: Reader, path: str, attrs: Collection[str],
               sysname: str) -> tuple[str | None, bool | None, tuple[int, int] | None]:
    """A PCI function's VFIO device node `vfio-dev/vfio<N>/` (the kernel's own word that VFIO drives
    it, since 6.1): its name, whether it lists `dev` (the cdev: Device.vfio_cdev) and that cdev's
    (major, minor). No vfio-dev/: (None, False, None). vfio-dev/ or the node that cannot be listed, or
    a vfio-dev/ naming no vfio<N>: the cdev is unknown (None). A garbage `dev` still says the cdev
    exists; only its number is unknown (None, counted), so no holder is matched to it."""
    if "vfio-dev" not in attrs:
        return None, False, None
    base = f"{path}/vfio-dev"
    names = reader.listing(base, sysname)
    # Only vfio<digits>, or noiommu-vfio<digits> (a no-IOMMU device's, since 6.6): a stray `vfio` is no node.
    nodes = sorted(n for n in names or () if _is_vfio_node(n.removeprefix("noiommu-")))
    if not nodes:
        return None, None, None
    node = f"{base}/{nodes[0]}"
    node_attrs = reader.listing(node, sysname)
    if node_attrs is None:
        return nodes[0], None, None
    return nodes[0], "dev" in node_attrs, reader.optional(node_attrs, node, "dev", dev_number, sysname)


def _is_vfio_node(name: str) -> bool:
    return name[:4] == "vfio" and name[4:].isascii() and name[4:].isdigit()


def char_dev(reader: Reader, dirpath: str, what: str) -> tuple[int, int] | None:
    """The `dev` attribute (MAJ:MIN) of a device directory that may lack one: missing or gone ->
    None; garbage -> None, counted. Listed first, so an old capture without it reads as before."""
    try:
        attrs = reader.entries(dirpath)
    except OSError:
        return None  # the node went away with its device: nothing to hold
    return reader.optional(attrs, dirpath, "dev", dev_number, what)


def usb(reader: Reader, sysname: str, path: str, attrs: Collection[str]) -> Fields:
    def opt(attr: str, parse: Callable[[str], Any]) -> Any:
        return reader.optional(attrs, path, attr, parse, sysname)

    driver = reader.link_in(attrs, path, "driver") if "driver" in attrs else None
    name, address = device_name("usb", sysname), escape_bytes(sysname)
    if ":" in sysname:  # an interface: 1-1.2:1.0
        return {"name": name, "type": "usb", "address": address,
                "usb_class": opt("bInterfaceClass", lambda s: hex_id(s, 2)[2:]), "driver": driver}
    return {
        "name": name,
        "type": "usb_device",
        "address": address,
        "vendor_id": hex_id(reader.attr_in(attrs, path, "idVendor"), 4),
        "product_id": hex_id(reader.attr_in(attrs, path, "idProduct"), 4),
        "vendor": opt("manufacturer", str),
        "product": opt("product", str),
        "usb_class": opt("bDeviceClass", lambda s: hex_id(s, 2)[2:]),
        "busnum": opt("busnum", parse_int),
        "devnum": opt("devnum", parse_int),
        "char_dev": opt("dev", dev_number),
        "driver": driver,
        "serial": reader.serial_in(attrs, path, "serial", sysname),
    }


def usb_name_parent(sysname: str) -> str | None:
    """The parent a USB sysname encodes: 1-1.2:1.0 -> 1-1.2 -> 1-1 -> usb1."""
    if ":" in sysname:
        return sysname.split(":", 1)[0]
    if "." in sysname:
        return sysname.rsplit(".", 1)[0]
    if "-" in sysname:
        return "usb" + sysname.split("-", 1)[0]
    return None


def scsi_type(sysname: str) -> str | None:
    """What a SCSI bus entry is, from its name alone; None for other devices on the bus."""
    if sysname.startswith("host"):
        return "scsi_host"
    if sysname.startswith("target"):
        return "scsi_target"
    return "scsi" if sysname.count(":") == 3 else None


def scsi(reader: Reader, sysname: str, path: str, attrs: Collection[str]) -> Fields | None:
    kind = scsi_type(sysname)
    if kind is None:
        return None
    base: Fields = {"name": device_name("scsi", sysname), "type": kind, "address": escape_bytes(sysname)}
    if kind != "scsi":
        return base

    def opt(attr: str, parse: Callable[[str], Any]) -> Any:
        return reader.optional(attrs, path, attr, parse, sysname)

    base.update(
        vendor=opt("vendor", str),
        product=opt("model", str),
        scsi_type=opt("type", parse_int),
        driver=reader.link_in(attrs, path, "driver") if "driver" in attrs else None,
        block_devices=tuple(map(escape_bytes, reader.listdir(os.path.join(path, "block")))) if "block" in attrs else (),
    )
    return base


READERS: dict[str, Callable[[Reader, str, str, Collection[str]], Fields | None]] = {
    "pci": pci, "usb": usb, "scsi": scsi,
}
