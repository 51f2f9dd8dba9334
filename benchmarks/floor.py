"""The floor: list and read exactly what the sysfs source reads, with the cheapest calls Python has, and
parse nothing. No implementation of the source can be faster than this loop in the same interpreter."""

from __future__ import annotations

import os

PCI_FILES = ("vendor", "device", "class", "subsystem_vendor", "subsystem_device", "numa_node", "boot_vga",
             "reset_method", "sriov_totalvfs", "sriov_numvfs")
PCI_LINKS = ("driver", "iommu_group", "physfn")
USB_DEVICE_FILES = ("idVendor", "idProduct", "manufacturer", "product", "bDeviceClass", "busnum", "devnum")
LUN_FILES = ("vendor", "model", "type")
MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")


def _read(path: str, size: int = 4097) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _entries(sysfs: str, bus: str) -> list[tuple[str, str]]:
    base = os.path.join(sysfs, "bus", bus, "devices")
    return [(e, os.path.normpath(os.path.join(base, os.readlink(os.path.join(base, e))))) for e in os.listdir(base)]


def floor_read(sysfs: str, procfs: str) -> int:
    """Returns the number of bytes read, so that nothing is optimised away."""
    n = 0
    for name, path in _entries(sysfs, "pci"):
        attrs = os.listdir(path)
        for a in PCI_FILES:
            if a in attrs:
                n += len(_read(f"{path}/{a}"))
        n += len(_read(f"{path}/config", 64))
        for a in attrs:
            if a in PCI_LINKS or a.startswith("virtfn"):
                n += len(os.readlink(f"{path}/{a}"))
    for name, path in _entries(sysfs, "usb"):
        attrs = os.listdir(path)
        files = ("bInterfaceClass",) if ":" in name else USB_DEVICE_FILES
        for a in files:
            if a in attrs:
                n += len(_read(f"{path}/{a}"))
        if "driver" in attrs:
            n += len(os.readlink(f"{path}/driver"))
    for name, path in _entries(sysfs, "scsi"):
        attrs = os.listdir(path)
        if name.count(":") == 3:
            for a in LUN_FILES:
                if a in attrs:
                    n += len(_read(f"{path}/{a}"))
            if "driver" in attrs:
                n += len(os.readlink(f"{path}/driver"))
            if "block" in attrs:
                n += len(os.listdir(f"{path}/block"))
    for module in MODULES:
        pdir = os.path.join(sysfs, "module", module, "parameters")
        if os.path.isdir(pdir):
            for p in os.listdir(pdir):
                n += len(_read(f"{pdir}/{p}"))
    n += len(_read(os.path.join(procfs, "cmdline")))
    n += len(os.listdir(os.path.join(sysfs, "kernel", "iommu_groups")))
    n += len(os.listdir(os.path.join(sysfs, "class", "iommu")))
    return n
