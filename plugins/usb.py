"""USB rules: devices are forwarded one by one (no IOMMU involved); hubs and interfaces are not."""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..model import Device, Inventory, Verdict

HUB_CLASS = "09"


USB_TYPES = ("usb_device", "usb")


# tryfirst: the type's base rule speaks first, so its reason leads a device's reasons.
@hookimpl(tryfirst=True)
def passthrough_verdicts(inventory: Inventory) -> dict[str, Verdict]:
    return {d.name: _verdict(d) for d in inventory if d.type in USB_TYPES}


def _verdict(device: Device) -> Verdict:
    if device.type == "usb":
        return Verdict.deny(f"USB interface: pass its device {device.parent} instead")
    if (device.address or "").startswith("usb"):
        return Verdict.deny("USB root hub: QEMU cannot pass a hub through")
    if device.usb_class == HUB_CLASS:
        return Verdict.deny("USB hub: QEMU cannot pass a hub through")
    return Verdict.allow("USB device")


@hookimpl
def passthrough_affected_sets(inventory: Inventory) -> dict[str, Iterator[str]]:
    return {d.name: inventory.descendants(d.name) for d in inventory if d.type in USB_TYPES}
