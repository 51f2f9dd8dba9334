"""Fill what libvirt's node-device XML leaves out (reset methods, boot VGA, the driver in some
versions, ...) from the host's sysfs, when the device is there and is the same device.

The sysfs library's per-bus readers build the sysfs view, so both sources read an attribute the
same way. A field is only filled where libvirt said nothing; each filled device carries a note.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import fields, replace

from ...model import Device, HostFacts
from ..sysfs import Reader
from ..sysfs.devices import READERS, Fields
from ..sysfs.host import host_facts
from ..sysfs.procs import scan_holders, wanted_numbers
from ..sysfs.rootfs import root_devices

log = logging.getLogger(__name__)

BUS = {"pci": "pci", "usb_device": "usb", "usb": "usb", "scsi_host": "scsi", "scsi_target": "scsi", "scsi": "scsi"}
# Fields libvirt never reports: sysfs wins over the default.
SYSFS_ONLY = {"boot_vga", "reset_methods", "subsystem_vendor_id", "subsystem_product_id"}
# Fields libvirt may report but sysfs decides when it has a value. `serial`: libvirt knows only the
# VPD's, where the sysfs reader takes an NVMe controller's first, so the sources agree; libvirt's
# stays where sysfs has none (an unprivileged exporter cannot read `vpd`, libvirtd can).
SYSFS_FIRST = SYSFS_ONLY | {"serial"}
# Never taken from sysfs: identity, tree and assignment (libvirt names them for the operator).
KEEP = {"name", "type", "parent", "address", "assigned_to", "notes"}
_DEFAULTS = {f.name: f.default for f in fields(Device) if f.name not in ("name", "type")}


class SysfsFiller:
    def __init__(self, sysfs: str, procfs: str, scan_processes: bool = True) -> None:
        self.sysfs = sysfs
        self.procfs = procfs
        self.scan_processes = scan_processes

    def fill(
        self, devices: list[Device], errors: Counter[str]
    ) -> tuple[list[Device], HostFacts | None]:
        """The devices with sysfs' values where libvirt had none; host facts when sysfs is this host's."""
        if not os.path.isdir(os.path.join(self.sysfs, "bus")):
            return devices, None
        reader = Reader(self.sysfs, self.procfs)
        out: list[Device] = []
        seen_at: dict[str, Device] = {}  # canonical sysfs directory -> the device as libvirt names it
        for dev in devices:
            found = self._sysfs_view(reader, dev)
            if found is None:
                out.append(dev)
                continue
            path, seen = found
            merged = _merge(dev, seen)
            seen_at[path] = merged
            out.append(merged)
        # No device matched: this sysfs is some other machine's (a container's), not the host's facts either.
        host = None
        if seen_at:
            host = host_facts(reader)
            roots = root_devices(reader, {p: d.name for p, d in seen_at.items()},
                                 {d.name: d.type for d in seen_at.values()})
            if roots is not None:
                host = replace(host, root_devices=roots[0], root_disks=roots[1])
            if self.scan_processes:
                host = replace(host, holders=scan_holders(self.procfs, wanted_numbers(out, host)))
        errors.update(reader.errors)
        return out, host

    def _sysfs_view(self, reader: Reader, dev: Device) -> tuple[str, Fields] | None:
        bus = BUS.get(dev.type)
        if bus is None or not dev.address:
            return None
        path = os.path.realpath(os.path.join(self.sysfs, "bus", bus, "devices", dev.address))
        try:
            seen = READERS[bus](reader, dev.address, path, reader.entries(path))
        except (OSError, ValueError):
            return None  # not on this host, or unreadable: keep libvirt's view as it is
        if seen is None or seen["type"] != dev.type:
            return None
        if (dev.vendor_id, dev.product_id) != (seen.get("vendor_id"), seen.get("product_id")) and dev.vendor_id:
            log.debug("%s: sysfs at %s holds another device; not filled", dev.name, path)
            return None
        return path, seen


def _merge(dev: Device, seen: Fields) -> Device:
    filled: dict[str, object] = {}
    for key, default in _DEFAULTS.items():
        if key in KEEP:
            continue
        ours, theirs = getattr(dev, key), seen.get(key, default)
        if theirs == default or theirs == ours:
            continue
        if ours == default or key in SYSFS_FIRST:
            filled[key] = theirs
    if not filled:
        return dev
    note = "filled from sysfs: " + ", ".join(sorted(filled))
    return replace(dev, **filled, notes=dev.notes + (note,))
