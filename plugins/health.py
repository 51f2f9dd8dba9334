"""Device health: PCIe links that trained below their width, and fatal PCIe errors (AER).

Reads only what the source read from sysfs (`Device.link_width`, `Device.aer_errors`); a value
the kernel does not give is unknown, never a finding.
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import hookimpl
from ..model import Check, Finding, Inventory

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
    for dev in inventory:
        if dev.type != "pci":
            continue
        current, widest = dev.link_width
        if dev.header_type == 0 and current is not None and widest is not None and current < widest:
            yield Finding("link_downtrained", "warning", dev.name,
                          f"{dev.name} ({dev.address}) trained its PCIe link at x{current} of x{widest}: "
                          "it runs with a fraction of its bandwidth", FIXES["link_downtrained"])
        fatal = dev.aer_errors[2]
        if fatal:
            yield Finding("pcie_fatal_errors", "critical", dev.name,
                          f"{dev.name} ({dev.address}) reported {fatal} fatal PCIe error(s) since boot (AER): "
                          "the link or the device failed", FIXES["pcie_fatal_errors"])
