"""Synthetic sysfs hosts with thousands of devices, laid out like the kernel's.

Built with sysfs_builder (real directories, relative symlinks), so the source reads the same
structure as the fixture hosts and a real /sys. A host is a sequence of blocks, each behind its own
root port: SR-IOV NICs (a PF with 64-256 VFs, every VF in its own group), PCIe switches with ACS (a
group per port and endpoint), chipset groups without ACS (14 functions in one group, with a USB tree
and SATA disks behind them), USB controllers (root hubs, hubs, devices, interfaces, a USB stick with
its SCSI LUN) and SCSI HBAs (hosts, targets, LUNs). Every PCI function has its revision id and the
health attributes of a current kernel (enable, power state, link speed and width, AER counters but
on VFs); the host has a root mount and interrupts behind remapping. The last HBA is padded with LUNs
so that the host has exactly the requested number of devices.

The benchmarks build them through benchmarks/generate.py, which keeps them in a cache.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from .sysfs_builder import SysfsTree

VERSION = 3  # bump when the layout changes: cached trees are keyed by it
INTEL, MELLANOX, LINUX, LSI, SAMSUNG = 0x8086, 0x15B3, 0x1D6B, 0x1000, 0x144D
# One block of each kind per cycle; SR-IOV VFs dominate, as on the hosts this is about.
AER = {  # the kernel's aer_dev_* files: one line per error kind, then the total
    "aer_dev_correctable": "RxErr 0\nBadTLP 0\nBadDLLP 0\nRollover 0\nTimeout 0\nNonFatalErr 0\n"
                           "CorrIntErr 0\nHeaderOF 0\nTOTAL_ERR_COR 0",
    "aer_dev_nonfatal": "Undefined 0\nDLP 0\nSDES 0\nTLP 0\nFCP 0\nCmpltTO 0\nCmpltAbrt 0\nUnxCmplt 0\n"
                        "RxOF 0\nMalfTLP 0\nECRC 0\nUnsupReq 0\nACSViol 0\nUncorrIntErr 0\nBlockedTLP 0\n"
                        "AtomicOpBlocked 0\nTLPBlockedErr 0\nPoisonTLPBlocked 0\nTOTAL_ERR_NONFATAL 0",
    "aer_dev_fatal": "Undefined 0\nDLP 0\nSDES 0\nTLP 0\nFCP 0\nCmpltTO 0\nCmpltAbrt 0\nUnxCmplt 0\n"
                     "RxOF 0\nMalfTLP 0\nECRC 0\nUnsupReq 0\nACSViol 0\nUncorrIntErr 0\nBlockedTLP 0\n"
                     "AtomicOpBlocked 0\nTLPBlockedErr 0\nPoisonTLPBlocked 0\nTOTAL_ERR_FATAL 0",
}
# The revision id of each model (config space offset 0x08, the kernel's `revision` attribute), as
# these parts report it; every PCI function has one.
REVISION = {(INTEL, 0x09A2): 0x04, (INTEL, 0x347A): 0x04, (MELLANOX, 0x101D): 0x00, (MELLANOX, 0x101E): 0x00,
            (INTEL, 0x4FA1): 0x01, (INTEL, 0x4FA2): 0x01, (SAMSUNG, 0xA808): 0x00, (INTEL, 0x15EF): 0x06,
            (INTEL, 0x15EC): 0x06, (0x1B21, 0x0612): 0x02, (INTEL, 0x1521): 0x01, (INTEL, 0x2725): 0x1A,
            (INTEL, 0x7A50): 0x11, (INTEL, 0xA36D): 0x10, (LSI, 0x0097): 0x02}
PATTERN = ("scsi", "sriov", "switch", "chipset", "sriov", "usb", "scsi", "sriov", "switch")


@dataclass
class Manifest:
    """What the generator built, for the tests and the report."""

    devices: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    groups: int = 0
    pfs: dict[str, list[str]] = field(default_factory=dict)  # PF address -> VF addresses
    chipset_groups: list[list[str]] = field(default_factory=list)  # PCI addresses of each shared group
    switches: list[dict] = field(default_factory=list)  # {"root", "up", "down": [...], "ep": [...]}
    blocks: list[str] = field(default_factory=list)

    def add(self, kind: str, n: int = 1) -> None:
        self.devices += n
        self.by_type[kind] = self.by_type.get(kind, 0) + n


class HostBuilder:
    def __init__(self, tree: SysfsTree, size: int, seed: int = 7) -> None:
        self.t = tree
        self.size = size
        self.rng = random.Random(seed)
        self.m = Manifest()
        self.domain = -1
        self.next_bus = 0
        self.root_slot = 0
        self.usb_bus = 0
        self.scsi_host = 0
        self.disks = 0
        self.last_target: tuple[Path, int, int] | None = None  # (path, host, target) to pad with LUNs
        self.last_luns = 0
        tree.iommu_unit("dmar0")
        tree.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro intel_iommu=on iommu=pt")
        tree.module_param("vfio_iommu_type1", "allow_unsafe_interrupts", "N")
        tree.module_param("vfio", "enable_unsafe_noiommu_mode", "N")
        # Interrupt remapping on (IR- chips), and a root mount, so the host facts cost what they do on a server.
        tree.interrupts(*(("IR-IO-APIC",) * 24 + ("IR-PCI-MSIX-0000:00:00.0",) * 104))
        tree.root_mount("8:1", "/dev/sda1")

    # --- allocation ----------------------------------------------------------------------

    def group(self) -> int:
        g = self.m.groups
        self.m.groups += 1
        return g

    def pci(self, addr: str, vendor: int, device: int, cls: int, **kw) -> Path:
        self.m.add("pci")
        driver = kw.get("driver")
        # What every PCIe function of a current kernel has beside its ids: enable (a host driver
        # enables its device; vfio-pci only while a VM has it open), power state, link attributes
        # (VFs have them too, the source skips them there) and AER counters (not on these VFs).
        attrs = {"enable": "1" if driver and not driver.startswith("vfio") else "0", "power_state": "D0",
                 "current_link_speed": "16.0 GT/s PCIe", "max_link_speed": "16.0 GT/s PCIe",
                 "current_link_width": "16", "max_link_width": "16"}
        if kw.get("physfn") is None:
            attrs.update(AER)
        return self.t.pci(addr, vendor, device, cls, attrs=attrs, revision=REVISION[vendor, device], **kw)

    def root_port(self, buses: int, group: int | None = None) -> tuple[str, int]:
        """A root port on the current domain's root bus with `buses` buses below it: (address, first bus)."""
        if self.domain < 0 or self.root_slot >= 255 or self.next_bus + buses > 256:
            self.domain += 1
            self.next_bus, self.root_slot = 1, 1
            self.pci(_addr(self.domain, 0, 0), INTEL, 0x09A2, 0x060000, group=self.group(), reset_method=None)
        slot, self.root_slot = self.root_slot, self.root_slot + 1
        addr = _addr(self.domain, 0, slot)
        self.pci(addr, INTEL, 0x347A, 0x060400, driver="pcieport",
                 group=self.group() if group is None else group, reset_method=None)
        bus, self.next_bus = self.next_bus, self.next_bus + buses
        return addr, bus

    def disk_name(self) -> str:
        n, name = self.disks, ""
        self.disks += 1
        while True:
            name = chr(ord("a") + n % 26) + name
            n = n // 26 - 1
            if n < 0:
                return "sd" + name

    # --- blocks --------------------------------------------------------------------------

    def sriov(self, vfs: int) -> None:
        """A PF with `vfs` VFs (offset 1, stride 1, ARI), VFs beside the PF under the root port."""
        rp, bus = self.root_port(1 + (vfs + 1) // 256 + 1)
        pf = _addr(self.domain, bus, 0)
        self.pci(pf, MELLANOX, 0x101D, 0x020000, parent=rp, driver="mlx5_core", group=self.group(),
                 sriov_totalvfs=vfs, numa_node=self.domain % 2)
        self.m.pfs[pf] = []
        for i in range(vfs):
            vf = _addr(self.domain, bus, 1 + i)
            driver = ("mlx5_core", "vfio-pci", None)[i % 3]
            self.pci(vf, MELLANOX, 0x101E, 0x020000, parent=rp, driver=driver, group=self.group(),
                     physfn=pf, reset_method="flr", numa_node=self.domain % 2)
            self.m.pfs[pf].append(vf)
        self.m.blocks.append(f"sriov:{vfs}")

    def switch(self, ports: int = 8) -> None:
        """A PCIe switch with ACS: upstream port, `ports` downstream ports, an NVMe drive behind each."""
        rp, bus = self.root_port(2 + ports)
        up = _addr(self.domain, bus, 0)
        self.pci(up, INTEL, 0x4FA1, 0x060400, parent=rp, driver="pcieport", group=self.group(), reset_method=None)
        sw = {"root": rp, "up": up, "down": [], "ep": []}
        for i in range(ports):
            down = _addr(self.domain, bus + 1, i << 3)
            self.pci(down, INTEL, 0x4FA2, 0x060400, parent=up, driver="pcieport", group=self.group(),
                     reset_method=None)
            ep = _addr(self.domain, bus + 2 + i, 0)
            self.pci(ep, SAMSUNG, 0xA808, 0x010802, parent=down, driver=("nvme", "vfio-pci")[i % 2],
                     group=self.group(), reset_method="flr bus")
            sw["down"].append(down)
            sw["ep"].append(ep)
        self.m.switches.append(sw)
        self.m.blocks.append(f"switch:{ports}")

    def chipset(self) -> None:
        """A root port without ACS: 14 functions share one group; USB and SATA disks hang below."""
        g = self.group()
        rp, bus = self.root_port(2 + 4, group=g)
        up = _addr(self.domain, bus, 0)
        members = [rp, up]
        self.pci(up, INTEL, 0x15EF, 0x060400, parent=rp, driver="pcieport", group=g)
        downs = []
        for i in range(4):
            d = _addr(self.domain, bus + 1, i << 3)
            self.pci(d, INTEL, 0x15EF, 0x060400, parent=up, driver="pcieport", group=g)
            downs.append(d)
        xhci = _addr(self.domain, bus + 2, 0)
        sata = _addr(self.domain, bus + 3, 0)
        xp = self.pci(xhci, INTEL, 0x15EC, 0x0C0330, parent=downs[0], driver="xhci_hcd", group=g)
        sp = self.pci(sata, 0x1B21, 0x0612, 0x010601, parent=downs[1], driver="ahci", group=g)
        nics = [_addr(self.domain, bus + 4, f) for f in range(4)]
        for n in nics:
            self.pci(n, INTEL, 0x1521, 0x020000, parent=downs[2], driver="igb", group=g)
        audio = [_addr(self.domain, bus + 5, f) for f in range(2)]
        self.pci(audio[0], INTEL, 0x2725, 0x028000, parent=downs[3], driver="iwlwifi", group=g)
        self.pci(audio[1], INTEL, 0x7A50, 0x040300, parent=downs[3], driver="snd_hda_intel", group=g)
        members += downs + [xhci, sata] + nics + audio
        self.m.chipset_groups.append(sorted(members))
        self._usb_tree(xp)
        self._scsi(sp, targets=2, luns=1, via=True)
        self.m.blocks.append("chipset")

    def usb(self) -> None:
        """An xHCI controller in its own group with a USB tree."""
        rp, bus = self.root_port(1)
        xhci = self.pci(_addr(self.domain, bus, 0), INTEL, 0xA36D, 0x0C0330, parent=rp, driver="xhci_hcd",
                        group=self.group())
        self._usb_tree(xhci)
        self.m.blocks.append("usb")

    def scsi(self, targets: int = 8, luns: int = 4) -> None:
        """A SAS HBA in its own group: one SCSI host, `targets` targets of `luns` LUNs each."""
        rp, bus = self.root_port(1)
        hba = self.pci(_addr(self.domain, bus, 0), LSI, 0x0097, 0x010700, parent=rp, driver="mpt3sas",
                       group=self.group())
        self._scsi(hba, targets, luns, via=False)
        self.m.blocks.append(f"scsi:{targets}x{luns}")

    def _usb_tree(self, xhci: Path) -> None:
        """Root hubs usbN (USB 2) and usbN+1 (USB 3): a 4-port hub with a keyboard, a mouse and a
        nested hub with a webcam, and a USB stick whose LUN is a SCSI device. 21 USB devices, 3 SCSI."""
        b = self.usb_bus = self.usb_bus + 2
        b2, b3 = b - 1, b
        t = self.t
        hub2 = self._usb_dev(f"usb{b2}", LINUX, 0x0002, parent=xhci, cls=9, bus=b2, dev=1)
        self._usb_intf(f"{b2}-0:1.0", hub2, 9, "hub")
        hub3 = self._usb_dev(f"usb{b3}", LINUX, 0x0003, parent=xhci, cls=9, bus=b3, dev=1)
        self._usb_intf(f"{b3}-0:1.0", hub3, 9, "hub")
        hub = self._usb_dev(f"{b2}-1", 0x05E3, 0x0610, parent=hub2, cls=9, bus=b2, dev=2)
        self._usb_intf(f"{b2}-1:1.0", hub, 9, "hub")
        kbd = self._usb_dev(f"{b2}-1.1", 0x046D, 0xC31C, parent=hub, bus=b2, dev=3)
        self._usb_intf(f"{b2}-1.1:1.0", kbd, 3, "usbhid")
        self._usb_intf(f"{b2}-1.1:1.1", kbd, 3, "usbhid")
        mouse = self._usb_dev(f"{b2}-1.2", 0x046D, 0xC077, parent=hub, bus=b2, dev=4)
        self._usb_intf(f"{b2}-1.2:1.0", mouse, 3, "usbhid")
        inner = self._usb_dev(f"{b2}-1.3", 0x05E3, 0x0608, parent=hub, cls=9, bus=b2, dev=5)
        self._usb_intf(f"{b2}-1.3:1.0", inner, 9, "hub")
        cam = self._usb_dev(f"{b2}-1.3.1", 0x046D, 0x085E, parent=inner, cls=0xEF, bus=b2, dev=6)
        for i, c in enumerate((0x0E, 0x0E, 0x01, 0x01)):
            self._usb_intf(f"{b2}-1.3.1:1.{i}", cam, c, "uvcvideo" if c == 0x0E else "snd-usb-audio")
        stick = self._usb_dev(f"{b3}-1", 0x0781, 0x5581, parent=hub3, bus=b3, dev=2)
        intf = self._usb_intf(f"{b3}-1:1.0", stick, 8, "usb-storage")
        self._scsi(intf, targets=1, luns=1, via=False, pad=False)
        del t

    def _usb_dev(self, sysname: str, vendor: int, product: int, *, parent: Path, cls: int = 0,
                 bus: int, dev: int) -> Path:
        self.m.add("usb_device")
        return self.t.usb_device(sysname, vendor, product, parent=parent, device_class=cls, busnum=bus, devnum=dev,
                                 manufacturer="Generic", product_name=f"Device {vendor:04x}:{product:04x}")

    def _usb_intf(self, sysname: str, parent: Path, cls: int, driver: str | None) -> Path:
        self.m.add("usb")
        return self.t.usb_interface(sysname, parent=parent, interface_class=cls, driver=driver)

    def _scsi(self, parent: Path, targets: int, luns: int, via: bool, pad: bool = True) -> None:
        for _ in range(2 if via else 1):  # an AHCI controller has one host per port
            n = self.scsi_host
            self.scsi_host += 1
            host = self.t.scsi_host(n, parent=parent, via=f"ata{n + 1}" if via else None)
            self.m.add("scsi_host")
            for ti in range(targets):
                target = self.t.scsi_target(f"target{n}:0:{ti}", parent=host)
                self.m.add("scsi_target")
                for li in range(luns):
                    self._lun(target, n, ti, li)
                if pad:
                    self.last_target, self.last_luns = (target, n, ti), luns
            if via:
                targets = 0  # the second port is empty, as on a desktop

    def _lun(self, target: Path, host: int, ti: int, li: int) -> None:
        self.t.scsi_lun(f"{host}:0:{ti}:{li}", parent=target, model="SAS DISK", block=self.disk_name())
        self.m.add("scsi")

    # --- the host ------------------------------------------------------------------------

    def build(self) -> Manifest:
        sizes = {"scsi": 43, "switch": 18, "chipset": 14 + 40, "usb": 2 + 40}  # upper bounds (+ root ports)
        i = 0
        while True:
            kind = PATTERN[i % len(PATTERN)]
            i += 1
            left = self.size - self.m.devices
            if kind == "sriov":
                vfs = self.rng.randint(64, 256)
                if vfs + 4 > left:
                    break
                self.sriov(vfs)
            else:
                if sizes[kind] + 4 > left:
                    break
                getattr(self, kind)()
        target, host, ti = self.last_target  # type: ignore[misc]
        while self.m.devices < self.size:  # pad with LUNs: exactly `size` devices
            self._lun(target, host, ti, self.last_luns)
            self.last_luns += 1
        return self.m


def _addr(domain: int, bus: int, devfn: int) -> str:
    if devfn > 255:  # ARI VFs past the first bus spill onto the next one
        bus, devfn = bus + devfn // 256, devfn % 256
    return f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"


def generate(root: Path, size: int, seed: int = 7) -> tuple[SysfsTree, Manifest]:
    """Build a host of exactly `size` devices (the `computer` not counted) under `root`."""
    tree = SysfsTree(root)
    return tree, HostBuilder(tree, size, seed).build()
