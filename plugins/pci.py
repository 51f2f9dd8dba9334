"""PCI rules: endpoints are eligible, infrastructure is not; the IOMMU group decides what goes along."""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..judging.facts import Facts
from ..judging.options import OptionParser
from ..model import Check, Device, Finding, Inventory, Verdict
from ..reading.sysfs.attrs import BadAttribute, hex_id
from ..settings import ConfigError, Settings

# Bridges and other infrastructure (0x06), memory controllers (0x05), processors (0x0b):
# passing them cannot work and can take the host down with them.
DEFAULT_DENIED_CLASSES: tuple[str, ...] = ("0x05", "0x06", "0x0b")
DENIED = "pci.denied_classes"  # settings.stash key: the parsed class prefixes
UNREACHABLE = "unreachable: config space reads 0xffff"
UNREACHABLE_FIX = ("check the card's power and seating; `echo 1 > /sys/bus/pci/devices/ADDR/remove` then "
                   "`echo 1 > /sys/bus/pci/rescan` may bring it back, else power-cycle the host")

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

# Subclasses named where the base class alone would mislead (a host bridge is not a PCI bridge).
SUBCLASSES = {
    "0600": "host bridge",
    "0601": "ISA bridge",
    "0602": "EISA bridge",
    "0603": "MicroChannel bridge",
    "0604": "PCI bridge",
    "0605": "PCMCIA bridge",
    "0606": "NuBus bridge",
    "0607": "CardBus bridge",
    "0608": "RACEway bridge",
    "0609": "semi-transparent PCI-to-PCI bridge",
    "060a": "InfiniBand-to-PCI host bridge",
    "060b": "Advanced Switching-to-PCI host bridge",
}


def class_description(pci_class: str | None) -> str:
    if not pci_class:
        return "unknown class"
    digits = pci_class.lower().removeprefix("0x")
    return SUBCLASSES.get(digits[:4]) or BASE_CLASSES.get(digits[:2], f"class {pci_class}")


def unknown_class(pci_class: str | None) -> str | None:
    """Why the class is unknown: the kernel gave none, or a base class the PCI spec does not define."""
    if not pci_class:
        return "unknown class: the kernel reports none; check what the device is before passing it through"
    if pci_class.lower().removeprefix("0x")[:2] not in BASE_CLASSES:
        return (f"unknown class {pci_class}: its base class is not defined by the PCI specification; "
                "check what the device is before passing it through")
    return None


@hookimpl
def passthrough_addoption(parser: OptionParser) -> None:
    parser.addoption(
        "--pci.denied-classes", dest="pci_denied_classes", metavar="LIST",
        default=",".join(DEFAULT_DENIED_CLASSES),
        help="comma-separated PCI class prefixes never eligible: base class (0x06), base class and "
        "subclass (0x0604) or the full class (0x060400). The list replaces the default one: to add a "
        "class, repeat the defaults (%(default)s,0x03), or deny it in a --policy file (default: %(default)s)",
    )


def class_prefixes(text: str) -> tuple[str, ...]:
    """'0x05, 0x0604' -> ('0x05', '0x0604'); ConfigError naming the first bad item."""
    out = []
    for item in (c.strip() for c in text.split(",")):
        if not item:
            continue
        digits = item.lower().removeprefix("0x")
        try:
            prefix = hex_id(item, min(len(digits), 6) or 1)  # keeps the prefix's own length
        except BadAttribute:
            raise ConfigError(f"--pci.denied-classes: {item!r} is not a hex class prefix like 0x06 or 0x0604") from None
        # Whole bytes only, as the policy file's `class`: 0x3 would match no device (0x3xxxxx), not 0x03.
        if len(digits) not in (2, 4, 6):
            raise ConfigError(f"--pci.denied-classes: {item!r} is not a class prefix: give 2 hex digits (base "
                              "class, 0x03), 4 (and subclass, 0x0300) or 6 (and programming interface, 0x030000)")
        out.append(prefix)
    return tuple(out)


@hookimpl
def passthrough_configure(settings: Settings) -> None:
    settings.stash[DENIED] = class_prefixes(settings.getoption("pci_denied_classes") or "")


# tryfirst: the type's base rule speaks first, so its reason leads a device's reasons.
@hookimpl(tryfirst=True)
def passthrough_verdicts(inventory: Inventory, settings: Settings) -> dict[str, Verdict]:
    denied = settings.stash[DENIED]
    return {d.name: _verdict(d, denied) for d in inventory if d.type == "pci"}


def _verdict(device: Device, denied: tuple[str, ...]) -> Verdict:
    if device.unreachable:  # before the class: the class sysfs shows is from before it fell off
        return Verdict.deny(UNREACHABLE)
    what = class_description(device.pci_class)
    cls = (device.pci_class or "").lower()
    for prefix in denied:
        if cls.startswith(prefix.lower()):
            return Verdict.deny(f"{what} ({device.pci_class}) is host infrastructure, not an endpoint")
    if device.header_type not in (None, 0):
        return Verdict.deny(f"PCI function with header type {device.header_type} is a bridge, not an endpoint")
    warnings = [w for w in (unknown_class(device.pci_class),) if w]
    if device.boot_vga:
        warnings.append("boot VGA device: the host console and firmware use it")
    if device.physfn is not None:
        return Verdict(True, (f"PCI endpoint ({what}), SR-IOV virtual function of {device.physfn}",), tuple(warnings))
    return Verdict(True, (f"PCI endpoint ({what})",), tuple(warnings))


@hookimpl
def passthrough_findings(inventory: Inventory) -> Iterator[Finding]:
    for dev in inventory:
        if dev.type == "pci" and dev.unreachable:
            yield Finding("device_unreachable", "critical", dev.name,
                          f"{dev.name} ({dev.address}) {UNREACHABLE}: it fell off the bus (failed reset, link "
                          "down, power lost); the host and any VM using it have lost it", UNREACHABLE_FIX)


@hookimpl
def passthrough_checks() -> list[Check]:
    return [Check("PCI devices answer on the bus", ("device_unreachable",))]


@hookimpl
def passthrough_affected_sets(inventory: Inventory, facts: Facts) -> dict[str, frozenset[str] | set[str]]:
    return {d.name: _affected(d, inventory, facts) for d in inventory if d.type == "pci"}


def _affected(device: Device, inventory: Inventory, facts: Facts) -> frozenset[str] | set[str]:
    # The group and everything below it is one frozenset for all its members (kept by reference:
    # a group of 5,000 functions costs one set, not 5,000). Without IOMMU groups the answer falls
    # back to the device's own descendants and VFs.
    reach = facts.group_reach.get(device.iommu_group) if device.iommu_group is not None else None
    vfs = inventory.virtual_functions(device.name)
    if reach is not None and not vfs:
        return reach
    out = set(reach) if reach is not None else {device.name, *inventory.descendants(device.name)}
    for vf in vfs:
        out.add(vf)
        out.update(inventory.descendants(vf))
    return out
