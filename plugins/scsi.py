"""SCSI rules: LUNs are forwarded one by one; hosts and targets are reached through their adapter."""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..model import Device, Inventory, Verdict

SCSI_TYPES = ("scsi_host", "scsi_target", "scsi")


# tryfirst: the type's base rule speaks first, so its reason leads a device's reasons.
@hookimpl(tryfirst=True)
def passthrough_verdicts(inventory: Inventory) -> dict[str, Verdict]:
    return {d.name: _verdict(d) for d in inventory if d.type in SCSI_TYPES}


def _verdict(device: Device) -> Verdict:
    if device.type == "scsi":
        return Verdict.allow("SCSI device (LUN)")
    if device.type == "scsi_host":
        return Verdict.deny("SCSI host: pass the adapter's PCI function instead")
    return Verdict.deny("SCSI target: pass its LUNs or the adapter's PCI function instead")


@hookimpl
def passthrough_affected_sets(inventory: Inventory) -> dict[str, Iterator[str]]:
    return {d.name: inventory.descendants(d.name) for d in inventory if d.type in SCSI_TYPES}
