"""Renders a sysfs fixture tree as a libvirt test-driver host (`<node>` with `<device>` and `<domain>`).

The XML is derived from the tree's files the way libvirt's udev backend derives it from /sys
(names from subsystem and sysname, the parent from the nearest device directory above), so the
libvirt fixture and the sysfs fixture describe one host and cannot drift apart. Written on its
own, not with the sysfs source, so the parity tests compare two independent readings.

Like real hosts, each SCSI LUN with a block node gets a `storage` child and each PCI network
function a `net` child: node-device kinds only libvirt lists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from .sysfs_builder import SysfsTree

SCSI_TYPE_NAMES = {0: "disk", 1: "tape", 5: "cdrom", 8: "changer", 13: "enclosure"}


def _name(subsystem: str, sysname: str) -> str:
    return f"{subsystem}_{re.sub(r'[^A-Za-z0-9]', '_', sysname)}"


def _read(path: Path, attr: str) -> str | None:
    try:
        return (path / attr).read_text().strip()
    except OSError:
        return None


def _link(path: Path, attr: str) -> str | None:
    p = path / attr
    return os.path.basename(os.readlink(p)) if p.is_symlink() else None


def _addr_el(addr: str) -> str:
    dom, bus, rest = addr.split(":")
    slot, fn = rest.split(".")
    return f"<address domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{fn}'/>"


class _Host:
    def __init__(self, tree: SysfsTree) -> None:
        self.tree = tree
        self.sys = Path(os.path.realpath(tree.sys))
        self.by_path: dict[Path, str] = {}
        self.entries: list[tuple[str, str, Path]] = []  # bus, sysname, real path
        for bus in ("pci", "usb", "scsi"):
            base = self.tree.sys / "bus" / bus / "devices"
            for sysname in sorted(os.listdir(base)) if base.is_dir() else ():
                path = Path(os.path.realpath(base / sysname))
                self.entries.append((bus, sysname, path))
                self.by_path[path] = _name(bus, sysname)

    def parent(self, path: Path) -> str:
        for up in path.parents:
            if up == self.sys:
                break
            if up in self.by_path:
                return self.by_path[up]
        return "computer"

    def device(self, name: str, path: Path | None, parent: str, cap: str, driver: str | None = None) -> str:
        sys_path = f"<path>/sys/{path.relative_to(self.sys)}</path>" if path else ""
        drv = f"<driver><name>{escape(driver)}</name></driver>" if driver else ""
        return f"<device><name>{name}</name>{sys_path}<parent>{parent}</parent>{drv}{cap}</device>"

    def render(self) -> list[str]:
        out = []
        for bus, sysname, path in self.entries:
            name, parent, driver = _name(bus, sysname), self.parent(path), _link(path, "driver")
            if bus == "pci":
                out.append(self.device(name, path, parent, self.pci(sysname, path), driver))
                cls = _read(path, "class") or ""
                if cls.startswith("0x0200") and driver:
                    iface = "enp{}s{}f{}".format(*(int(x, 16) for x in re.split("[:.]", sysname)[1:]))
                    net = (f"<capability type='net'><interface>{iface}</interface>"
                           f"<address>52:54:00:00:00:{len(out):02x}</address></capability>")
                    out.append(self.device(f"net_{iface}", None, name, net))
            elif bus == "usb":
                out.append(self.device(name, path, parent, self.usb(sysname, path), driver))
            else:
                out.extend(self.scsi(name, sysname, path, parent, driver))
        return out

    def pci(self, sysname: str, path: Path) -> str:
        dom, bus, rest = sysname.split(":")
        slot, fn = rest.split(".")
        parts = [f"<class>{_read(path, 'class')}</class>", f"<domain>{int(dom, 16)}</domain>",
                 f"<bus>{int(bus, 16)}</bus>", f"<slot>{int(slot, 16)}</slot>", f"<function>{int(fn, 16)}</function>",
                 f"<product id='{_read(path, 'device')}'/>", f"<vendor id='{_read(path, 'vendor')}'/>"]
        physfn = _link(path, "physfn")
        if physfn:
            parts.append(f"<capability type='phys_function'>{_addr_el(physfn)}</capability>")
        total = _read(path, "sriov_totalvfs")
        if total is not None:
            vfs = sorted((p for p in os.listdir(path) if re.fullmatch(r"virtfn\d+", p)), key=lambda p: int(p[6:]))
            addrs = "".join(_addr_el(_link(path, v) or "") for v in vfs)
            parts.append(f"<capability type='virt_functions' maxCount='{total}'>{addrs}</capability>")
        vpd = self.tree.vpd_fields.get(sysname)
        if vpd is not None:  # libvirtd reads `vpd` itself; what it makes of it is given with the blob
            name = f"<name>{escape(vpd['name'])}</name>" if "name" in vpd else ""
            ro = "".join(f"<{k}>{escape(vpd[k])}</{k}>" for k in ("part_number", "serial_number") if k in vpd)
            parts.append(f"<capability type='vpd'>{name}<fields access='readonly'>{ro}</fields></capability>")
        if (path / "config").read_bytes()[0x0E] & 0x7F == 1:
            parts.append("<capability type='pci-bridge'/>")
        group = _link(path, "iommu_group")
        if group is not None:
            members = sorted(os.listdir(self.tree.sys / "kernel" / "iommu_groups" / group / "devices"))
            parts.append(f"<iommuGroup number='{group}'>{''.join(_addr_el(m) for m in members)}</iommuGroup>")
        numa = int(_read(path, "numa_node") or "-1")
        if numa >= 0:
            parts.append(f"<numa node='{numa}'/>")
        return f"<capability type='pci'>{''.join(parts)}</capability>"

    def usb(self, sysname: str, path: Path) -> str:
        if ":" in sysname:
            number = sysname.rsplit(".", 1)[1]
            cls = int(_read(path, "bInterfaceClass") or "0", 16)
            return (f"<capability type='usb'><number>{int(number)}</number><class>{cls}</class>"
                    "<subclass>0</subclass><protocol>0</protocol></capability>")

        def named(tag: str, id_attr: str, name_attr: str) -> str:
            text = _read(path, name_attr)
            inner = f">{escape(text)}</{tag}>" if text else "/>"
            return f"<{tag} id='0x{_read(path, id_attr)}'{inner}"

        return (f"<capability type='usb_device'><bus>{_read(path, 'busnum')}</bus><device>{_read(path, 'devnum')}</device>"
                f"{named('product', 'idProduct', 'product')}{named('vendor', 'idVendor', 'manufacturer')}</capability>")

    def scsi(self, name: str, sysname: str, path: Path, parent: str, driver: str | None) -> list[str]:
        if sysname.startswith("host"):
            return [self.device(name, path, parent, f"<capability type='scsi_host'><host>{sysname[4:]}</host></capability>")]
        if sysname.startswith("target"):
            return [self.device(name, path, parent, f"<capability type='scsi_target'><target>{sysname}</target></capability>")]
        h, b, t, lun = sysname.split(":")
        kind = SCSI_TYPE_NAMES.get(int(_read(path, "type") or "0"))
        cap = (f"<capability type='scsi'><host>{h}</host><bus>{b}</bus><target>{t}</target><lun>{lun}</lun>"
               + (f"<type>{kind}</type>" if kind else "") + "</capability>")
        out = [self.device(name, path, parent, cap, driver)]
        block = path / "block"
        for node in sorted(os.listdir(block)) if block.is_dir() else ():
            storage = (f"<capability type='storage'><block>/dev/{node}</block><bus>scsi</bus>"
                       f"<drive_type>{'cdrom' if kind == 'cdrom' else 'disk'}</drive_type>"
                       f"<model>{escape(_read(path, 'model') or '')}</model><vendor>{escape(_read(path, 'vendor') or '')}</vendor>"
                       "<size>0</size></capability>")
            out.append(self.device(f"block_{node}", block / node, name, storage))
        return out


# --- domains -------------------------------------------------------------------------------


def pci_hostdev(addr: str) -> str:
    return f"<hostdev mode='subsystem' type='pci' managed='yes'><source>{_addr_el(addr)}</source></hostdev>"


def usb_hostdev(vendor: int | None = None, product: int | None = None, bus: int | None = None,
                device: int | None = None) -> str:
    src = ""
    if vendor is not None:
        src += f"<vendor id='0x{vendor:04x}'/><product id='0x{product:04x}'/>"
    if bus is not None:
        src += f"<address bus='{bus}' device='{device}'/>"
    return f"<hostdev mode='subsystem' type='usb'><source>{src}</source></hostdev>"


def scsi_hostdev(adapter: str, bus: int, target: int, unit: int) -> str:
    return (f"<hostdev mode='subsystem' type='scsi'><source><adapter name={quoteattr(adapter)}/>"
            f"<address bus='{bus}' target='{target}' unit='{unit}'/></source></hostdev>")


def vf_interface(addr: str) -> str:
    return f"<interface type='hostdev'><source><address type='pci' {_addr_el(addr)[9:-2]}/></source></interface>"


def domain(name: str, *devices: str, running: bool = True) -> str:
    state = "" if running else "<test:runstate>5</test:runstate>"  # 5: shut off, still defined
    return (f"<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'><name>{escape(name)}</name>"
            f"<memory>1024</memory><os><type>hvm</type></os><devices>{''.join(devices)}</devices>{state}</domain>")


def write_host(tree: SysfsTree, path: Path, domains: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> str:
    """Write the host XML for `tree` (plus raw `extra` devices) to `path`; returns its test:/// URI."""
    body = "\n".join([*_Host(tree).render(), *extra, *domains])
    path.write_text(f"<node>\n{body}\n</node>\n")
    return f"test://{path.resolve()}"
