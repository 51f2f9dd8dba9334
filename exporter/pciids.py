"""Vendor and device names from the pci.ids database (pciutils/hwdata), where the host has it.

sysfs only knows numbers; libvirt takes names from the same database through udev.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)

SEARCH_PATH = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")


class PciIds:
    def __init__(self, vendors: dict[int, str], devices: dict[tuple[int, int], str]) -> None:
        self.vendors = vendors
        self.devices = devices

    def names(self, vendor_id: str | None, product_id: str | None) -> tuple[str | None, str | None]:
        if vendor_id is None:
            return None, None
        v = int(vendor_id, 16)
        p = int(product_id, 16) if product_id else -1
        return self.vendors.get(v), self.devices.get((v, p))


def parse(lines) -> PciIds:
    vendors: dict[int, str] = {}
    devices: dict[tuple[int, int], str] = {}
    vendor = None
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("C "):  # the class section ends the vendor list
            break
        if line[0] != "\t":
            vendor = int(line[:4], 16)
            vendors[vendor] = line[4:].strip()
        elif line[1] != "\t" and vendor is not None:
            devices[(vendor, int(line[1:5], 16))] = line[5:].strip()
    return PciIds(vendors, devices)


@functools.lru_cache(maxsize=4)
def load(path: str | None = None) -> PciIds | None:
    """The database at `path`, else the first one found on the usual paths; None if there is none."""
    for candidate in (path,) if path else SEARCH_PATH:
        if candidate and os.path.exists(candidate):
            try:
                with open(candidate, encoding="utf-8", errors="replace") as f:
                    return parse(f)
            except (OSError, ValueError) as exc:
                log.warning("cannot read PCI names from %s: %s", candidate, exc)
                return None
    return None
