"""The inspector: loads rule plugins and turns an inventory into a judged snapshot.

Each hook implementation is called on its own, in pluggy's order, so a plugin that raises or
answers garbage is contained: its error is logged and counted, the others still rule, and the
device carries a warning naming the plugin that failed. "Raises" includes SystemExit (a plugin's
`sys.exit()` ends nothing) and any other BaseException but KeyboardInterrupt, the operator's.
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
from .batch import BATCH
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
                f"plugin {ep.name!r} ({ep.value}) failed to load: {_one_line(exc)}; "
                f"skip it with --disable-plugin {ep.name}"
            ) from None
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise ConfigError(f"plugin {pm.get_name(exc.plugin) or exc.plugin!r} is invalid: {_one_line(exc)}") from None
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
        raise ConfigError(f"--plugin {path}: cannot import module: {_one_line(exc)}") from None
    try:
        pm.register(module, name=path)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise ConfigError(f"--plugin {path}: {_one_line(exc)}") from None
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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
        for _, answer in _call_each(self._impls("passthrough_checks"), {"settings": self.settings}, Iterable,
                                    Counter(), [], "the check list"):
            out += [c for c in answer or () if isinstance(c, Check)]
        return out

    def report_header(self) -> list[str]:
        """What the plugins say about their configuration, for the `plugins` command."""
        out: list[str] = []
        for plugin, function, argnames in self._impls("passthrough_report_header"):
            try:
                answer = function(*[{"settings": self.settings}[a] for a in argnames])
                out += [answer] if isinstance(answer, str) else [str(line) for line in answer or ()]
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.exception("plugin %s failed telling its configuration", plugin)
        return out

    def _impls(self, hook_name: str) -> list[tuple[str, Any, tuple[str, ...]]]:
        """(plugin, function, argument names) in the order pluggy calls them: its list reversed."""
        caller = getattr(self.pm.hook, hook_name)
        return [
            (self.pm.get_name(impl.plugin) or repr(impl.plugin), impl.function, tuple(impl.argnames))
            for impl in reversed(caller.get_hookimpls())
        ]

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
        verdict_impls = self._impls("passthrough_verdict")
        affected_impls = self._impls("passthrough_affected")
        verdict_batches = _batches(verdict_impls, inventory, self.settings, facts)
        affected_batches = _batches(affected_impls, inventory, self.settings, facts)
        verdicts: dict[str, Verdict] = {}
        affected: dict[str, AffectedSet] = {}
        shared = _SharedSets(inventory, errors)
        for dev in inventory:
            kwargs = {"device": dev, "inventory": inventory, "settings": self.settings, "facts": facts}
            failed: list[str] = []
            answers = [
                v for _, v in _call_each(verdict_impls, kwargs, Verdict, errors, failed, dev.name, verdict_batches)
                if v is not None
            ]
            common: frozenset[str] = frozenset()
            own: set[str] = set()
            for plugin, answer in _call_each(affected_impls, kwargs, Iterable, errors, failed, dev.name,
                                             affected_batches):
                if answer is None:
                    continue
                if isinstance(answer, frozenset) and not common:
                    common = shared.checked(answer, f"{dev.name} (plugin {plugin})")  # by reference, no copy
                    continue
                try:
                    # Names read before an iterator fails are kept: over-reporting what goes along
                    # is the safe side; the device still gets the failed-plugin warning.
                    own.update(answer)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    log.exception("plugin %s failed while listing affected devices of %s", plugin, dev.name)
                    errors["plugin_error"] += 1
                    failed.append(plugin)
            if own:
                own.discard(dev.name)
                own.difference_update(common)
                own = shared.known(own, dev.name)
            verdicts[dev.name] = _combine(answers, failed)
            affected[dev.name] = AffectedSet(dev.name, common, frozenset(own) if own else _NONE)
        findings = self._findings(inventory, verdicts, facts, errors)
        now = live.states(inventory, facts, verdicts, affected)
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

    def _findings(self, inventory: Inventory, verdicts: dict[str, Verdict], facts: Facts,
                  errors: Counter[str]) -> tuple[Finding, ...]:
        kwargs = {"inventory": inventory, "settings": self.settings, "verdicts": MappingProxyType(verdicts),
                  "facts": facts}
        found: dict[tuple[str, str], Finding] = {}
        for plugin, answer in _call_each(self._impls("passthrough_findings"), kwargs, Iterable, errors, [], "host"):
            if answer is None:
                continue
            try:
                for f in answer:
                    if isinstance(f, Finding):
                        found.setdefault((f.code, f.subject), f)
                    else:
                        log.warning("plugin %s returned a non-Finding: %r", plugin, f)
                        errors["plugin_error"] += 1
            except KeyboardInterrupt:
                raise
            except BaseException:  # an iterator that raises halfway through: keep what came before
                log.exception("plugin %s failed while listing findings", plugin)
                errors["plugin_error"] += 1
        return tuple(sorted(found.values(), key=Finding.order))


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
        unknown = [n for n in names if not isinstance(n, str) or n not in devices]
        if unknown:
            log.warning("plugins named unknown affected devices for %s: %s", subject, unknown[:5])
            self.errors["plugin_error"] += 1
            names.difference_update(unknown)
        return {n for n in names if devices[n].type in KNOWN_TYPES}


def _batches(impls: list[tuple[str, Any, tuple[str, ...]]], inventory: Inventory, settings: Any,
             facts: Facts) -> list[Mapping[str, Any] | None]:
    """Each implementation's answers for every device from its batch form (see `batch`), or None:
    no batch form, or it failed, and the implementation is asked device by device."""
    out: list[Mapping[str, Any] | None] = []
    for plugin, function, _ in impls:
        batch = getattr(function, BATCH, None)
        answers = None
        if batch is not None:
            try:
                answers = batch(inventory, settings, facts)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.exception("plugin %s failed answering for all devices at once; asking device by device", plugin)
        out.append(answers)
    return out


def _call_each(
    impls: list[tuple[str, Any, tuple[str, ...]]],
    kwargs: dict[str, Any],
    expected: type,
    errors: Counter[str],
    failed: list[str],
    subject: str,
    batches: list[Mapping[str, Any] | None] | None = None,
) -> list[tuple[str, Any]]:
    """(plugin, answer) for each implementation that answered None or a well-formed `expected`.

    Called for every device and hook: arguments go positionally, in the order pluggy read them
    from the implementation's signature (no dict per call). `batches`, aligned with `impls`:
    the answers of the implementations that gave them all at once, by device name (`subject`).
    """
    out = []
    for i, (plugin, function, argnames) in enumerate(impls):
        if batches is not None and (answers := batches[i]) is not None:
            out.append((plugin, answers.get(subject)))
            continue
        try:
            result = function(*[kwargs[a] for a in argnames])
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.exception("plugin %s failed on %s", plugin, subject)
            errors["plugin_error"] += 1
            failed.append(plugin)
            continue
        if result is not None and not _well_formed(result, expected):
            log.warning("plugin %s answered %r for %s; ignored", plugin, _short(result), subject)
            errors["plugin_error"] += 1
            failed.append(plugin)
            continue
        out.append((plugin, result))
    return out


def _well_formed(result: Any, expected: type) -> bool:
    if isinstance(result, (str, bytes)) or not isinstance(result, expected):
        return False
    if isinstance(result, Verdict):  # a hand-built Verdict can still hold garbage
        return (
            (result.eligible is None or isinstance(result.eligible, bool))
            and all(isinstance(t, tuple) and all(isinstance(x, str) for x in t)
                    for t in (result.reasons, result.warnings))
        )
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
