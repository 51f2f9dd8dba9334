"""Sources read host devices into an `Inventory`. One source per module."""

from __future__ import annotations

from typing import Protocol

from passthrough_exporter.model import Inventory

SOURCES = ("sysfs", "libvirt")


class SourceError(Exception):
    """The source as a whole could not be read (not a single bad device: those are skipped)."""


class Source(Protocol):
    name: str

    def read(self) -> Inventory:
        """Read every device once. Raises SourceError when the source cannot be read at all."""
        ...

    def close(self) -> None: ...
