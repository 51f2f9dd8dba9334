"""SCSI rules: LUNs are forwarded one by one; hosts and targets are reached through their adapter."""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..judging.batch import batched
from ..model import Device, Inventory, Verdict

SCSI_TYPES = ("scsi_host", "scsi_target", "scsi")


def _verdicts(inventory: Inventory, settings: object, facts: object) -> dict[str, Verdict | None]:
    return {d.name: passthrough_verdict(d) for d in inventory if d.type in SCSI_TYPES}


def _affected(inventory: Inventory, settings: object, facts: object) -> dict[str, Iterator[str]]:
    return {d.name: inventory.descendants(d.name) for d in inventory if d.type in SCSI_TYPES}


# tryfirst: the type's base rule speaks first, so its reason leads a device's reasons.
@hookimpl(tryfirst=True)
@batched(_verdicts)
def passthrough_verdict(device: Device) -> Verdict | None:
    if device.type == "scsi":
        return Verdict.allow("SCSI device (LUN)")
    if device.type == "scsi_host":
        return Verdict.deny("SCSI host: pass the adapter's PCI function instead")
    if device.type == "scsi_target":
        return Verdict.deny("SCSI target: pass its LUNs or the adapter's PCI function instead")
    return None


@hookimpl
@batched(_affected)
def passthrough_affected(device: Device, inventory: Inventory) -> Iterator[str] | None:
    if device.type not in SCSI_TYPES:
        return None
    return inventory.descendants(device.name)
