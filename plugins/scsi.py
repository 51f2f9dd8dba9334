"""SCSI rules: LUNs are forwarded one by one; hosts and targets are reached through their adapter."""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..model import Device, Inventory, Verdict


# tryfirst: the type's base rule speaks first, so its reason leads a device's reasons.
@hookimpl(tryfirst=True)
def passthrough_verdict(device: Device) -> Verdict | None:
    if device.type == "scsi":
        return Verdict.allow("SCSI device (LUN)")
    if device.type == "scsi_host":
        return Verdict.deny("SCSI host: pass the adapter's PCI function instead")
    if device.type == "scsi_target":
        return Verdict.deny("SCSI target: pass its LUNs or the adapter's PCI function instead")
    return None


@hookimpl
def passthrough_affected(device: Device, inventory: Inventory) -> Iterator[str] | None:
    if device.type not in ("scsi_host", "scsi_target", "scsi"):
        return None
    return inventory.descendants(device.name)
