"""USB rules: devices are forwarded one by one (no IOMMU involved); hubs and interfaces are not."""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..judging.batch import batched
from ..model import Device, Inventory, Verdict

HUB_CLASS = "09"


USB_TYPES = ("usb_device", "usb")


def _verdicts(inventory: Inventory, settings: object, facts: object) -> dict[str, Verdict | None]:
    return {d.name: passthrough_verdict(d) for d in inventory if d.type in USB_TYPES}


def _affected(inventory: Inventory, settings: object, facts: object) -> dict[str, Iterator[str]]:
    return {d.name: inventory.descendants(d.name) for d in inventory if d.type in USB_TYPES}


# tryfirst: the type's base rule speaks first, so its reason leads a device's reasons.
@hookimpl(tryfirst=True)
@batched(_verdicts)
def passthrough_verdict(device: Device) -> Verdict | None:
    if device.type == "usb":
        return Verdict.deny(f"USB interface: pass its device {device.parent} instead")
    if device.type != "usb_device":
        return None
    if (device.address or "").startswith("usb"):
        return Verdict.deny("USB root hub: QEMU cannot pass a hub through")
    if device.usb_class == HUB_CLASS:
        return Verdict.deny("USB hub: QEMU cannot pass a hub through")
    return Verdict.allow("USB device")


@hookimpl
@batched(_affected)
def passthrough_affected(device: Device, inventory: Inventory) -> Iterator[str] | None:
    if device.type not in USB_TYPES:
        return None
    return inventory.descendants(device.name)
