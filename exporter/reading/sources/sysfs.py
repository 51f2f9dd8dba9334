"""The sysfs source: PCI, USB and SCSI devices, IOMMU groups and isolation settings from /sys and /proc.

Read-only. Each device directory is listed once and only the attributes that exist are read,
so a read costs one listdir plus a few small reads per device. A device whose directory vanishes,
cannot be read or holds garbage in an attribute it cannot do without is skipped, logged and
counted by kind; garbage in an optional attribute leaves that field empty (and is counted).
How each file is read and parsed is the sysfs library's (`passthrough_exporter.reading.sysfs`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from ...model import COMPUTER, Device, Inventory
from ..pciids import PciIds
from ..state import BootState
from ..sysfs import Reader, Trace, error_kind
from ..sysfs.devices import READERS, Fields, usb_name_parent
from ..sysfs.host import host_facts
from ..sysfs.procs import scan_holders, wanted_numbers
from ..sysfs.rootfs import listed_ancestors, root_devices
from . import SOURCES, SourceError

log = logging.getLogger(__name__)


class SysfsSource:
    """Reads devices from a sysfs tree (the host's, a fixture's or an unpacked capture's)."""

    name = "sysfs"
    error_kinds = SOURCES["sysfs"].error_kinds

    def __init__(self, sysfs: str = "/sys", procfs: str = "/proc", pci_ids: PciIds | None = None,
                 scan_processes: bool = True, state: BootState | None = None) -> None:
        self.sysfs = sysfs
        self.procfs = procfs
        self.pci_ids = pci_ids
        self.scan_processes = scan_processes  # who holds which device: <procfs>/<pid>/fd
        self.state = state  # the previous boot's record, from --state.path (None: --no-state)

    def read(self, trace: Trace | None = None) -> Inventory:
        """Read every device once; `trace`, when given, records every path the read touched."""
        found_dirs = check_sysfs(self.sysfs)
        reader = Reader(self.sysfs, self.procfs, trace)
        if trace is not None:  # so that a capture of a host without devices reads as a sysfs too
            trace.dirs.update(found_dirs)
        found: list[tuple[str, Fields]] = []  # (canonical directory, fields)
        for bus in ("pci", "usb", "scsi"):
            found += read_bus(reader, bus)
        if self.pci_ids is not None:
            for _, f in found:
                if f["type"] == "pci":
                    f["vendor"], f["product"] = self.pci_ids.names(f["vendor_id"], f["product_id"])

        names = {path: f["name"] for path, f in found}
        usb_names = {f["address"]: f["name"] for _, f in found if f["type"] in ("usb", "usb_device")}
        root = os.path.realpath(self.sysfs)
        devices = []
        for path, f in found:
            parent = None
            if f["type"] in ("usb", "usb_device"):
                # Flat trees (captures, copies of /sys/bus/usb) lose the path; the name keeps it.
                parent = usb_names.get(usb_name_parent(f["address"]))
            if parent is None:
                parent = next(listed_ancestors(os.path.dirname(path), names, root), COMPUTER)
            devices.append(Device(parent=parent, **f))
        host = host_facts(reader)
        roots = root_devices(reader, names, {d.name: d.type for d in devices})
        if roots is not None:
            host = replace(host, root_devices=roots[0], root_disks=roots[1])
        if self.scan_processes and trace is None:  # a capture holds no other process's files
            host = replace(host, holders=scan_holders(self.procfs, wanted_numbers(devices, host)))
        if self.state is not None and trace is None:
            host = replace(host, **self.state.facts())
        log.debug("read %d devices from %s", len(devices), self.sysfs)
        return Inventory(devices, host, reader.errors)

    def close(self) -> None:
        pass


def check_sysfs(path: str) -> list[str]:
    """The directories that make `path` a sysfs; SourceError when there are none.

    A sysfs has a `devices/` directory, or (a partial capture) a bus with a `devices/` directory:
    `bus/usb/devices/`. An empty or wrong directory (a container started without the host's /sys,
    or /proc given for /sys, whose `bus/pci/devices` is a file) must never read as a healthy host
    without devices. A real sysfs without PCI (a microVM) is a host with no PCI devices.
    """
    found = [os.path.join(path, "devices")]
    if not os.path.isdir(found[0]):
        try:
            buses = sorted(os.listdir(os.path.join(path, "bus")))
        except OSError:
            buses = []
        found = [d for d in (os.path.join(path, "bus", b, "devices") for b in buses) if os.path.isdir(d)]
    if not found:
        what = "does not exist" if not os.path.exists(path) else "has no devices/ directory"
        raise SourceError(f"--path.sysfs {path} is not a sysfs: it {what} (in a container, mount the host's "
                          "/sys there, e.g. -v /sys:/host/sys:ro)")
    return found


def read_bus(reader: Reader, bus: str) -> list[tuple[str, Fields]]:
    """(canonical directory, fields) of each device of /sys/bus/<bus>, skipping the broken ones."""
    build = READERS[bus]
    out = []
    for sysname, path in reader.bus_entries(bus):
        try:
            attrs = reader.device_dir(path)
            try:
                fields = build(reader, sysname, path, attrs)
            finally:
                reader.release(attrs)
        except (OSError, ValueError) as exc:
            kind = error_kind(exc)
            log.warning("%s device %s skipped (%s): %s", bus, sysname, kind, exc)
            reader.count(kind)
            continue
        if fields is not None:
            out.append((path, fields))
    return out
