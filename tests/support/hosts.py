"""Fixture hosts: small, realistic device layouts that the tests work out by hand.

Each function adds its devices to a SysfsTree; a host may combine several.
"""

from __future__ import annotations

from .sysfs_builder import SysfsTree, char_number, vpd_blob

INTEL, NVIDIA, LINUX, SAMSUNG = 0x8086, 0x10DE, 0x1D6B, 0x144D


def base(t: SysfsTree) -> None:
    """Host bridge in its own group, as on every Intel desktop."""
    t.pci("0000:00:00.0", INTEL, 0x3E30, 0x060000, group=0, reset_method=None)
    t.iommu_unit("dmar0")


def desktop_gpu(t: SysfsTree, groups: bool = True) -> None:
    """Root port 00:01.0 (group 1) with a GPU and its HDMI audio function (group 2)."""
    g = (lambda n: n) if groups else (lambda n: None)
    t.pci("0000:00:01.0", INTEL, 0x1901, 0x060400, driver="pcieport", group=g(1), reset_method=None)
    t.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, parent="0000:00:01.0", driver="nvidia", group=g(2),
          boot_vga=True, reset_method="bus")
    t.pci("0000:01:00.1", NVIDIA, 0x228B, 0x040300, parent="0000:00:01.0", driver="snd_hda_intel", group=g(2),
          reset_method="bus")


def chipset_switch(t: SysfsTree) -> None:
    """A chipset root port without ACS: a switch and everything behind it share group 5 (9 functions).

    00:1c.0 root port -> 02:00.0 switch upstream -> 03:00.0/03:01.0/03:02.0 downstream ports
    -> 04:00.0 xHCI, 05:00.0 SATA, 06:00.0 + 06:00.1 dual-port NIC.
    The xHCI carries a root hub with a keyboard; the SATA controller a disk.
    """
    t.pci("0000:00:1c.0", INTEL, 0xA110, 0x060400, driver="pcieport", group=5, reset_method=None)
    t.pci("0000:02:00.0", INTEL, 0x15EF, 0x060400, parent="0000:00:1c.0", driver="pcieport", group=5)
    for dev in ("00", "01", "02"):
        t.pci(f"0000:03:{dev}.0", INTEL, 0x15EF, 0x060400, parent="0000:02:00.0", driver="pcieport", group=5)
    xhci = t.pci("0000:04:00.0", INTEL, 0x15EC, 0x0C0330, parent="0000:03:00.0", driver="xhci_hcd", group=5)
    sata = t.pci("0000:05:00.0", 0x1B21, 0x0612, 0x010601, parent="0000:03:01.0", driver="ahci", group=5)
    t.pci("0000:06:00.0", INTEL, 0x1521, 0x020000, parent="0000:03:02.0", driver="igb", group=5)
    t.pci("0000:06:00.1", INTEL, 0x1521, 0x020000, parent="0000:03:02.0", driver="igb", group=5)
    hub = t.usb_device("usb3", LINUX, 0x0002, parent=xhci, device_class=9, busnum=3, driver="usb")
    kbd = t.usb_device("3-1", 0x046D, 0xC31C, parent=hub, busnum=3, devnum=2, product_name="USB Keyboard")
    t.usb_interface("3-1:1.0", parent=kbd, interface_class=3, driver="usbhid")
    host = t.scsi_host(2, parent=sata, via="ata3")
    target = t.scsi_target("target2:0:0", parent=host)
    t.scsi_lun("2:0:0:0", parent=target, block="sdb")


def sriov_nic(t: SysfsTree) -> None:
    """An SR-IOV PF (group 30) with two VFs in groups 31 and 32, behind root port 00:03.0 (group 29)."""
    t.pci("0000:00:03.0", INTEL, 0x1903, 0x060400, driver="pcieport", group=29, reset_method=None)
    t.pci("0000:81:00.0", INTEL, 0x1572, 0x020000, parent="0000:00:03.0", driver="i40e", group=30,
          sriov_totalvfs=64)
    t.pci("0000:81:02.0", INTEL, 0x154C, 0x020000, parent="0000:00:03.0", driver="iavf", group=31,
          physfn="0000:81:00.0")
    t.pci("0000:81:02.1", INTEL, 0x154C, 0x020000, parent="0000:00:03.0", driver="vfio-pci", group=32,
          physfn="0000:81:00.0")


def orphan_vf(t: SysfsTree) -> None:
    """A VF whose PF is not in the tree (hot-removed, or a partial capture)."""
    t.pci("0000:82:10.0", INTEL, 0x10ED, 0x020000, driver="ixgbevf", group=40, physfn="0000:82:00.0")


def usb_tree(t: SysfsTree) -> None:
    """xHCI 00:14.0 (group 3): root hub usb1 -> external hub 1-1 -> 1-1.2 mouse, 1-1.4 storage stick;
    root hub usb2 (USB 3) with nothing on it."""
    xhci = t.pci("0000:00:14.0", INTEL, 0xA36D, 0x0C0330, driver="xhci_hcd", group=3)
    usb1 = t.usb_device("usb1", LINUX, 0x0002, parent=xhci, device_class=9, busnum=1, devnum=1,
                        manufacturer="Linux 6.1.0 xhci-hcd", product_name="xHCI Host Controller")
    t.usb_interface("1-0:1.0", parent=usb1, interface_class=9, driver="hub")
    t.usb_device("usb2", LINUX, 0x0003, parent=xhci, device_class=9, busnum=2, devnum=1)
    hub = t.usb_device("1-1", 0x05E3, 0x0610, parent=usb1, device_class=9, busnum=1, devnum=2, product_name="USB2.0 Hub")
    t.usb_interface("1-1:1.0", parent=hub, interface_class=9, driver="hub")
    mouse = t.usb_device("1-1.2", 0x046D, 0xC077, parent=hub, busnum=1, devnum=3,
                         manufacturer="Logitech", product_name="USB Optical Mouse")
    t.usb_interface("1-1.2:1.0", parent=mouse, interface_class=3, driver="usbhid")
    stick = t.usb_device("1-1.4", 0x0781, 0x5567, parent=hub, busnum=1, devnum=4, product_name="Cruzer Blade")
    intf = t.usb_interface("1-1.4:1.0", parent=stick, interface_class=8, driver="usb-storage")
    host = t.scsi_host(6, parent=intf)
    target = t.scsi_target("target6:0:0", parent=host)
    t.scsi_lun("6:0:0:0", parent=target, vendor="SanDisk", model="Cruzer Blade", block="sdc")


def sata_disks(t: SysfsTree) -> None:
    """AHCI 00:17.0 (group 4): host0 (via ata1) -> target0:0:0 -> LUNs 0:0:0:0 (disk) and 0:0:0:1 (cd-rom);
    host1 (via ata2) with no target."""
    ahci = t.pci("0000:00:17.0", INTEL, 0xA352, 0x010601, driver="ahci", group=4)
    host0 = t.scsi_host(0, parent=ahci, via="ata1")
    target = t.scsi_target("target0:0:0", parent=host0)
    t.scsi_lun("0:0:0:0", parent=target, model="Samsung SSD 860", block="sda")
    t.scsi_lun("0:0:0:1", parent=target, model="DVD-RW", scsi_type=5, block="sr0", driver="sr")
    t.scsi_host(1, parent=ahci, via="ata2")


def workstation(t: SysfsTree) -> None:
    """Everything above on one host: the golden-file and parity host."""
    base(t)
    desktop_gpu(t)
    usb_tree(t)
    sata_disks(t)
    chipset_switch(t)
    sriov_nic(t)


def virtio_root(t: SysfsTree, groups: bool = False) -> None:
    """A small VM like the machine the tests run on: host bridge, virtio-blk 00:02.0 holding `/` on vda
    (254:0, the path .../0000:00:02.0/virtio1/block/vda), a virtio NIC 00:03.0; no IOMMU by default."""
    g = (lambda n: n) if groups else (lambda n: None)
    t.pci("0000:00:00.0", INTEL, 0x0D57, 0x060000, group=g(0), reset_method=None)
    blk = t.pci("0000:00:02.0", 0x1AF4, 0x1001, 0x010000, driver="virtio-pci", group=g(1), reset_method=None)
    t.pci("0000:00:03.0", 0x1AF4, 0x1000, 0x020000, driver="virtio-pci", group=g(2), reset_method=None)
    t.block("vda", parent=blk / "virtio1", dev="254:0")
    t.root_mount("254:0", "/dev/vda")


def small_vm(t: SysfsTree) -> None:
    """A small VM like the one the samples of README.md and docs/cli.md were taken on: host bridge
    8086:0d57, then virtio functions (Red Hat 0x1af4) without reset methods: GPU 00:01.0, block
    00:02.0 (class 0x018000) holding `/` on vda, NIC 00:03.0, two more of class 0xffff00; no IOMMU,
    interrupt chips without remapping, no DMAR/IVRS table; misc devices but no iommufd."""
    t.pci("0000:00:00.0", INTEL, 0x0D57, 0x060000, reset_method=None)
    for addr, device, cls in (("0000:00:01.0", 0x1045, 0xFFFF00), ("0000:00:02.0", 0x1042, 0x018000),
                              ("0000:00:03.0", 0x1041, 0x020000), ("0000:00:04.0", 0x1053, 0xFFFF00),
                              ("0000:00:05.0", 0x1044, 0xFFFF00)):
        path = t.pci(addr, 0x1AF4, device, cls, driver="virtio-pci", reset_method=None)
        if addr == "0000:00:02.0":
            t.block("vda", parent=path / "virtio1", dev="254:0")
    t.root_mount("254:0", "/dev/vda")
    t.interrupts("IO-APIC", "IO-APIC")
    t.misc("cpu_dma_latency", "10:259")


def nvme_lvm_root(t: SysfsTree) -> None:
    """NVMe 00:1d.0 -> 3d:00.0 (group 12, alone) with nvme0n1p3 under LVM: `/` on dm-0 (253:0)."""
    t.pci("0000:00:1d.0", INTEL, 0xA330, 0x060400, driver="pcieport", group=11, reset_method=None)
    nvme = t.pci("0000:3d:00.0", SAMSUNG, 0xA808, 0x010802, parent="0000:00:1d.0", driver="nvme", group=12)
    disk = t.block("nvme0n1", parent=nvme / "nvme" / "nvme0", dev="259:0")
    part = t.partition(disk, "nvme0n1p3", dev="259:3", number=3)
    t.virtual_block("dm-0", dev="253:0", slaves=(part,), dm_name="vg0-root")
    t.root_mount("253:0", "/dev/mapper/vg0-root")


NIC_VPD = vpd_blob(b"Example NIC", [(b"PN", b"EX-1234"), (b"EC", b"A01"), (b"SN", b"MT1234X00001"),
                                      (b"V0", b"PCIeGen3 x8")])


def serials(t: SysfsTree) -> None:
    """Devices that say who they are, each alone in its group: a NIC 3b:00.0 (group 20) whose VPD
    gives serial MT1234X00001, a NIC 3c:00.0 (group 21) whose VPD fails its checksum (no serial, one
    `bad_attribute`), an NVMe controller 3d:00.0 (group 22) with serial S4EWNX0R123456 and an xHCI
    00:14.0 (group 3) with a USB stick 1-4 of serial 4C530001230117115290 on root hub usb1, whose
    serial is its controller's address, as the kernel gives a root hub."""
    base(t)
    t.pci("0000:3b:00.0", 0x15B3, 0x1017, 0x020000, driver="mlx5_core", group=20)
    t.vpd("0000:3b:00.0", NIC_VPD, name="Example NIC", part_number="EX-1234", serial_number="MT1234X00001")
    t.pci("0000:3c:00.0", 0x15B3, 0x1017, 0x020000, driver="mlx5_core", group=21)
    bad = bytearray(NIC_VPD)
    bad[bad.index(b"MT1234X00001")] ^= 0x01  # one bit flipped in the serial: the sum is off by one
    t.vpd("0000:3c:00.0", bytes(bad))
    t.pci("0000:3d:00.0", SAMSUNG, 0xA808, 0x010802, driver="nvme", group=22)
    t.nvme_controller("0000:3d:00.0", "S4EWNX0R123456")
    xhci = t.pci("0000:00:14.0", INTEL, 0xA36D, 0x0C0330, driver="xhci_hcd", group=3)
    usb1 = t.usb_device("usb1", LINUX, 0x0002, parent=xhci, device_class=9, busnum=1, devnum=1,
                        serial="0000:00:14.0")
    t.usb_interface("1-0:1.0", parent=usb1, interface_class=9, driver="hub")
    stick = t.usb_device("1-4", 0x0781, 0x5567, parent=usb1, busnum=1, devnum=2, product_name="Cruzer Blade",
                         serial="4C530001230117115290")
    t.usb_interface("1-4:1.0", parent=stick, interface_class=8, driver="usb-storage")


def clean_host(t: SysfsTree, cdev: str | None = "237:0") -> None:
    """IOMMU on, one NIC 00:19.0 bound to vfio-pci alone in group 7, with FLR and (a kernel of 6.6 or
    later) the VFIO device vfio-dev/vfio0 whose cdev `dev` is `cdev` (None: no `dev`, a kernel without
    CONFIG_VFIO_DEVICE_CDEV); `/` on an NVMe disk alone in its group: nothing to report but where the
    root filesystem is (info). A whole host's sysfs: class/misc holds VFIO's container node `vfio`
    (10:196, /dev/vfio/vfio), not `iommu` (so the cdev is told, 1 with the default `cdev`; iommufd 0)."""
    base(t)
    t.pci("0000:00:19.0", INTEL, 0x15BC, 0x020000, driver="vfio-pci", group=7, reset_method="flr bus",
          vfio_dev="vfio0", cdev=cdev)
    t.misc("vfio", "10:196")
    nvme_lvm_root(t)


def iommufd_host(t: SysfsTree) -> None:
    """A host of Linux 6.6+ built with CONFIG_VFIO_DEVICE_CDEV and iommufd: every backend.

    `clean_host` (the NIC 00:19.0 on vfio-pci, its vfio-dev/vfio0 `dev` 237:0: /dev/vfio/devices/vfio0),
    with group 7's VFIO node 243:7 (/dev/vfio/7) and class/misc holding `vfio` (10:196, /dev/vfio/vfio)
    and `iommu` (10:122, /dev/iommu). Worked out: group (a group node), cdev (the one device VFIO
    drives has its node), iommufd (class/misc/iommu): `passthrough_vfio_cdev_enabled 1`,
    `passthrough_iommufd_enabled 1`, no `vfio_no_cdev`."""
    clean_host(t)
    t.vfio_group(7, "243:7")
    t.iommufd()


def group_only_host(t: SysfsTree) -> None:
    """A host of Linux 6.1 to 6.5 (or later, built without CONFIG_VFIO_DEVICE_CDEV and iommufd): only
    VFIO's group interface.

    As `iommufd_host`, but vfio-dev/vfio0 of the NIC 00:19.0 has no `dev` and class/misc holds `vfio`
    only. Worked out: group yes; cdev no (the one device VFIO drives has no node); iommufd no (class/misc
    is there, `iommu` is not): `passthrough_vfio_cdev_enabled 0`, `passthrough_iommufd_enabled 0`, and
    one `vfio_no_cdev` warning naming pci_0000_00_19_0."""
    clean_host(t, cdev=None)
    t.vfio_group(7, "243:7")


def busy_host(tree: SysfsTree) -> SysfsTree:
    """GPU + audio (group 2) on vfio-pci held by a QEMU process through group 2's VFIO node; a USB
    mouse claimed by usbfs; a NIC on vfio-pci that is enabled, with no process to see; `/` on an NVMe disk.

    The fake procfs cannot hold a real /dev/vfio/2: group 2's node number is /dev/zero's, and the
    QEMU holds /dev/zero. Groups 7 and 8 have nodes of numbers no process here can hold."""
    base(tree)
    nvme_lvm_root(tree)
    tree.pci("0000:00:01.0", INTEL, 0x1901, 0x060400, driver="pcieport", group=1, reset_method=None)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, parent="0000:00:01.0", driver="vfio-pci", group=2,
             enable=1, reset_method="flr")
    tree.pci("0000:01:00.1", NVIDIA, 0x228B, 0x040300, parent="0000:00:01.0", driver="vfio-pci", group=2,
             enable=0, reset_method="flr")
    tree.pci("0000:00:19.0", INTEL, 0x15BC, 0x020000, driver="vfio-pci", group=7, enable=1, reset_method="flr")
    tree.pci("0000:00:1f.0", INTEL, 0x15BC, 0x020000, driver="vfio-pci", group=8, enable=0, reset_method="flr")
    usb_tree(tree)
    (tree.sys / "bus" / "usb" / "devices" / "1-1.2:1.0").resolve().joinpath("driver").unlink()
    tree._driver("usb", (tree.sys / "bus" / "usb" / "devices" / "1-1.2:1.0").resolve(), "usbfs")
    tree.vfio_group(2, char_number("/dev/zero"))
    tree.vfio_group(7, "511:7")
    tree.vfio_group(8, "511:8")
    tree.process(4242, "qemu-system-x86", ["/usr/bin/qemu-system-x86_64", "-name", "guest=win11,debug-threads=on",
                                           "-m", "8192"], {3: "/dev/vfio/vfio", 4: "/dev/zero", 5: "/dev/null"})
    tree.process(4300, "bash", ["bash"], {0: "/dev/pts/0"})
    return tree


def slot_widths(t: SysfsTree) -> None:
    """Two two-function x16 cards, each below a root port of its own, both trained x8:
    01:00.0/.1 in a slot wired x8 (root port 00:01.0 has x8 at most): healthy, the slot's full width;
    02:00.0/.1 in an x16 slot (root port 00:03.0, x16 at most): downtrained, half its width."""
    base(t)
    t.pci("0000:00:01.0", INTEL, 0x1901, 0x060400, driver="pcieport", group=1, reset_method=None, link_width=(8, 8))
    t.pci("0000:00:03.0", INTEL, 0x1905, 0x060400, driver="pcieport", group=3, reset_method=None,
          link_width=(8, 16))  # a downstream port reports the trained width of the link below it too
    for port, bus, group in (("0000:00:01.0", "01", 2), ("0000:00:03.0", "02", 4)):
        t.pci(f"0000:{bus}:00.0", NVIDIA, 0x2204, 0x030000, parent=port, driver="vfio-pci", group=group,
              reset_method="flr", link_width=(8, 16))
        t.pci(f"0000:{bus}:00.1", NVIDIA, 0x1AEF, 0x040300, parent=port, driver="vfio-pci", group=group,
              reset_method="flr", link_width=(8, 16))


def split_gpu(t: SysfsTree) -> None:
    """The GPU 01:00.0 handed to vfio-pci while its HDMI audio 01:00.1 stays on snd_hda_intel, both in
    group 2 (a critical `group_mixed`); no VM has them open, so both are available. Each resets by the
    bus only (`no_flr`). Remapping on, `/` on an NVMe disk of its own (group 12)."""
    base(t)
    t.pci("0000:00:01.0", INTEL, 0x1901, 0x060400, driver="pcieport", group=1, reset_method=None)
    t.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, parent="0000:00:01.0", driver="vfio-pci", group=2,
          reset_method="bus")
    t.pci("0000:01:00.1", NVIDIA, 0x228B, 0x040300, parent="0000:00:01.0", driver="snd_hda_intel", group=2,
          reset_method="bus")
    t.interrupts("IR-IO-APIC", "IR-PCI-MSI")
    nvme_lvm_root(t)


def resetless_nics(t: SysfsTree) -> None:
    """Nine NICs on vfio-pci, 0000:20:00.0 to 0000:28:00.0, each alone in groups 40 to 48, none with a
    reset method (`no_reset` nine times, one fix)."""
    for i in range(9):
        t.pci(f"0000:{0x20 + i:02x}:00.0", INTEL, 0x1533, 0x020000, driver="vfio-pci", group=40 + i, reset_method="")


MSI_REGION = "0x00000000fee00000 0x00000000feefffff msi"
HT_REGION = "0x000000fd00000000 0x000000ffffffffff reserved"
NIC_RMRR = "0x0000000079e1a000 0x0000000079e1cfff direct"


def rmrr_server(t: SysfsTree) -> None:
    """A server whose firmware keeps a 1:1 mapping (RMRR) on its onboard dual-port NIC: root port
    00:1c.0 (group 8) above the NIC 02:00.0/02:00.1 (igb, group 9, a `direct` region); the iGPU 00:02.0
    (group 1) and the xHCI 00:14.0 (group 3, from `usb_tree`) carry `direct-relaxable` RMRRs (graphics
    stolen memory, USB legacy emulation). Every group has the MSI window and a `reserved` region; `/`
    is on the NVMe disk 3d:00.0 (group 12)."""
    base(t)
    nvme_lvm_root(t)
    usb_tree(t)
    t.pci("0000:00:02.0", INTEL, 0x3E92, 0x030000, driver="i915", group=1, reset_method="flr")
    t.pci("0000:00:1c.0", INTEL, 0xA33C, 0x060400, driver="pcieport", group=8, reset_method=None)
    for fn in ("0000:02:00.0", "0000:02:00.1"):
        t.pci(fn, INTEL, 0x1521, 0x020000, parent="0000:00:1c.0", driver="igb", group=9, reset_method="flr")
    t.reserved_regions(1, "0x000000003c000000 0x000000003fffffff direct-relaxable", MSI_REGION, HT_REGION)
    t.reserved_regions(3, "0x000000003e2e0000 0x000000003e2fffff direct-relaxable", MSI_REGION, HT_REGION)
    t.reserved_regions(9, NIC_RMRR, MSI_REGION, HT_REGION)
    for group in (0, 8, 11, 12):
        t.reserved_regions(group, MSI_REGION, HT_REGION)


AMD = 0x1022


def two_roots(t: SysfsTree) -> None:
    """Two PCIe root complexes, as on a two-socket or chiplet server: root bus pci0000:00 holds the host
    bridge 00:00.0 and the root port 00:01.0 (group 1) above the NIC 01:00.0 (igb, group 2); root bus
    pci0000:40 holds the host bridge 40:00.0 (group 20) and the root port 40:01.1 (group 21) above the
    GPU 41:00.0 and its audio 41:00.1 (group 22). The USB tree hangs below the xHCI 00:14.0."""
    base(t)
    usb_tree(t)
    t.pci("0000:00:01.0", INTEL, 0x1901, 0x060400, driver="pcieport", group=1, reset_method=None)
    t.pci("0000:01:00.0", INTEL, 0x1521, 0x020000, parent="0000:00:01.0", driver="igb", group=2)
    t.pci("0000:40:00.0", AMD, 0x1480, 0x060000, group=20, reset_method=None)
    t.pci("0000:40:01.1", AMD, 0x1483, 0x060400, driver="pcieport", group=21, reset_method=None)
    t.pci("0000:41:00.0", NVIDIA, 0x2684, 0x030000, parent="0000:40:01.1", driver="nvidia", group=22)
    t.pci("0000:41:00.1", NVIDIA, 0x22BA, 0x040300, parent="0000:40:01.1", driver="snd_hda_intel", group=22)


H200_PF = "0000:41:00.0"
H200_VFS = ("0000:41:00.4", "0000:41:00.5", "0000:41:00.6", "0000:41:00.7")
VGPU_1_18C = (1414, "NVIDIA H200X-1-18C")
VGPU_2_35C = (1415, "NVIDIA H200X-2-35C")


def h200_vgpu(t: SysfsTree) -> None:
    """An H200 on NVIDIA's vendor-specific vGPU (no mdev), remapping on. The PF 41:00.0 (10de:2335,
    class 0x030200, on `nvidia`, 16 VFs at most, group 50) has four VFs 41:00.4-.7 in groups 51-54,
    each on the vendor's VFIO driver (vfio-dev/vfio0-3, driver `nvidia`), each with `nvidia/`:

    - .4 carries type 1414 and lists nothing (the GPU's capacity is taken); a QEMU (pid 5150, guest
      `llm1`) holds its cdev (vfio0's number is /dev/full's): in use, held by llm1.
    - .5 carries 1414, lists nothing, nobody holds it (vfio1 is 511:1): available.
    - .6 carries no type (0) and lists 1414 and 1415: blocked, "no vGPU type set on this VF".
    - .7 carries no type and lists 1414: blocked, the same.
    - the PF: blocked, "vGPUs are set on its virtual functions (pci_0000_41_00_4 carries type 1414)"
      (the first VF carrying one; its held VF would block it too, the vGPU reason comes first).

    vgpu series of the PF: available 1414 = 2 (.6, .7), 1415 = 1 (.6); instances 1414 = 2 (.4, .5),
    1415 = 0. Names come from .6 and .7's lists: the VFs carrying 1414 list nothing.
    """
    base(t)
    t.interrupts("IR-IO-APIC", "IR-PCI-MSI")
    t.pci(H200_PF, NVIDIA, 0x2335, 0x030200, driver="nvidia", group=50, reset_method="flr", sriov_totalvfs=16)
    for n, addr in enumerate(H200_VFS):
        t.pci(addr, NVIDIA, 0x2335, 0x030200, driver="nvidia", group=51 + n, reset_method="flr",
              physfn=H200_PF, vfio_dev=f"vfio{n}", cdev=char_number("/dev/full") if n == 0 else f"511:{n}")
    t.nvidia_vgpu(H200_VFS[0], 1414, [])
    t.nvidia_vgpu(H200_VFS[1], 1414, [])
    t.nvidia_vgpu(H200_VFS[2], 0, [VGPU_1_18C, VGPU_2_35C])
    t.nvidia_vgpu(H200_VFS[3], 0, [VGPU_1_18C])
    # A fake procfs cannot hold a real /dev/vfio/devices/vfio0: the QEMU holds /dev/full, vfio0's number.
    t.process(5150, "qemu-system-x86", ["/usr/bin/qemu-system-x86_64", "-name", "guest=llm1,debug-threads=on"],
              {3: "/dev/iommu", 4: "/dev/full"})
