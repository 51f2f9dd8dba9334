"""The inspector: loads rule plugins and turns an inventory into a judged snapshot.

Each hook implementation is called on its own, so a plugin that raises or answers garbage is
contained: its error is logged and counted, the others still rule, and the device carries a
warning naming the plugin that failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pluggy

from passthrough_exporter import hookspecs
from passthrough_exporter.model import KNOWN_TYPES, Finding, Inventory, Verdict
from passthrough_exporter.settings import Settings
from passthrough_exporter.snapshot import Snapshot

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "passthrough_exporter.plugins"
NO_RULE = "no rule"


def make_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with every plugin published in the entry-point group, built-ins included."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if not pm.get_plugins():
        log.warning("no rule plugins found in entry-point group %s: is the package installed?", ENTRY_POINT_GROUP)
    return pm


class _Errors:
    def __init__(self, initial: Any = ()) -> None:
        self.counts: dict[str, int] = dict(initial)

    def add(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1


class Inspector:
    """Judges inventories with the loaded plugins."""

    def __init__(self, settings: Settings | None = None, plugin_manager: pluggy.PluginManager | None = None):
        self.settings = settings or Settings()
        self.pm = plugin_manager or make_plugin_manager()

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
                v for v in _call_each(verdict_impls, kwargs, Verdict, errors, failed, dev.name)
                if v is not None
            ]
            names: set[str] = set()
            for answer in _call_each(affected_impls, kwargs, Iterable, errors, failed, dev.name):
                if answer is None:
                    continue
                try:
                    names.update(answer)
                except Exception:  # an iterator that raises halfway through
                    log.exception("affected-devices answer for %s could not be read", dev.name)
                    errors.add("plugin_error")
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
        findings = self._findings(inventory, errors)
        return Snapshot(
            inventory=inventory,
            verdicts=verdicts,
            affected=affected,
            findings=findings,
            source=source,
            source_up=True,
            errors=errors.counts,
            finished_at=time.time(),
            duration=time.monotonic() - started,
        )

    def _findings(self, inventory: Inventory, errors: _Errors) -> tuple[Finding, ...]:
        kwargs = {"inventory": inventory, "settings": self.settings}
        found: dict[tuple[str, str], Finding] = {}
        for answer in _call_each(self._impls("passthrough_findings"), kwargs, Iterable, errors, [], "host"):
            if answer is None:
                continue
            for f in answer:
                if isinstance(f, Finding):
                    found.setdefault((f.code, f.subject), f)
                else:
                    log.warning("plugin returned a non-Finding: %r", f)
                    errors.add("plugin_error")
        return tuple(sorted(found.values(), key=lambda f: (f.code, f.subject)))


def _call_each(
    impls: list[tuple[str, Any, tuple[str, ...]]],
    kwargs: dict[str, Any],
    expected: type,
    errors: _Errors,
    failed: list[str],
    subject: str,
) -> Iterator[Any]:
    for plugin, function, argnames in impls:
        try:
            result = function(**{a: kwargs[a] for a in argnames})
        except Exception:
            log.exception("plugin %s failed on %s", plugin, subject)
            errors.add("plugin_error")
            failed.append(plugin)
            continue
        if result is not None and not isinstance(result, expected) or isinstance(result, (str, bytes)):
            log.warning("plugin %s answered %r for %s; ignored", plugin, type(result).__name__, subject)
            errors.add("plugin_error")
            failed.append(plugin)
            continue
        yield result


def _combine(answers: list[Verdict], failed: list[str]) -> Verdict:
    warnings = [w for v in answers for w in v.warnings]
    warnings += [f"plugin {p} failed on this device; its rule was skipped" for p in dict.fromkeys(failed)]
    denials = [v for v in answers if not v.eligible]
    if denials:
        return Verdict(False, tuple(r for v in denials for r in v.reasons), tuple(warnings))
    if answers:
        return Verdict(True, tuple(r for v in answers for r in v.reasons), tuple(warnings))
    return Verdict(False, (NO_RULE,), tuple(warnings))
