"""What every hook is handed: the values of the plugins' own options, and what plugins made of
them at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class ConfigError(Exception):
    """A start-up option that cannot be honoured: the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Built once at start, from the command line (or from defaults), then handed to every hook.

    The core reads none of `options`: each plugin declares its own in `passthrough_addoption`,
    reads them back in `passthrough_configure`, and keeps what it parsed from them (a policy
    file, a class list) in `stash` under a key of its own, for its per-device hooks.
    """

    # Option values by argparse `dest`, for every option a plugin added (defaults included).
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # Plugin modules to load by import path, beside the entry points (--plugin).
    plugins: tuple[str, ...] = ()
    # Plugin names never loaded, built-ins included (--disable-plugin).
    disabled_plugins: tuple[str, ...] = ()
    # What plugins prepared at start for their hooks, by a key each plugin owns.
    stash: dict[str, Any] = field(default_factory=dict)

    def getoption(self, dest: str, default: Any = None) -> Any:
        """The value of one plugin option, by its `dest`."""
        return self.options.get(dest, default)
