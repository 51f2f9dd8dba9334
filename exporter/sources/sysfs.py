"""The sysfs source: PCI, USB and SCSI devices, IOMMU groups and isolation settings from /sys and /proc.

Read-only. Each device directory is listed once and only the attributes that exist are read,
so a read costs one listdir plus a few small reads per device. A device whose directory vanishes,
cannot be read or holds garbage in an attribute it cannot do without is skipped, logged and
counted by kind; garbage in an optional attribute leaves that field empty (and is counted).

Every filesystem access goes through `_Reader`, which can record it in a `Trace`: the snapshot
command captures exactly what a read touched, so the capture and the source cannot drift apart.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TypeVar

from passthrough_exporter.pciids import PciIds
from passthrough_exporter.model import COMPUTER, Device, HostFacts, Inventory, device_name
from passthrough_exporter.sources import SourceError
from passthrough_exporter.sources.rootfs import root_block_dirs

log = logging.getLogger(__name__)

ATTR_LIMIT = 4096  # bytes; sysfs text attributes fit in a page, anything longer is garbage
CONFIG_HEADER = 64  # the standard PCI header: all we read of config space
MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")

T = TypeVar("T")


class BadAttribute(ValueError):
    pass


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return {
            errno.ENOENT: "vanished",
            errno.ENOTDIR: "vanished",
            errno.EACCES: "unreadable",
            errno.EPERM: "unreadable",
            errno.ELOOP: "symlink_loop",
        }.get(exc.errno, "read_error")
    return "bad_attribute"


@dataclass
class Trace:
    """What one read touched, by how it used it: what a tree must hold for a re-read to match."""

    files: dict[str, bytes] = field(default_factory=dict)  # path -> the bytes read (no more)
    links: dict[str, str] = field(default_factory=dict)  # path -> link text, for readlink
    resolved: dict[str, str] = field(default_factory=dict)  # bus entry -> its canonical directory
    listed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dir -> entry names used
    dirs: set[str] = field(default_factory=set)  # device directories listed for their attributes
    present: set[str] = field(default_factory=set)  # entries tested for existence
    unreadable: set[str] = field(default_factory=set)  # present, but reading failed


class _Entries:
    """A device directory's entry names that records each name found by `in` (tracing only)."""

    __slots__ = ("names", "dirpath", "trace")

    def __init__(self, names: Collection[str], dirpath: str, trace: Trace) -> None:
        self.names, self.dirpath, self.trace = set(names), dirpath, trace

    def __contains__(self, name: object) -> bool:
        found = name in self.names
        if found:
            self.trace.present.add(os.path.join(self.dirpath, str(name)))
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def decode_attr(path: str, data: bytes, limit: int = ATTR_LIMIT) -> str:
    """A sysfs text attribute read with `limit + 1` bytes, stripped. Binary or oversized content
    is a BadAttribute."""
    if len(data) > limit:
        raise BadAttribute(f"{path}: longer than {limit} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        # Names (USB product strings) may be UTF-8; ids and numbers never are.
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadAttribute(f"{path}: not text") from None
    if "\x00" in text:
        raise BadAttribute(f"{path}: not text")
    return text.strip()


def _read_bytes(path: str, size: int) -> bytes:
    # os.open/os.read rather than open(): no buffered file object per attribute (3x cheaper), and
    # one read returns the whole of a sysfs attribute.
    # O_NONBLOCK: no effect on sysfs files, but a FIFO left in a capture cannot stall a refresh.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def parse_hex(text: str, width: int) -> str:
    """'0x8086' / '8086' -> '0x8086' (zero-padded to `width` digits)."""
    digits = text.lower().removeprefix("0x")
    if not digits or len(digits) > width or digits.strip("0123456789abcdef"):  # strip: a C loop, not a genexpr
        raise BadAttribute(f"not a {width}-digit hex number: {text[:40]!r}")
    return f"0x{int(digits, 16):0{width}x}"


def parse_int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise BadAttribute(f"not a number: {text[:40]!r}") from None


class _Reader:
    """One read: collects devices, their canonical paths and the errors met on the way."""

    def __init__(self, sysfs: str, procfs: str, trace: Trace | None = None) -> None:
        self.sysfs = sysfs
        self.procfs = procfs
        self.errors: dict[str, int] = {}
        self.trace = trace

    # --- filesystem access: the only place the reader touches the tree -------------------

    def read_bytes(self, path: str, limit: int) -> bytes:
        try:
            data = _read_bytes(path, limit)
        except OSError:
            if self.trace is not None:
                self.trace.unreadable.add(path)
            raise
        if self.trace is not None:
            self.trace.files[path] = data
        return data

    def attr(self, path: str) -> str:
        return decode_attr(path, self.read_bytes(path, ATTR_LIMIT + 1))

    def entries(self, path: str) -> Collection[str]:
        """A device directory's entries, for `attr in entries` tests."""
        names = os.listdir(path)
        if self.trace is None:
            return set(names)
        self.trace.dirs.add(path)
        return _Entries(names, path, self.trace)

    def count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def optional(self, attrs: Collection[str], dirpath: str, attr: str, parse: Callable[[str], T], what: str) -> T | None:
        """An attribute a device can do without: missing -> None, garbage -> None and counted."""
        if attr not in attrs:
            return None
        try:
            return parse(self.attr(f"{dirpath}/{attr}"))  # f-string: os.path.join costs more than the read
        except (OSError, ValueError) as exc:
            kind = _error_kind(exc)
            log.warning("%s: attribute %s skipped (%s): %s", what, attr, kind, exc)
            self.count(kind)
            return None

    def link_name(self, dirpath: str, link: str) -> str | None:
        path = f"{dirpath}/{link}"
        try:
            text = os.readlink(path)
        except OSError:
            return None
        if self.trace is not None:
            self.trace.links[path] = text
        return os.path.basename(text)

    def listdir(self, path: str) -> list[str]:
        try:
            names = sorted(os.listdir(path))
        except FileNotFoundError:
            return []
        except OSError as exc:
            kind = _error_kind(exc)
            log.warning("cannot list %s (%s): %s", path, kind, exc)
            self.count(kind)
            return []
        if self.trace is not None:
            self.trace.listed[path] = tuple(names)
        return names

    def bus_entries(self, bus: str) -> list[tuple[str, str]]:
        """(sysname, canonical directory) of each entry of /sys/bus/<bus>/devices."""
        base = os.path.join(self.sysfs, "bus", bus, "devices")
        real_base = os.path.realpath(base)
        out = [(entry, _resolve(base, real_base, entry)) for entry in self.listdir(base)]
        if self.trace is not None:
            self.trace.resolved.update((os.path.join(base, entry), real) for entry, real in out)
        return out

    def each(self, bus: str, build: Callable[[str, str, Collection[str]], T]) -> list[tuple[str, T]]:
        """Apply `build(sysname, dirpath, attrs)` to each bus entry, skipping the broken ones."""
        out = []
        for sysname, path in self.bus_entries(bus):
            try:
                attrs = self.entries(path)
                out.append((path, build(sysname, path, attrs)))
            except (OSError, ValueError) as exc:
                kind = _error_kind(exc)
                log.warning("%s device %s skipped (%s): %s", bus, sysname, kind, exc)
                self.count(kind)
        return out

    # --- PCI -----------------------------------------------------------------------------

    def pci(self, sysname: str, path: str, attrs: Collection[str]) -> Device:
        def need(attr: str, width: int) -> str:
            return parse_hex(self.attr(f"{path}/{attr}"), width)

        opt = lambda attr, parse: self.optional(attrs, path, attr, parse, sysname)  # noqa: E731
        group = self.link_name(path, "iommu_group") if "iommu_group" in attrs else None
        numa = opt("numa_node", parse_int)
        physfn = self.link_name(path, "physfn") if "physfn" in attrs else None
        virtfns = sorted(
            (a for a in attrs if a.startswith("virtfn") and a[6:].isdigit()), key=lambda a: int(a[6:])
        )
        if "reset_method" in attrs:
            reset_methods: tuple[str, ...] | None = tuple((opt("reset_method", str) or "").split())
        else:
            reset_methods = None if "reset" in attrs else ()
        return Device(
            name=device_name("pci", sysname),
            type="pci",
            address=sysname,
            vendor_id=need("vendor", 4),
            product_id=need("device", 4),
            pci_class=need("class", 6),
            subsystem_vendor_id=opt("subsystem_vendor", lambda s: parse_hex(s, 4)),
            subsystem_product_id=opt("subsystem_device", lambda s: parse_hex(s, 4)),
            driver=self.link_name(path, "driver") if "driver" in attrs else None,
            iommu_group=self._group_number(group, sysname),
            numa_node=None if numa is None or numa < 0 else numa,
            boot_vga=opt("boot_vga", lambda s: s == "1") or False,
            reset_methods=reset_methods,
            header_type=self._header_type(path, attrs, sysname),
            physfn=device_name("pci", physfn) if physfn else None,
            virtfns=tuple(
                device_name("pci", n) for n in (self.link_name(path, v) for v in virtfns) if n
            ),
            sriov_totalvfs=opt("sriov_totalvfs", parse_int),
            sriov_numvfs=opt("sriov_numvfs", parse_int),
        )

    def _group_number(self, group: str | None, sysname: str) -> int | None:
        if group is None:
            return None
        try:
            return parse_int(group)
        except BadAttribute:
            log.warning("%s: iommu_group link to %r is not a group number", sysname, group)
            self.count("bad_attribute")
            return None

    def _header_type(self, path: str, attrs: Collection[str], sysname: str) -> int | None:
        if "config" not in attrs:
            return None
        try:
            header = self.read_bytes(os.path.join(path, "config"), CONFIG_HEADER)
        except OSError as exc:
            self.count(_error_kind(exc))
            log.warning("%s: config unreadable: %s", sysname, exc)
            return None
        if len(header) < 0x0F:
            log.warning("%s: config space too short (%d bytes)", sysname, len(header))
            self.count("bad_attribute")
            return None
        return header[0x0E] & 0x7F  # bit 7 only says "multi-function"

    # --- USB -----------------------------------------------------------------------------

    def usb(self, sysname: str, path: str, attrs: Collection[str]) -> Device:
        opt = lambda attr, parse: self.optional(attrs, path, attr, parse, sysname)  # noqa: E731
        driver = self.link_name(path, "driver") if "driver" in attrs else None
        if ":" in sysname:  # an interface: 1-1.2:1.0
            return Device(
                name=device_name("usb", sysname),
                type="usb",
                address=sysname,
                usb_class=opt("bInterfaceClass", lambda s: parse_hex(s, 2)[2:]),
                driver=driver,
            )
        return Device(
            name=device_name("usb", sysname),
            type="usb_device",
            address=sysname,
            vendor_id=parse_hex(self.attr(os.path.join(path, "idVendor")), 4),
            product_id=parse_hex(self.attr(os.path.join(path, "idProduct")), 4),
            vendor=opt("manufacturer", str),
            product=opt("product", str),
            usb_class=opt("bDeviceClass", lambda s: parse_hex(s, 2)[2:]),
            busnum=opt("busnum", parse_int),
            devnum=opt("devnum", parse_int),
            driver=driver,
        )

    # --- SCSI ----------------------------------------------------------------------------

    def scsi(self, sysname: str, path: str, attrs: Collection[str]) -> Device | None:
        opt = lambda attr, parse: self.optional(attrs, path, attr, parse, sysname)  # noqa: E731
        name = device_name("scsi", sysname)
        if sysname.startswith("host"):
            return Device(name=name, type="scsi_host", address=sysname)
        if sysname.startswith("target"):
            return Device(name=name, type="scsi_target", address=sysname)
        if sysname.count(":") != 3:
            return None  # not a LUN either: some other device on the scsi bus
        return Device(
            name=name,
            type="scsi",
            address=sysname,
            vendor=opt("vendor", str),
            product=opt("model", str),
            scsi_type=opt("type", parse_int),
            driver=self.link_name(path, "driver") if "driver" in attrs else None,
            block_devices=tuple(self.listdir(os.path.join(path, "block"))) if "block" in attrs else (),
        )

    # --- host ----------------------------------------------------------------------------

    def host(self) -> HostFacts:
        params: dict[str, str] = {}
        for module in MODULES:
            pdir = os.path.join(self.sysfs, "module", module, "parameters")
            for param in self.listdir(pdir):
                value = self.optional({param}, pdir, param, str, f"module {module}")
                if value is not None:
                    params[f"{module}.{param}"] = value
        present = {"cmdline"} if os.path.exists(os.path.join(self.procfs, "cmdline")) else set()
        cmdline = self.optional(present, self.procfs, "cmdline", str, "procfs") or ""
        return HostFacts(
            iommu_groups_present=bool(self.listdir(os.path.join(self.sysfs, "kernel", "iommu_groups"))),
            iommu_units=tuple(self.listdir(os.path.join(self.sysfs, "class", "iommu"))),
            cmdline=cmdline,
            module_params=MappingProxyType(params),
        )


def _resolve(base: str, real_base: str, entry: str) -> str:
    """The canonical directory of a bus entry. The kernel's entries are relative links into
    /sys/devices, whose directories are never links: one readlink resolves them, where realpath()
    would lstat every component of a deep path. Anything else goes through realpath()."""
    path = os.path.join(base, entry)
    try:
        target = os.readlink(path)
    except OSError:  # not a link (a flat capture): realpath decides
        return os.path.realpath(path)
    if os.path.isabs(target) or not target.startswith("../"):
        return os.path.realpath(path)
    return os.path.normpath(os.path.join(real_base, target))


def _usb_name_parent(sysname: str) -> str | None:
    """The parent a USB sysname encodes: 1-1.2:1.0 -> 1-1.2 -> 1-1 -> usb1."""
    if ":" in sysname:
        return sysname.split(":", 1)[0]
    if "." in sysname:
        return sysname.rsplit(".", 1)[0]
    if "-" in sysname:
        return "usb" + sysname.split("-", 1)[0]
    return None


class SysfsSource:
    """Reads devices from a sysfs tree (the host's, a fixture's or an unpacked snapshot's)."""

    name = "sysfs"

    def __init__(self, sysfs: str = "/sys", procfs: str = "/proc", pci_ids: PciIds | None = None) -> None:
        self.sysfs = sysfs
        self.procfs = procfs
        self.pci_ids = pci_ids

    def read(self, trace: Trace | None = None) -> Inventory:
        """Read every device once; `trace`, when given, records every path the read touched."""
        if not os.path.isdir(self.sysfs):
            raise SourceError(f"sysfs root {self.sysfs} is not a directory")
        reader = _Reader(self.sysfs, self.procfs, trace)
        found: list[tuple[str, Device]] = []
        pci = reader.each("pci", reader.pci)
        if self.pci_ids is not None:
            pci = [(p, replace(d, vendor=v, product=n)) for p, d in pci
                   for v, n in (self.pci_ids.names(d.vendor_id, d.product_id),)]
        found += pci
        usb = reader.each("usb", reader.usb)
        found += usb
        found += [(p, d) for p, d in reader.each("scsi", reader.scsi) if d is not None]

        by_path = {path: dev.name for path, dev in found}
        usb_names = {dev.address: dev.name for _, dev in usb}
        root = os.path.realpath(self.sysfs)
        devices = []
        for path, dev in found:
            parent = None
            if dev.type in ("usb", "usb_device"):
                # Flat trees (captures, snapshots of /sys/bus/usb) lose the path; the name keeps it.
                parent = usb_names.get(_usb_name_parent(dev.address or ""))
            # The reader built `dev` and nobody else holds it yet: set the field in place rather than
            # copying 28 fields through dataclasses.replace (a tenth of a read at 20k devices).
            object.__setattr__(dev, "parent", parent or _path_parent(path, by_path, root))
            devices.append(dev)
        host = with_root_devices(reader.host(), reader, {p: d for p, d in found})
        log.debug("read %d devices from %s", len(devices), self.sysfs)
        return Inventory(devices, host, reader.errors)

    def close(self) -> None:
        pass


def with_root_devices(host: HostFacts, reader: _Reader, by_path: dict[str, Device]) -> HostFacts:
    """`host` with the devices behind the root filesystem, from mountinfo and /sys/dev/block.

    `by_path` maps each listed device's canonical sysfs directory to the device; shared by every
    source that can see this host's sysfs, so they agree on which devices the host cannot give away.
    """
    blocks = root_block_dirs(reader.sysfs, reader.procfs, reader.count, reader.trace)
    if blocks is None:
        return host
    names = {path: dev.name for path, dev in by_path.items()}
    kinds = {dev.name: dev.type for dev in by_path.values()}
    root = os.path.realpath(reader.sysfs)
    root_devs = dict.fromkeys(n for b in blocks for n in _devices_above(b, names, kinds, root))
    return replace(host, root_devices=tuple(sorted(root_devs)), root_disks=tuple(os.path.basename(b) for b in blocks))


def _listed_ancestors(path: str, names: dict[str, str], root: str) -> Iterator[str]:
    """The listed devices at `path` and above it, nearest first, up to the sysfs root."""
    while len(path) > len(root):
        name = names.get(path)
        if name is not None:
            yield name
        path = os.path.dirname(path)


def _devices_above(path: str, by_path: dict[str, str], kinds: dict[str, str], root: str) -> list[str]:
    """Listed devices from a block device up to its PCI function, inclusive (the bridges above are not)."""
    out = []
    for name in _listed_ancestors(path, by_path, root):
        out.append(name)
        if kinds[name] == "pci":
            break
    return out


def _path_parent(path: str, by_path: dict[str, str], root: str) -> str:
    """The nearest ancestor directory that is a listed device, else the computer."""
    return next(_listed_ancestors(os.path.dirname(path), by_path, root), COMPUTER)


