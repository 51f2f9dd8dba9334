"""Options the rules read: set from the command line, handed to every hook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from passthrough_exporter.policy import Policy

# Bridges and other infrastructure (0x06), memory controllers (0x05), processors (0x0b):
# passing them cannot work and can take the host down with them.
DEFAULT_PCI_DENIED_CLASSES: tuple[str, ...] = ("0x05", "0x06", "0x0b")


class ConfigError(Exception):
    """A start-up option that cannot be honoured: the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Settings:
    # PCI class prefixes that are never eligible: "0x06" matches a base class,
    # "0x0604" base class and subclass.
    pci_denied_classes: tuple[str, ...] = DEFAULT_PCI_DENIED_CLASSES
    # Plugin modules to load by import path, beside the entry points (--plugin).
    plugins: tuple[str, ...] = ()
    # Plugin names never loaded, built-ins included (--disable-plugin).
    disabled_plugins: tuple[str, ...] = ()
    # The site policy (--policy), parsed once at start; read by the built-in `policy` plugin.
    policy: Policy | None = None
