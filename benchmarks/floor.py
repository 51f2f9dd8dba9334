"""The Python floor: list and read exactly what the sysfs source reads, with the cheapest calls Python has,
and parse nothing. No implementation of the source can be faster than this loop in the same interpreter.

The same files, links and listings as the C floor (floor.c), so the two floors differ only in language.
"""

from __future__ import annotations

import os

PCI_FILES = ("vendor", "device", "class", "subsystem_vendor", "subsystem_device", "numa_node", "boot_vga",
             "reset_method", "enable", "sriov_totalvfs", "sriov_numvfs", "aer_dev_correctable", "aer_dev_nonfatal",
             "aer_dev_fatal", "power_state")
PCI_LINK_FILES = ("current_link_speed", "max_link_speed", "current_link_width", "max_link_width")  # not for VFs
PCI_LINKS = ("driver", "iommu_group", "physfn")
USB_DEVICE_FILES = ("idVendor", "idProduct", "manufacturer", "product", "bDeviceClass", "busnum", "devnum")
LUN_FILES = ("vendor", "model", "type")
MDEV_FILES = ("name", "device_api", "available_instances")
MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")


def _read(path: str, size: int = 4097) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _read_whole(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return -1
    n = 0
    try:
        while chunk := os.read(fd, 1 << 16):
            n += len(chunk)
    finally:
        os.close(fd)
    return n


def _entries(sysfs: str, bus: str) -> list[tuple[str, str]]:
    base = os.path.join(sysfs, "bus", bus, "devices")
    return [(e, os.path.normpath(os.path.join(base, os.readlink(os.path.join(base, e))))) for e in os.listdir(base)]


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def floor_read(sysfs: str, procfs: str, pci_ids: str | None = None) -> int:
    """Returns the number of bytes read, so that nothing is optimised away."""
    n = _read_whole(pci_ids) if pci_ids else 0
    for name, path in _entries(sysfs, "pci"):
        attrs = os.listdir(path)
        for a in PCI_FILES:
            if a in attrs:
                n += len(_read(f"{path}/{a}"))
        if "physfn" not in attrs:
            for a in PCI_LINK_FILES:
                if a in attrs:
                    n += len(_read(f"{path}/{a}"))
        n += len(_read(f"{path}/config", 64))
        for a in attrs:
            if a in PCI_LINKS or a.startswith("virtfn"):
                n += len(os.readlink(f"{path}/{a}"))
        if "vfio-dev" in attrs:
            n += len(_listdir(f"{path}/vfio-dev"))
        if "mdev_supported_types" in attrs:
            for t in _listdir(f"{path}/mdev_supported_types"):
                tdir = f"{path}/mdev_supported_types/{t}"
                tattrs = _listdir(tdir)
                for a in MDEV_FILES:
                    if a in tattrs:
                        n += len(_read(f"{tdir}/{a}"))
                if "devices" in tattrs:
                    n += len(_listdir(f"{tdir}/devices"))
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
        if name.count(":") == 3 and not name.startswith(("host", "target")):
            for a in LUN_FILES:
                if a in attrs:
                    n += len(_read(f"{path}/{a}"))
            if "driver" in attrs:
                n += len(os.readlink(f"{path}/driver"))
            if "block" in attrs:
                n += len(os.listdir(f"{path}/block"))
    for module in MODULES:
        pdir = os.path.join(sysfs, "module", module, "parameters")
        for p in _listdir(pdir):
            n += len(_read(f"{pdir}/{p}"))
    n += _read_whole(os.path.join(procfs, "cmdline"))
    n += _read_whole(os.path.join(procfs, "interrupts"))
    n += len(_listdir(os.path.join(sysfs, "firmware", "acpi", "tables")))
    n += len(_listdir(os.path.join(sysfs, "kernel", "iommu_groups")))
    n += len(_listdir(os.path.join(sysfs, "class", "iommu")))
    if _read_whole(os.path.join(procfs, "1", "mountinfo")) < 0:  # PID 1's view first, as the source
        n += _read_whole(os.path.join(procfs, "self", "mountinfo"))
    n += len(_listdir(procfs))  # the holder scan lists the processes
    return n


if __name__ == "__main__":  # a whole process, timed beside the C floor and `devices --json`
    import sys

    print(floor_read(*sys.argv[1:4]))
