"""USB rules: devices are forwarded one by one (no IOMMU involved); hubs and interfaces are not."""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..model import Device, Inventory, Verdict

HUB_CLASS = "09"


# tryfirst: the type's base rule speaks first, so its reason leads a device's reasons.
@hookimpl(tryfirst=True)
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
def passthrough_affected(device: Device, inventory: Inventory) -> Iterator[str] | None:
    if device.type not in ("usb_device", "usb"):
        return None
    return inventory.descendants(device.name)
