"""Sources read host devices into an `Inventory`. One source per module, registered in `SOURCES`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from ...model import Inventory
from ..sysfs import ERROR_KINDS as SYSFS_ERROR_KINDS


class SourceError(Exception):
    """The source as a whole could not be read (not a single bad device: those are skipped)."""


class Source(Protocol):
    name: str

    def read(self) -> Inventory:
        """Read every device once. Raises SourceError when the source cannot be read at all."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A registered source: where its class lives (imported only when chosen: libvirt's needs
    libvirt-python) and the kinds of bad input it counts in passthrough_collect_errors_total."""

    module: str  # under passthrough_exporter.reading.sources
    cls: str
    error_kinds: tuple[str, ...]
    needs: str = ""  # what to install when the import fails

    def load(self, name: str) -> type:
        try:
            module = importlib.import_module(f"{__name__}.{self.module}")
        except ImportError as exc:
            raise SourceError(f"--source {name} needs {self.needs}: {exc}") from None
        return getattr(module, self.cls)


SOURCES: dict[str, SourceSpec] = {
    "sysfs": SourceSpec("sysfs", "SysfsSource", SYSFS_ERROR_KINDS),
    # The libvirt source also reads sysfs to fill what node-device XML leaves out.
    "libvirt": SourceSpec("libvirt", "LibvirtSource",
                          ("bad_xml", "vanished", "hostdev_unmatched", "hostdev_ambiguous", *SYSFS_ERROR_KINDS),
                          needs="libvirt-python (pip install 'passthrough-exporter[libvirt]')"),
}


def error_kinds() -> tuple[str, ...]:
    """Every kind any registered source counts, each once."""
    return tuple(dict.fromkeys(k for spec in SOURCES.values() for k in spec.error_kinds))
