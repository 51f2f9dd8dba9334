"""Which VM holds which device: domains' host-device references resolved to node-device names.

A device named by several domains (only one can run with it) lists them all, running ones
first; `assigned_to` is the first. A reference that matches nothing on this host (a device
unplugged since the domain was defined) is returned as missing, for the `hostdev_missing`
finding; one that matches several (USB by vendor/product with two identical sticks: libvirt
itself refuses to start such a domain) is logged and counted, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace

from ...model import Device
from .libvirt_xml import HostdevRef

log = logging.getLogger(__name__)


def _matches(ref: HostdevRef, dev: Device, scsi_host: dict[str, str]) -> bool:
    if ref.kind == "pci":
        return dev.type == "pci" and dev.address == ref.pci_address
    if ref.kind == "usb":
        if dev.type != "usb_device":
            return False
        wanted = (ref.vendor_id, ref.product_id, ref.busnum, ref.devnum)
        have = (dev.vendor_id, dev.product_id, dev.busnum, dev.devnum)
        return any(w is not None for w in wanted) and all(w is None or w == h for w, h in zip(wanted, have))
    if ref.kind == "scsi":
        host = scsi_host.get(ref.scsi_adapter or "")
        if dev.type != "scsi" or host is None or ref.scsi_address is None:
            return False
        bus, target, unit = ref.scsi_address
        return dev.address == f"{host}:{bus}:{target}:{unit}"
    if ref.kind == "mdev":
        # libvirt >= 7.8 appends the parent's address: mdev_<uuid>_0000_00_02_0
        uuid = "mdev_" + (ref.uuid or "").replace("-", "_")
        return dev.type == "mdev" and (dev.name == uuid or dev.name.startswith(uuid + "_"))
    return False


def assign(
    devices: list[Device],
    domains: Iterable[tuple[str, bool, list[HostdevRef]]],
    count: Callable[[str], None],
) -> tuple[list[Device], list[tuple[str, str]]]:
    """The devices with their assignments from the domains' (name, running, refs), and the
    (domain, reference) pairs that name no device of this host."""
    # libvirt names a SCSI adapter by its node-device name (scsi_host0) and the LUN by host number.
    scsi_host = {d.name: d.address.removeprefix("host") for d in devices if d.type == "scsi_host" and d.address}
    by_kind: dict[str, list[Device]] = {}
    for d in devices:
        by_kind.setdefault(d.type, []).append(d)
    kind_types = {"pci": "pci", "usb": "usb_device", "scsi": "scsi", "mdev": "mdev"}
    holders: dict[str, list[tuple[bool, str]]] = {}
    missing: list[tuple[str, str]] = []
    for domain, running, refs in domains:
        for ref in refs:
            found = [d.name for d in by_kind.get(kind_types[ref.kind], ()) if _matches(ref, d, scsi_host)]
            if len(found) != 1:
                kind = "hostdev_unmatched" if not found else "hostdev_ambiguous"
                log.warning("domain %s: %s host device %s matches %d devices; not assigned", domain, ref.kind,
                            _describe(ref), len(found))
                count(kind)
                if not found:
                    missing.append((domain, f"{ref.kind} {_describe(ref)}"))
                continue
            holders.setdefault(found[0], []).append((not running, domain))
    out = []
    for d in devices:
        held = sorted(set(holders.get(d.name, ())))  # running first, then by name
        if not held:
            out.append(d)
            continue
        assignments = tuple((name, not stopped) for stopped, name in held)
        out.append(replace(d, assignments=assignments, assigned_to=assignments[0][0],
                           assigned_running=assignments[0][1]))
    return out, sorted(set(missing))


def _describe(ref: HostdevRef) -> str:
    parts = {k: v for k, v in (("address", ref.pci_address), ("vendor", ref.vendor_id), ("product", ref.product_id),
                               ("bus", ref.busnum), ("device", ref.devnum), ("adapter", ref.scsi_adapter),
                               ("scsi", ref.scsi_address), ("uuid", ref.uuid)) if v is not None}
    return " ".join(f"{k}={v}" for k, v in parts.items())
