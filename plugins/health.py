"""Device health: PCIe links that trained below their width, and fatal PCIe errors (AER).

Reads only what the source read from sysfs (`Device.link_width`, `Device.aer_errors`); a value
the kernel does not give is unknown, never a finding.
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..model import Check, Device, Finding, Inventory

FIXES = {
    "link_downtrained": "reseat the card or move it to a slot wired for its full width, and check the "
    "slot's bifurcation setting in the firmware; a riser or a dirty edge connector often does this",
    "pcie_fatal_errors": "look at the kernel log (`journalctl -k | grep -i aer`) for the failing link, check "
    "power, seating and firmware; replace the card or the riser if the errors come back after a reboot",
}

@hookimpl
def passthrough_checks() -> list[Check]:
    return [Check("PCIe links at full width, no fatal PCIe errors", ("link_downtrained", "pcie_fatal_errors"))]


@hookimpl
def passthrough_findings(inventory: Inventory) -> Iterator[Finding]:
    pci = [d for d in inventory if d.type == "pci"]
    below = {d.name: limit for d in pci if (limit := _trained_below(d, inventory)) is not None}
    # Among the functions whose link could be judged: a function 0 asleep (D3cold, link unknown)
    # must not silence function 1's downtrained link.
    speakers = _link_speakers([d for d in pci if _judged(d)]) if below else set()
    for dev in pci:
        limit = below.get(dev.name)
        if limit is not None and dev.name in speakers:
            yield _downtrained(dev, limit)
        fatal = dev.aer_errors[2]
        if fatal:
            yield Finding("pcie_fatal_errors", "critical", dev.name,
                          f"{dev.name} ({dev.address}) reported {fatal} fatal PCIe error(s) since boot (AER): "
                          "the link or the device failed", FIXES["pcie_fatal_errors"])


def _trained_below(dev: Device, inventory: Inventory) -> int | None:
    """The width an endpoint's link should have trained at, when it trained narrower; else None.

    That width is the narrower of the device's own maximum and its upstream port's (the parent
    bridge's) maximum: a x16 card in a slot wired x8 trains x8 and is healthy. Without a known
    upstream maximum the device's own is the measure. Speed is never judged: idle links slow down.
    """
    if not _judged(dev):
        return None
    current, widest = dev.link_width
    upstream = inventory.devices.get(dev.parent) if dev.parent else None
    slot = upstream.link_width[1] if upstream is not None and upstream.type == "pci" else None
    limit = widest if slot is None else min(widest, slot)
    return limit if current < limit else None


def _judged(dev: Device) -> bool:
    """An endpoint whose link the kernel described: both widths known."""
    return dev.header_type == 0 and None not in dev.link_width


def _downtrained(dev: Device, limit: int) -> Finding:
    current, widest = dev.link_width
    of = f"x{limit}" if limit == widest else f"x{limit} (the slot's width; the card supports x{widest})"
    return Finding("link_downtrained", "warning", dev.name,
                   f"{dev.name} ({dev.address}) trained its PCIe link at x{current} of {of}: "
                   "it runs with a fraction of its bandwidth", FIXES["link_downtrained"])


def _link_speakers(pci: list[Device]) -> set[str]:
    """The one function per physical link that reports on it. Every function of a multi-function
    device (one domain:bus:device) shares its link, so the lowest function present speaks for it."""
    lowest: dict[str, tuple[str, str]] = {}  # domain:bus:device -> (function, name)
    for dev in pci:
        key, dot, function = (dev.address or "").rpartition(".")  # 0000:01:00.1
        if not dot:
            key, function = dev.name, ""
        if key not in lowest or function < lowest[key][0]:
            lowest[key] = (function, dev.name)
    return {name for _, name in lowest.values()}
