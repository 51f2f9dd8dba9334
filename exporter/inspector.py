"""The inspector: loads rule plugins and turns an inventory into a judged snapshot.

Each hook implementation is called on its own, so a plugin that raises or answers garbage is
contained: its error is logged and counted, the others still rule, and the device carries a
warning naming the plugin that failed.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from types import MappingProxyType
from typing import Any

import pluggy

from passthrough_exporter import hookspecs
from passthrough_exporter.model import KNOWN_TYPES, Finding, Inventory, Verdict
from passthrough_exporter.settings import ConfigError, Settings
from passthrough_exporter.snapshot import Snapshot

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
    for ep in _entry_points():
        if pm.is_blocked(ep.name):
            continue
        try:  # import first, so a failure names its entry point (pluggy's loader would not)
            ep.load()
        except Exception as exc:
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
    known = {ep.name for ep in _entry_points()} | set(plugins)
    for name in disabled:
        if name not in known:
            log.warning("--disable-plugin %s: no plugin of that name is installed", name)
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
    except Exception as exc:
        raise ConfigError(f"--plugin {path}: cannot import module: {_one_line(exc)}") from None
    try:
        pm.register(module, name=path)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise ConfigError(f"--plugin {path}: {_one_line(exc)}") from None
    if not pm.get_hookcallers(module):  # most likely a wrong module path
        pm.unregister(module)
        raise ConfigError(f"--plugin {path}: the module has no @hookimpl passthrough_* functions")


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


class _Errors:
    def __init__(self, initial: Any = ()) -> None:
        self.counts: dict[str, int] = dict(initial)

    def add(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1


class Inspector:
    """Judges inventories with the loaded plugins."""

    def __init__(self, settings: Settings | None = None, plugin_manager: pluggy.PluginManager | None = None):
        self.settings = settings or Settings()
        self.pm = plugin_manager or make_plugin_manager(self.settings.plugins, self.settings.disabled_plugins)
        if self.settings.policy is not None and self.pm.get_plugin("policy") is None:
            log.warning("a policy file is set but the policy plugin is not loaded: its rules are not applied")

    def _impls(self, hook_name: str) -> list[tuple[str, Any, tuple[str, ...]]]:
        caller = getattr(self.pm.hook, hook_name)
        return [
            (self.pm.get_name(impl.plugin) or repr(impl.plugin), impl.function, tuple(impl.argnames))
            for impl in caller.get_hookimpls()
        ]

    def judge(
        self,
        inventory: Inventory,
        source: str = "sysfs",
        started: float | None = None,
    ) -> Snapshot:
        """Verdicts, affected sets and findings for every device of `inventory`."""
        started = time.monotonic() if started is None else started
        errors = _Errors(inventory.errors)
        verdict_impls = self._impls("passthrough_verdict")
        affected_impls = self._impls("passthrough_affected")
        verdicts: dict[str, Verdict] = {}
        affected: dict[str, tuple[str, ...]] = {}
        for dev in inventory:
            kwargs = {"device": dev, "inventory": inventory, "settings": self.settings}
            failed: list[str] = []
            answers = [
                v for _, v in _call_each(verdict_impls, kwargs, Verdict, errors, failed, dev.name)
                if v is not None
            ]
            names: set[str] = set()
            for plugin, answer in _call_each(affected_impls, kwargs, Iterable, errors, failed, dev.name):
                if answer is None:
                    continue
                try:
                    # Names read before an iterator fails are kept: over-reporting what goes
                    # along is the safe side; the device still gets the failed-plugin warning.
                    names.update(answer)
                except Exception:
                    log.exception("plugin %s failed while listing affected devices of %s", plugin, dev.name)
                    errors.add("plugin_error")
                    failed.append(plugin)
            names.discard(dev.name)
            unknown = [n for n in names if not isinstance(n, str) or n not in inventory]
            if unknown:
                log.warning("plugins named unknown affected devices for %s: %s", dev.name, unknown[:5])
                errors.add("plugin_error")
                names.difference_update(unknown)
            # Only the kinds every source reports: libvirt's net/storage/drm nodes are views of a
            # device already counted, and would make the same host's answers differ by source.
            names = {n for n in names if inventory.devices[n].type in KNOWN_TYPES}
            verdicts[dev.name] = _combine(answers, failed)
            affected[dev.name] = tuple(sorted(names))
        findings = self._findings(inventory, verdicts, errors)
        return Snapshot(
            inventory=inventory,
            verdicts=verdicts,
            affected=affected,
            findings=findings,
            source=source,
            source_up=True,
            errors=errors.counts,
            errors_total=errors.counts,  # one read on its own; the refresher sums them over refreshes
            finished_at=time.time(),
            duration=time.monotonic() - started,
        )

    def _findings(self, inventory: Inventory, verdicts: dict[str, Verdict], errors: _Errors) -> tuple[Finding, ...]:
        kwargs = {"inventory": inventory, "settings": self.settings, "verdicts": MappingProxyType(verdicts)}
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
                        errors.add("plugin_error")
            except Exception:  # an iterator that raises halfway through: keep what came before
                log.exception("plugin %s failed while listing findings", plugin)
                errors.add("plugin_error")
        return tuple(sorted(found.values(), key=lambda f: (f.code, f.subject)))


def _call_each(
    impls: list[tuple[str, Any, tuple[str, ...]]],
    kwargs: dict[str, Any],
    expected: type,
    errors: _Errors,
    failed: list[str],
    subject: str,
) -> list[tuple[str, Any]]:
    """(plugin, answer) for each implementation that answered None or a well-formed `expected`.

    Called for every device and hook: arguments go positionally, in the order pluggy read them
    from the implementation's signature (no dict per call).
    """
    out = []
    for plugin, function, argnames in impls:
        try:
            result = function(*[kwargs[a] for a in argnames])
        except Exception:
            log.exception("plugin %s failed on %s", plugin, subject)
            errors.add("plugin_error")
            failed.append(plugin)
            continue
        if result is not None and not _well_formed(result, expected):
            log.warning("plugin %s answered %r for %s; ignored", plugin, _short(result), subject)
            errors.add("plugin_error")
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
