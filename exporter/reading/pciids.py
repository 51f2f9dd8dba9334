"""Vendor and device names from the pci.ids database (pciutils/hwdata), where the host has it.

sysfs only knows numbers; libvirt takes names from the same database through udev.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable

from ..inputs import read_operator_file
from ..settings import ConfigError

log = logging.getLogger(__name__)

SEARCH_PATH = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")
MAX_SIZE = 16 << 20  # Debian's pci.ids is 1.4 MB; read whole, a file 10x its size is not one


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


class _LazyPciIds(PciIds):
    """The same answers as `parse`, with each vendor's device lines parsed on first question: a
    command reads 1.3 MB of pci.ids to name the few vendors a host has (5 on a big SR-IOV host).

    Only for a database `_regular` accepted, whose every line has one of the standard shapes.
    `vendors` and `devices` as attributes parse everything, for any other caller.
    """

    def __init__(self, section: str) -> None:
        self._section = section
        self._names: dict[int, str] = {}
        self._blocks: dict[int, list[tuple[int, int]]] = {}  # vendor -> (start, end) of its device lines
        previous: tuple[int, int] | None = None
        for m in _VENDOR.finditer(section):  # `section` starts with a newline: every line follows one
            v = int(m.group(1), 16)
            self._names[v] = m.group(2).strip()  # a vendor listed twice: the last name, as `parse`
            if previous is not None:
                self._blocks.setdefault(previous[0], []).append((previous[1], m.start()))
            previous = (v, m.end())
        if previous is not None:
            self._blocks.setdefault(previous[0], []).append((previous[1], len(section)))
        self._devices: dict[int, dict[int, str]] = {}

    def _vendor_devices(self, v: int) -> dict[int, str]:
        found = self._devices.get(v)
        if found is None:
            found = self._devices[v] = {}
            for start, end in self._blocks.get(v, ()):
                for m in _DEVICE.finditer(self._section, start, end):
                    found[int(m.group(1), 16)] = m.group(2).strip()
        return found

    def names(self, vendor_id: str | None, product_id: str | None) -> tuple[str | None, str | None]:
        if vendor_id is None:
            return None, None
        v = int(vendor_id, 16)
        p = int(product_id, 16) if product_id else -1
        return self._names.get(v), self._vendor_devices(v).get(p)

    @property  # type: ignore[override]
    def vendors(self) -> dict[int, str]:
        return dict(self._names)

    @property  # type: ignore[override]
    def devices(self) -> dict[tuple[int, int], str]:
        return {(v, p): name for v in self._blocks for p, name in self._vendor_devices(v).items()}


def parse(lines: Iterable[str]) -> PciIds:
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


# Each pattern starts with the newline before its line: the regex engine then jumps from newline to
# newline instead of trying every character of 1.3 MB.
_VENDOR = re.compile(r"\n([0-9A-Fa-f]{4})([^\n]*)")
_DEVICE = re.compile(r"\n\t([0-9A-Fa-f]{4})([^\n]*)")
# A line of any other shape than vendor, device, subsystem (`\t\t...`), comment or blank.
_IRREGULAR = re.compile(r"\n(?![0-9A-Fa-f]{4}|\t[0-9A-Fa-f]{4}|\t\t|#|[ \t]*(?:\n|\Z))")


def _regular(text: str) -> PciIds:
    """`parse(text.split("\\n"))`, lazily when every line of the vendor list has a standard shape;
    anything else (hand-edited files, odd whitespace) goes through `parse` itself."""
    # The class section ("C 03  Display controller") ends the vendor list.
    end = 0 if text.startswith("C ") else (text.find("\nC ") + 1 or len(text))
    section = "\n" + text[:end]
    if _IRREGULAR.search(section):
        return parse(section[1:].split("\n"))
    return _LazyPciIds(section)


@functools.lru_cache(maxsize=4)
def load(path: str | None = None) -> PciIds | None:
    """The database at `path`, else the first one found on the usual paths; None if there is none.

    A file the operator named (`--path.pci-ids`) that is missing, not a regular file or larger
    than MAX_SIZE is their mistake: ConfigError. The system's own is a convenience: without a
    usable one, a warning and devices named by their numbers.
    """
    if path:
        return _read(path)
    for candidate in SEARCH_PATH:
        if os.path.exists(candidate):
            try:
                return _read(candidate)
            except ConfigError as exc:
                log.warning("%s; devices are named by their numbers", exc)
                return None
    log.warning("no pci.ids found (%s): devices are named by their numbers; install pci.ids or hwdata, "
                "or pass --path.pci-ids none", ", ".join(SEARCH_PATH))
    return None


def _read(path: str) -> PciIds:
    text = read_operator_file(path, MAX_SIZE, "pci.ids file").decode("utf-8", "replace")
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as open() reads text
    try:
        return _regular(text)
    except ValueError as exc:  # a vendor line without a hex id: not a pci.ids
        raise ConfigError(f"{path}: not a pci.ids file: {exc}") from None
