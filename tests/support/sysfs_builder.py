"""Builds sysfs/procfs fixture trees shaped like the kernel's: real directories, relative symlinks.

Devices live under sys/devices/...; sys/bus/<bus>/devices/<name> link to them, drivers and IOMMU
groups are links too, so the source under test sees the same structure as on a real host.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path


READ_WRITE = 0o2100002  # O_CLOEXEC | O_LARGEFILE | O_RDWR: fdinfo's flags for a device QEMU holds (x86-64)


def char_number(path: str) -> str:
    """"MAJ:MIN" of one of this machine's character devices (/dev/null ...), read now."""
    st = os.stat(path)
    assert stat.S_ISCHR(st.st_mode), path
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


class SysfsTree:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sys = self.root / "sys"
        self.proc = self.root / "proc"
        (self.sys / "devices").mkdir(parents=True, exist_ok=True)
        self.proc.mkdir(parents=True, exist_ok=True)
        self.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet")
        self.interrupts("IR-IO-APIC", "IR-PCI-MSI")  # a host with interrupt remapping, as most are
        self.boot_id("6e1c3b52-2a0f-4d7e-9a63-0c5d1f3e8b21")
        self._pci: dict[str, Path] = {}
        self.vpd_fields: dict[str, dict[str, str]] = {}  # PCI address -> what its VPD says, for libvirt's XML

    # --- plumbing ------------------------------------------------------------------------

    @staticmethod
    def write(path: Path, text: str | bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text + "\n")

    @staticmethod
    def link(at: Path, target: Path) -> None:
        at.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, at.parent), at)

    def _bus(self, bus: str, name: str, path: Path) -> None:
        self.link(self.sys / "bus" / bus / "devices" / name, path)

    def _driver(self, bus: str, path: Path, driver: str | None) -> None:
        if driver:
            drv = self.sys / "bus" / bus / "drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            self.link(path / "driver", drv)

    # --- host ----------------------------------------------------------------------------

    def cmdline(self, text: str) -> None:
        self.write(self.proc / "cmdline", text)

    def boot_id(self, text: str | None) -> None:
        """<procfs>/sys/kernel/random/boot_id; None removes it."""
        path = self.proc / "sys" / "kernel" / "random" / "boot_id"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            self.write(path, text)

    def module_param(self, module: str, param: str, value: str) -> None:
        self.write(self.sys / "module" / module / "parameters" / param, value)

    def interrupts(self, *chips: str) -> None:
        """A /proc/interrupts whose lines are routed through these interrupt chips."""
        lines = ["           CPU0       CPU1"]
        for i, chip in enumerate(chips):
            lines.append(f" {24 + i:3d}:          1          0  {chip}   {i}-edge      dev{i}")
        self.write(self.proc / "interrupts", "\n".join(lines))

    def acpi_table(self, name: str) -> None:
        self.write(self.sys / "firmware" / "acpi" / "tables" / name, b"")

    def process(self, pid: int, comm: str, argv: list[str], fds: dict[int, str],
                flags: dict[int, int] | None = None) -> None:
        """A process under /proc: its comm, NUL-separated cmdline, fd/ links to `fds` targets and
        fdinfo/ with each one's open flags (`flags`, else read-write as QEMU opens its devices).

        A fake fd link is a plain symlink: its text is the path it stats to. Point it at one of
        this machine's real character devices (`char_number` gives its number for a `dev` file)."""
        base = self.proc / str(pid)
        self.write(base / "comm", comm)
        self.write(base / "cmdline", b"\0".join(a.encode() for a in argv) + b"\0")
        (base / "fd").mkdir(parents=True, exist_ok=True)
        for fd, target in fds.items():
            os.symlink(target, base / "fd" / str(fd))
            mode = (flags or {}).get(fd, READ_WRITE)
            self.write(base / "fdinfo" / str(fd), f"pos:\t0\nflags:\t0{mode:o}\nmnt_id:\t24")

    def vfio_group(self, number: int, dev: str, noiommu: bool = False) -> Path:
        """VFIO's group node for IOMMU group `number`: class/vfio/<N> -> devices/virtual/vfio/<N>,
        whose `dev` is `dev` ("MAJ:MIN"). `noiommu`: a group VFIO made in its no-IOMMU mode, as the
        kernel shows it: the node is `noiommu-<N>` and the group's `name` is `vfio-noiommu`."""
        node = f"noiommu-{number}" if noiommu else str(number)
        path = self.sys / "devices" / "virtual" / "vfio" / node
        self.write(path / "dev", dev)
        self.link(self.sys / "class" / "vfio" / node, path)
        if noiommu:
            self.write(self.sys / "kernel" / "iommu_groups" / str(number) / "name", "vfio-noiommu")
        return path

    def misc(self, name: str, dev: str) -> Path:
        """A misc device as the kernel shows it: class/misc/<name> -> devices/virtual/misc/<name>, whose
        `dev` is `dev` ("MAJ:MIN", major 10). Any one makes class/misc, which every kernel has."""
        path = self.sys / "devices" / "virtual" / "misc" / name
        self.write(path / "dev", dev)
        self.link(self.sys / "class" / "misc" / name, path)
        return path

    def iommufd(self) -> Path:
        """The iommufd device, /dev/iommu: the misc device `iommu` (a dynamic minor)."""
        return self.misc("iommu", "10:122")

    def reserved_regions(self, group: int, *regions: str) -> None:
        """Group `group`'s `reserved_regions`, one line per region as the kernel writes it:
        `0x00000000fee00000 0x00000000feefffff msi` (start, end, type)."""
        self.write(self.sys / "kernel" / "iommu_groups" / str(group) / "reserved_regions",
                   "\n".join(regions))

    def iommu_unit(self, name: str) -> None:
        (self.sys / "class" / "iommu" / name).mkdir(parents=True, exist_ok=True)

    def mountinfo(self, text: str) -> None:
        self.write(self.proc / "self" / "mountinfo", text)

    def root_mount(self, dev: str, source: str = "/dev/root", fstype: str = "ext4") -> None:
        """A mountinfo with `/` on device number `dev` ("MAJ:MIN") and a few pseudo filesystems."""
        self.mountinfo(
            f"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
            f"23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n"
            f"27 1 {dev} / / rw,relatime - {fstype} {source} rw\n"
            f"31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755"
        )

    # --- block devices -------------------------------------------------------------------

    def block(self, name: str, *, parent: Path, dev: str) -> Path:
        """A disk `<parent>/block/<name>` with device number `dev`, linked from /sys/dev/block and class/block."""
        return self._block(parent / "block" / name, dev)

    def partition(self, disk: Path, name: str, *, dev: str, number: int = 1) -> Path:
        path = self._block(disk / name, dev)
        self.write(path / "partition", str(number))
        return path

    def virtual_block(self, name: str, *, dev: str, slaves: tuple[Path, ...] = (), dm_name: str | None = None) -> Path:
        """A device-mapper or md device stacked on `slaves` (block directories)."""
        path = self._block(self.sys / "devices" / "virtual" / "block" / name, dev)
        (path / "slaves").mkdir()
        for slave in slaves:
            self.link(path / "slaves" / slave.name, slave)
            self.link(slave / "holders" / name, path)
        if dm_name is not None:
            self.write(path / "dm" / "name", dm_name)
        return path

    def _block(self, path: Path, dev: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self.write(path / "dev", dev)
        self.link(self.sys / "dev" / "block" / dev, path)
        self.link(self.sys / "class" / "block" / path.name, path)
        return path

    # --- PCI -----------------------------------------------------------------------------

    def pci_path(self, addr: str) -> Path:
        return self._pci[addr]

    def pci(
        self,
        addr: str,
        vendor: int,
        device: int,
        cls: int,
        *,
        parent: str | None = None,
        driver: str | None = None,
        group: int | None = None,
        header_type: int | None = None,
        numa_node: int = -1,
        boot_vga: bool | None = None,
        reset_method: str | None = "flr bus",
        subsystem: tuple[int, int] = (0, 0),
        sriov_totalvfs: int | None = None,
        physfn: str | None = None,
        vfio_dev: str | None = None,
        cdev: str | None = None,
        enable: int | None = None,
        unreachable: bool = False,
        link_width: tuple[int, int] | None = None,
        power_state: str | None = None,
        revision: int | None = None,
        attrs: dict[str, str | bytes] | None = None,
    ) -> Path:
        """A PCI function; `parent` is the address of the bridge above it (None: a root bus).
        `link_width`: (current_link_width, max_link_width), as a bridge or an endpoint has them.
        `revision`: the revision id, written as the kernel's `revision` attribute and at offset 0x08 of
        config space (None: neither, as the fixtures made before it have them).
        `cdev`: the "MAJ:MIN" of its VFIO device node (`vfio-dev/<vfio_dev>/dev`)."""
        if parent is None:
            domain_bus = addr.rsplit(":", 1)[0]
            base = self.sys / "devices" / f"pci{domain_bus}"
        else:
            base = self._pci[parent]
        path = base / addr
        path.mkdir(parents=True)
        self._pci[addr] = path
        if header_type is None:
            header_type = 1 if (cls >> 8) == 0x0604 else 0
        self.write(path / "vendor", f"0x{vendor:04x}")
        self.write(path / "device", f"0x{device:04x}")
        self.write(path / "class", f"0x{cls:06x}")
        self.write(path / "subsystem_vendor", f"0x{subsystem[0]:04x}")
        self.write(path / "subsystem_device", f"0x{subsystem[1]:04x}")
        self.write(path / "numa_node", str(numa_node))
        if revision is not None:
            self.write(path / "revision", f"0x{revision:02x}")
        # A function that fell off the bus answers every config read with all ones.
        # A function that fell off the bus answers every config read with all ones; an SR-IOV VF's
        # vendor and device ids read 0xffff by the spec (sysfs has the real ones in vendor/device).
        config = b"\xff" * 64 if unreachable else pci_config(
            0xFFFF if physfn else vendor, 0xFFFF if physfn else device, cls, header_type, revision or 0)
        self.write(path / "config", config)
        if vfio_dev is not None:
            (path / "vfio-dev" / vfio_dev).mkdir(parents=True)
            if cdev is not None:
                self.write(path / "vfio-dev" / vfio_dev / "dev", cdev)
        if enable is not None:
            self.write(path / "enable", str(enable))
        if link_width is not None:
            self.write(path / "current_link_width", str(link_width[0]))
            self.write(path / "max_link_width", str(link_width[1]))
        if power_state is not None:
            self.write(path / "power_state", power_state)
        for name, value in (attrs or {}).items():  # anything else, in the kernel's own format
            self.write(path / name, value)
        if boot_vga is not None:
            self.write(path / "boot_vga", "1" if boot_vga else "0")
        if reset_method is not None:
            self.write(path / "reset_method", reset_method)
            self.write(path / "reset", b"")
        if sriov_totalvfs is not None:
            self.write(path / "sriov_totalvfs", str(sriov_totalvfs))
            self.write(path / "sriov_numvfs", "0")
        self._bus("pci", addr, path)
        self._driver("pci", path, driver)
        if group is not None:
            gdir = self.sys / "kernel" / "iommu_groups" / str(group)
            (gdir / "devices").mkdir(parents=True, exist_ok=True)
            self.link(path / "iommu_group", gdir)
            self.link(gdir / "devices" / addr, path)
        if physfn is not None:
            # The PF may be absent on purpose (a VF without its PF): link to where it would be.
            pf = self._pci.get(physfn, path.parent / physfn)
            self.link(path / "physfn", pf)
            if physfn in self._pci:
                n = len([p for p in pf.iterdir() if p.name.startswith("virtfn")])
                self.link(pf / f"virtfn{n}", path)
                self.write(pf / "sriov_numvfs", str(n + 1))
        return path

    def vpd(self, addr: str, blob: bytes, **fields: str) -> Path:
        """A PCI function's `vpd`, mode 0600 as the kernel makes it. `fields` is what the blob says in
        libvirt's words (`name`, `part_number`, `serial_number`), for the libvirt fixture of the host:
        none for a blob libvirt would refuse."""
        path = self._pci[addr] / "vpd"
        self.write(path, blob)
        path.chmod(0o600)
        if fields:
            self.vpd_fields[addr] = fields
        return path

    def nvme_controller(self, addr: str, serial: str, n: int = 0) -> Path:
        """The NVMe controller `nvme/nvme<n>` of a PCI function, with its `serial` as older kernels
        print it: the controller's 20 bytes, padded with spaces."""
        path = self._pci[addr] / "nvme" / f"nvme{n}"
        self.write(path / "serial", serial.ljust(20))
        self.write(path / "model", "Fixture NVMe")
        return path

    def mdev_type(self, addr: str, type_id: str, name: str, available: int, instances: int = 0) -> None:
        """A mediated device type under a PCI function, with `instances` created from it."""
        tdir = self._pci[addr] / "mdev_supported_types" / type_id
        self.write(tdir / "name", name)
        self.write(tdir / "device_api", "vfio-pci")
        self.write(tdir / "available_instances", str(available))
        (tdir / "devices").mkdir(parents=True)
        for i in range(instances):
            uuid = f"00000000-0000-0000-0000-{i:012d}"
            (self._pci[addr] / uuid).mkdir()
            self.link(tdir / "devices" / uuid, self._pci[addr] / uuid)

    def nvidia_vgpu(self, addr: str, current: int | str, creatable: list[tuple[int, str]] | str) -> Path:
        """A VF's `nvidia/` on NVIDIA's vendor-specific VFIO: `current_vgpu_type` (0, or the type it
        carries) and `creatable_vgpu_types`, one `ID : NAME` line per type under the driver's header
        (nothing but the header when the list is empty); a str is written as it is (hostile input)."""
        base = self._pci[addr] / "nvidia"
        self.write(base / "current_vgpu_type", str(current))
        if not isinstance(creatable, str):
            creatable = "\n".join(["ID    : vGPU Name", *(f"{i} : {name}" for i, name in creatable)])
        self.write(base / "creatable_vgpu_types", creatable)
        return base

    # --- USB -----------------------------------------------------------------------------

    def usb_device(
        self,
        sysname: str,
        vendor: int,
        product: int,
        *,
        parent: Path,
        device_class: int = 0,
        manufacturer: str | None = None,
        product_name: str | None = None,
        busnum: int = 1,
        devnum: int = 1,
        driver: str = "usb",
        dev: str | None = None,
        serial: str | None = None,
    ) -> Path:
        """`dev`: the "MAJ:MIN" of its usbfs node, as the kernel's `dev` attribute; `serial`: its
        iSerialNumber string, as the kernel's `serial` attribute."""
        path = parent / sysname
        path.mkdir(parents=True)
        if dev is not None:
            self.write(path / "dev", dev)
        if serial is not None:
            self.write(path / "serial", serial)
        self.write(path / "idVendor", f"{vendor:04x}")
        self.write(path / "idProduct", f"{product:04x}")
        self.write(path / "bDeviceClass", f"{device_class:02x}")
        self.write(path / "busnum", str(busnum))
        self.write(path / "devnum", str(devnum))
        if manufacturer:
            self.write(path / "manufacturer", manufacturer)
        if product_name:
            self.write(path / "product", product_name)
        self._bus("usb", sysname, path)
        self._driver("usb", path, driver)
        return path

    def usb_interface(self, sysname: str, *, parent: Path, interface_class: int, driver: str | None = None) -> Path:
        path = parent / sysname
        path.mkdir(parents=True)
        self.write(path / "bInterfaceClass", f"{interface_class:02x}")
        self._bus("usb", sysname, path)
        self._driver("usb", path, driver)
        return path

    # --- SCSI ----------------------------------------------------------------------------

    def scsi_host(self, n: int, *, parent: Path, via: str | None = None) -> Path:
        """`via`: an intermediate directory that is not a device (ata1, virtio0 ...)."""
        path = (parent / via if via else parent) / f"host{n}"
        path.mkdir(parents=True)
        self._bus("scsi", f"host{n}", path)
        return path

    def scsi_target(self, sysname: str, *, parent: Path) -> Path:
        path = parent / sysname
        path.mkdir(parents=True)
        self._bus("scsi", sysname, path)
        return path

    def scsi_lun(
        self, sysname: str, *, parent: Path, vendor: str = "ATA", model: str = "DISK", scsi_type: int = 0,
        block: str | None = None, driver: str | None = "sd",
    ) -> Path:
        path = parent / sysname
        path.mkdir(parents=True)
        self.write(path / "vendor", vendor)
        self.write(path / "model", model)
        self.write(path / "type", str(scsi_type))
        if block:
            (path / "block" / block).mkdir(parents=True)
        self._bus("scsi", sysname, path)
        self._driver("scsi", path, driver)
        return path


def pci_config(vendor: int, device: int, cls: int, header_type: int, revision: int = 0) -> bytes:
    """The first 64 bytes of config space: ids, revision, class code and header type where the spec puts them."""
    header = bytearray(64)
    struct.pack_into("<HH", header, 0, vendor, device)
    header[0x08] = revision
    header[0x09:0x0C] = cls.to_bytes(3, "little")  # prog-if, subclass, base class
    header[0x0E] = header_type
    return bytes(header)


def vpd_blob(identifier: bytes, keywords: list[tuple[bytes, bytes]], *, reserved: int = 4) -> bytes:
    """A VPD as the PCI spec lays it out: the identifier string (0x82), a VPD-R section (0x90) of
    `keywords` closed by `RV` (its checksum byte, then `reserved` - 1 zero bytes), the end tag (0x78)."""
    ident = bytes([0x82]) + struct.pack("<H", len(identifier)) + identifier
    fields = b"".join(k + bytes([len(v)]) + v for k, v in keywords)
    body_len = len(fields) + 3 + reserved
    head = ident + bytes([0x90]) + struct.pack("<H", body_len) + fields + b"RV" + bytes([reserved])
    checksum = -sum(head) & 0xFF
    return head + bytes([checksum]) + bytes(reserved - 1) + bytes([0x78])
