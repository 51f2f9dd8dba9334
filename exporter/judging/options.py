"""Plugin-owned command-line options: how `passthrough_addoption` reaches argparse, and how their
values come back as `Settings` through `passthrough_configure`."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pluggy

from .calls import at_start, implementations
from ..settings import ConfigError, Settings


class OptionParser:
    """What `passthrough_addoption` receives: adds one plugin's options to a command line."""

    def __init__(self, parser: argparse.ArgumentParser, plugin: str) -> None:
        self._parser = parser
        self._plugin = plugin
        self._group: Any = None
        self.dests: list[str] = []

    def addoption(self, *flags: str, **kwargs: Any) -> None:
        """Add an option; takes `argparse.ArgumentParser.add_argument`'s arguments."""
        if self._group is None:  # a group only for plugins that have options
            self._group = self._parser.add_argument_group(f"{self._plugin} plugin")
        action = self._group.add_argument(*flags, **kwargs)
        self.dests.append(action.dest)


def add_plugin_options(pm: pluggy.PluginManager, parser: argparse.ArgumentParser) -> list[str]:
    """Every loaded plugin's options added to `parser`, each plugin in a group of its own; their dests."""
    dests: list[str] = []
    for impl in implementations(pm, "passthrough_addoption"):
        options = OptionParser(parser, impl.plugin)
        at_start(impl, {"parser": options}, "add its options")  # a clash with another option included
        dests += options.dests
    return dests


def defaults(pm: pluggy.PluginManager) -> dict[str, Any]:
    """Every plugin option's default value, by dest (argparse applies each option's `type`)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # as every command's parser
    dests = add_plugin_options(pm, parser)
    namespace = parser.parse_args([])
    return {d: getattr(namespace, d) for d in dests}


def configure(
    pm: pluggy.PluginManager,
    options: Mapping[str, Any] | argparse.Namespace | None = None,
    plugins: Sequence[str] = (),
    disabled_plugins: Sequence[str] = (),
) -> Settings:
    """Settings for `pm`'s plugins from parsed options (defaults for those not given), after every
    plugin's `passthrough_configure` has read them. A plugin that refuses raises ConfigError."""
    values = defaults(pm)
    given = vars(options) if isinstance(options, argparse.Namespace) else dict(options or {})
    unknown = sorted(set(given) - set(values))
    if unknown and not isinstance(options, argparse.Namespace):  # a namespace also holds the core's options
        raise ConfigError(f"no loaded plugin has the option(s) {', '.join(unknown)}")
    values.update((k, v) for k, v in given.items() if k in values)
    settings = Settings(options=MappingProxyType(values), plugins=tuple(plugins),
                        disabled_plugins=tuple(disabled_plugins))
    for impl in implementations(pm, "passthrough_configure"):
        at_start(impl, {"settings": settings}, "configure")
    return settings
