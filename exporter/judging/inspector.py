"""The inspector: loads rule plugins and turns an inventory into a judged snapshot.

Each hook implementation is called on its own, in pluggy's order, through `calls`, so a plugin
that raises or answers garbage is contained: its error is logged and counted, the others still
rule, and each device it failed on carries a warning naming it. "Raises" includes SystemExit (a
plugin's `sys.exit()` ends nothing) and any other BaseException but KeyboardInterrupt, the operator's.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from types import MappingProxyType
from typing import Any

import pluggy

from . import hookspecs, live
from .calls import FAILED, Impl, ask, ask_all, call, contain, implementations, one_line, refuse, short
from .facts import Facts
from ..model import KNOWN_TYPES, AffectedSet, Check, Finding, Inventory, Verdict
from .options import configure
from ..settings import ConfigError
from .snapshot import Snapshot

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "passthrough_exporter.plugins"
NO_RULE = "no rule"


def make_plugin_manager(
    plugins: Sequence[str] = (),
    disabled: Sequence[str] = (),
) -> pluggy.PluginManager:
    """A plugin manager with every plugin of the entry-point group, built-ins included.

    `plugins` are module paths imported and registered by name beside them (`--plugin`);
    `disabled` names are blocked before anything loads (`--disable-plugin`), so a disabled
    plugin is never even imported. A plugin that cannot be loaded is a ConfigError: running
    without a rule the operator asked for (a site deny rule, say) would be worse than not starting.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
    entry_points = _entry_points()  # one scan of the installed distributions serves both uses below
    for ep in entry_points:
        if pm.is_blocked(ep.name):
            continue
        try:  # import first, so a failure names its entry point (pluggy's loader would not)
            ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise ConfigError(
                f"plugin {ep.name!r} ({ep.value}) failed to load: {one_line(exc)}; "
                f"skip it with --disable-plugin {ep.name}"
            ) from None
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise ConfigError(f"plugin {pm.get_name(exc.plugin) or exc.plugin!r} is invalid: {one_line(exc)}") from None
    for path in plugins:
        _register_module(pm, path)
    _refuse_wrappers(pm)
    # A name nothing provides is an error, not a warning: a typo (`--disable-plugin polcy`) would
    # leave on the very plugin the operator meant to switch off.
    known = {ep.name for ep in entry_points} | set(plugins)
    for name in disabled:
        if name not in known:
            raise ConfigError(f"--disable-plugin {name}: no plugin of that name is installed; "
                              f"installed: {', '.join(sorted(known)) or 'none'}")
    if not pm.get_plugins():
        log.warning("no rule plugins loaded from entry-point group %s: is the package installed?", ENTRY_POINT_GROUP)
    return pm


def _entry_points() -> list[metadata.EntryPoint]:
    # Unique by name, as pluggy registers them: the first distribution found wins.
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault(ep.name, ep)
    return list(seen.values())


def _register_module(pm: pluggy.PluginManager, path: str) -> None:
    if pm.is_blocked(path):
        return
    try:
        module = importlib.import_module(path)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise ConfigError(f"--plugin {path}: cannot import module: {one_line(exc)}") from None
    try:
        pm.register(module, name=path)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise ConfigError(f"--plugin {path}: {one_line(exc)}") from None
    if not pm.get_hookcallers(module):  # most likely a wrong module path
        pm.unregister(module)
        raise ConfigError(f"--plugin {path}: the module has no @hookimpl passthrough_* functions")


def _refuse_wrappers(pm: pluggy.PluginManager) -> None:
    """The inspector calls implementations one by one (to contain a failing plugin), which a
    wrapper around the others cannot work with: refuse it at load rather than fail per device."""
    for name in dir(pm.hook):
        if not name.startswith("passthrough_"):
            continue
        for impl in getattr(pm.hook, name).get_hookimpls():
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
                raise ConfigError(f"plugin {plugin}: {name} is a hook wrapper, which passthrough-exporter "
                                  f"does not support; implement the hook plainly (tryfirst/trylast set the order)")


def plugin_table(pm: pluggy.PluginManager) -> list[dict[str, str | None]]:
    """What is loaded: name, module, distribution and version (None for --plugin modules)."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda np: np[0]):
        if plugin is None:  # blocked
            continue
        dist = dists.get(id(plugin))
        rows.append({
            "name": name,
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            "distribution": dist.project_name if dist is not None else None,
            "version": dist.version if dist is not None else None,
            "hooks": ",".join(sorted(h.name for h in pm.get_hookcallers(plugin) or ())),
        })
    return rows


class Inspector:
    """Judges inventories with the loaded plugins.

    `options` are the plugins' option values by dest (an argparse namespace from the command
    line, or a mapping; unset ones take their defaults); `plugins` and `disabled_plugins` are
    `--plugin` and `--disable-plugin`, used when no plugin manager is given. Every plugin's
    `passthrough_configure` runs here, once: a refused option raises ConfigError.
    """

    def __init__(
        self,
        options: Mapping[str, Any] | argparse.Namespace | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        plugins: Sequence[str] = (),
        disabled_plugins: Sequence[str] = (),
    ) -> None:
        self.pm = plugin_manager or make_plugin_manager(plugins, disabled_plugins)
        _refuse_wrappers(self.pm)  # also for plugins registered on a manager made elsewhere
        self.settings = configure(self.pm, options, plugins, disabled_plugins)

    def checks(self) -> list[Check]:
        """The lines of the `check` report, as the plugins name them, in hook order."""
        out: list[Check] = []
        # Contained like every hook: a plugin that fails here loses its lines (its findings still
        # show, under a check of their own), never the report.
        uncounted: Counter[str] = Counter()
        for impl in implementations(self.pm, "passthrough_checks"):
            answer = ask(impl, {"settings": self.settings}, "the check list", uncounted, Iterable)
            if answer is not None and answer is not FAILED:
                contain(impl.plugin, "the check list", uncounted, _checks, answer, out)
        return out

    def report_header(self) -> list[str]:
        """What the plugins say about their configuration, for the `plugins` command."""
        out: list[str] = []
        uncounted: Counter[str] = Counter()
        for impl in implementations(self.pm, "passthrough_report_header"):
            answer = contain(impl.plugin, "its configuration", uncounted, call, impl, {"settings": self.settings})
            if answer is not FAILED:
                contain(impl.plugin, "its configuration", uncounted, _lines, answer, out)
        return out

    def judge(
        self,
        inventory: Inventory,
        source: str = "sysfs",
        started: float | None = None,
    ) -> Snapshot:
        """Verdicts, affected sets and findings for every device of `inventory`."""
        started = time.monotonic() if started is None else started
        errors: Counter[str] = Counter(inventory.errors)
        facts = Facts.of(inventory)
        verdict_rules = self._rules(inventory, facts, errors, "passthrough_verdicts", "passthrough_verdict", Verdict)
        affected_rules = self._rules(inventory, facts, errors, "passthrough_affected_sets", "passthrough_affected",
                                     Iterable)
        per_device = any(impl is not None for _, _, impl in verdict_rules + affected_rules)
        verdicts: dict[str, Verdict] = {}
        affected: dict[str, AffectedSet] = {}
        shared = _SharedSets(inventory, errors)
        failures: dict[str, tuple[str, ...]] = {}  # device -> the plugins that failed on it
        kwargs: dict[str, Any] = {}
        for dev in inventory:
            name = dev.name
            if per_device:  # only per-device implementations need them
                kwargs = {"device": dev, "inventory": inventory, "settings": self.settings, "facts": facts}
            failed: list[str] = []
            answers: list[Verdict] = []
            for plugin, by_name, impl in verdict_rules:
                answer = by_name.get(name) if impl is None else ask(impl, kwargs, name, errors, Verdict)
                if answer is FAILED:
                    failed.append(plugin)
                elif answer is not None:
                    answers.append(answer)
            common: frozenset[str] = frozenset()
            own: set[str] = set()
            for plugin, by_name, impl in affected_rules:
                answer = by_name.get(name) if impl is None else ask(impl, kwargs, name, errors, Iterable)
                if answer is None:
                    continue
                if answer is FAILED:
                    failed.append(plugin)
                elif type(answer) is frozenset and not common:  # by reference, no copy; checked once a set
                    common = contain(plugin, f"{name} (listing its affected devices)", errors, shared.checked,
                                     answer, f"{name} (plugin {plugin})")
                    if common is FAILED:
                        common = _NONE
                        failed.append(plugin)
                # Names read before an iterator fails are kept: over-reporting what goes along is the
                # safe side; the device still gets the failed-plugin warning.
                elif contain(plugin, f"{name} (listing its affected devices)", errors, own.update, answer) is FAILED:
                    failed.append(plugin)
            if own:
                own = shared.known(own, name)  # first: only exact names of devices are compared below
                own.discard(name)
                own.difference_update(common)
            if failed:
                failures[name] = tuple(dict.fromkeys(failed))
            verdicts[name] = _combine(answers, failed)
            affected[name] = AffectedSet(name, common, frozenset(own) if own else _NONE)
        findings = self._findings(inventory, verdicts, facts, errors)
        now = live.states(inventory, facts, verdicts, affected, failures)
        counts = dict(errors)
        return Snapshot(
            inventory=inventory,
            facts=facts,
            verdicts=verdicts,
            affected=affected,
            states=now.states,
            blocked_by=now.blocked_by,
            findings=findings,
            source=source,
            source_up=True,
            errors=counts,
            errors_total=counts,  # one read on its own; the refresher sums them over refreshes
            finished_at=time.time(),
            duration=time.monotonic() - started,
        )

    def _rules(self, inventory: Inventory, facts: Facts, errors: Counter[str], per_refresh: str, per_device: str,
               expected: type) -> list[tuple[str, Mapping[str, Any], Impl | None]]:
        """(plugin, answers by device name, None) for each per-refresh implementation, asked here
        once; (plugin, {}, implementation) for each per-device one, asked device by device; in the
        order their answers are taken (see hookspecs.passthrough_verdicts)."""
        kwargs = {"inventory": inventory, "settings": self.settings, "facts": facts}
        return [
            (impl.plugin, ask_all(impl, kwargs, inventory.devices, errors, expected), None) if impl.hook == per_refresh
            else (impl.plugin, {}, impl)
            for impl in implementations(self.pm, per_refresh, per_device)
        ]

    def _findings(self, inventory: Inventory, verdicts: dict[str, Verdict], facts: Facts,
                  errors: Counter[str]) -> tuple[Finding, ...]:
        kwargs = {"inventory": inventory, "settings": self.settings, "verdicts": MappingProxyType(verdicts),
                  "facts": facts}
        found: dict[tuple[str, str], Finding] = {}
        for impl in implementations(self.pm, "passthrough_findings"):
            answer = ask(impl, kwargs, "host", errors, Iterable)
            if answer is not None and answer is not FAILED:
                # An iterator that raises halfway through: what came before is kept.
                contain(impl.plugin, "host (listing its findings)", errors, _collect, impl.plugin, answer, found,
                        errors)
        return tuple(sorted(found.values(), key=Finding.order))


def _collect(plugin: str, answer: Iterable[Any], found: dict[tuple[str, str], Finding], errors: Counter[str]) -> None:
    for f in answer:
        if type(f) is Finding:  # a subclass could compute its fields on every read
            found.setdefault((f.code, f.subject), f)
        else:
            refuse(f"plugin {plugin} answered {short(f)} among its findings, not a Finding; dropped", errors)


def _checks(answer: Iterable[Any], out: list[Check]) -> None:
    out += [c for c in answer if type(c) is Check]


def _lines(answer: Any, out: list[str]) -> None:
    out += [answer] if isinstance(answer, str) else [str(line) for line in answer or ()]


_NONE: frozenset[str] = frozenset()


class _SharedSets:
    """Checks affected names against the inventory: a shared set once per refresh, not per device."""

    def __init__(self, inventory: Inventory, errors: Counter[str]) -> None:
        self.inventory = inventory
        self.errors = errors
        self._seen: dict[int, tuple[frozenset[str], frozenset[str]]] = {}  # id -> (set, checked set)

    def checked(self, names: frozenset[str], subject: str) -> frozenset[str]:
        hit = self._seen.get(id(names))
        if hit is not None and hit[0] is names:
            return hit[1]
        kept = self.known(set(names), subject)
        checked = names if len(kept) == len(names) else frozenset(kept)
        self._seen[id(names)] = (names, checked)  # holding `names` keeps its id from being reused
        return checked

    def known(self, names: set[str], subject: str) -> set[str]:
        """`names` without unknown ones (counted) and without libvirt-only kinds (silently: they are
        views of a device already counted, and would make the same host's answers differ by source)."""
        devices = self.inventory.devices
        # type(n) is str first: a str subclass, or any object, would run its own hash and eq here.
        known = {n for n in names if type(n) is str and n in devices}
        if len(known) < len(names):
            unknown = [n for n in names if type(n) is not str or n not in devices][:5]
            refuse(f"plugins named unknown affected devices for {subject}: {short(unknown)}", self.errors)
        return {n for n in known if devices[n].type in KNOWN_TYPES}


def _combine(answers: list[Verdict], failed: list[str]) -> Verdict:
    rulings = [v for v in answers if v.eligible is not None]
    warnings = [w for v in rulings for w in v.warnings]
    warnings += [f"plugin {p} failed on this device; its rule was skipped" for p in dict.fromkeys(failed)]
    denials = [v for v in rulings if not v.eligible]
    if denials:
        return Verdict(False, tuple(r for v in denials for r in v.reasons), tuple(warnings))
    if rulings:
        # Caveats (Verdict.warn) only matter for a device that can be passed through.
        caveats = [w for v in answers if v.eligible is None for w in v.warnings]
        return Verdict(True, tuple(r for v in rulings for r in v.reasons), tuple(warnings + caveats))
    return Verdict(False, (NO_RULE,), tuple(warnings))
