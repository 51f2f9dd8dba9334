"""PCI rules: endpoints are eligible, infrastructure is not; the IOMMU group decides what goes along."""

from __future__ import annotations

from passthrough_exporter import hookimpl
from passthrough_exporter.model import Device, Inventory, Verdict
from passthrough_exporter.settings import Settings

# PCI base classes (PCI Code and ID Assignment Specification), for readable reasons.
BASE_CLASSES = {
    "00": "unclassified device",
    "01": "mass storage controller",
    "02": "network controller",
    "03": "display controller",
    "04": "multimedia controller",
    "05": "memory controller",
    "06": "bridge",
    "07": "communication controller",
    "08": "system peripheral",
    "09": "input device controller",
    "0a": "docking station",
    "0b": "processor",
    "0c": "serial bus controller",
    "0d": "wireless controller",
    "0e": "intelligent controller",
    "0f": "satellite communications controller",
    "10": "encryption controller",
    "11": "signal processing controller",
    "12": "processing accelerator",
    "13": "non-essential instrumentation",
    "40": "coprocessor",
    "ff": "unassigned class",
}


def class_description(pci_class: str | None) -> str:
    if not pci_class:
        return "unknown class"
    base = pci_class.lower().removeprefix("0x")[:2]
    return BASE_CLASSES.get(base, f"class {pci_class}")


@hookimpl
def passthrough_verdict(device: Device, settings: Settings) -> Verdict | None:
    if device.type != "pci":
        return None
    what = class_description(device.pci_class)
    cls = (device.pci_class or "").lower()
    for prefix in settings.pci_denied_classes:
        if cls.startswith(prefix.lower()):
            return Verdict.deny(f"PCI {what} ({device.pci_class}) is host infrastructure, not an endpoint")
    if device.header_type not in (None, 0):
        return Verdict.deny(f"PCI function with header type {device.header_type} is a bridge, not an endpoint")
    warnings = []
    if device.boot_vga:
        warnings.append("boot VGA device: the host console and firmware use it")
    if device.physfn is not None:
        return Verdict(True, (f"PCI endpoint ({what}), SR-IOV virtual function of {device.physfn}",), tuple(warnings))
    return Verdict(True, (f"PCI endpoint ({what})",), tuple(warnings))


@hookimpl
def passthrough_affected(device: Device, inventory: Inventory) -> set[str] | None:
    if device.type != "pci":
        return None
    # Without IOMMU groups group_peers() is empty: the answer falls back to descendants and VFs.
    heads = (device.name, *inventory.group_peers(device.name), *inventory.virtual_functions(device.name))
    out = set(heads)
    for head in heads:
        out.update(inventory.descendants(head))
    return out
