"""Options the rules read: set from the command line, handed to every hook."""

from __future__ import annotations

from dataclasses import dataclass

# Bridges and other infrastructure (0x06), memory controllers (0x05), processors (0x0b):
# passing them cannot work and can take the host down with them.
DEFAULT_PCI_DENIED_CLASSES: tuple[str, ...] = ("0x05", "0x06", "0x0b")


@dataclass(frozen=True, slots=True)
class Settings:
    # PCI class prefixes that are never eligible: "0x06" matches a base class,
    # "0x0604" base class and subclass.
    pci_denied_classes: tuple[str, ...] = DEFAULT_PCI_DENIED_CLASSES
