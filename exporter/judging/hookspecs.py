"""Hook specifications: the whole contract between passthrough-exporter and its rule plugins.

A plugin is a module or object with functions named like the hooks below, decorated with
`passthrough_exporter.hookimpl`, and published in the entry-point group
`passthrough_exporter.plugins`. The built-in PCI, USB, SCSI and site-policy rules are loaded that
way too. The plugin author's guide is docs/plugins.md.

A hook implementation may accept any subset of a hook's arguments, by name. Implementations
run in pluggy's order: `tryfirst` ones first, `trylast` ones last, otherwise the plugin registered
last runs first (entry points in the order the installed distributions list them, then the
`--plugin` modules in command-line order). The inspector calls every implementation on its own,
so that a plugin that fails is contained; `hookwrapper`/`wrapper` implementations are refused at
load.

At start: `passthrough_addoption` (the plugin's command-line options), then
`passthrough_configure` (their values). Per refresh: each rule in one of two forms, per device
(`passthrough_verdict` and `passthrough_affected`, asked for every device) or per refresh
(`passthrough_verdicts` and `passthrough_affected_sets`, asked once for every device's answer,
which the built-in rules use), then `passthrough_findings` once. For reports:
`passthrough_checks` and `passthrough_report_header`.

The hooks asked on every refresh are functions of the inventory, the facts derived from it and the
options: `serve` asks them again only when a refresh reads the host differently from the last one
(any device, attribute, holder or host fact). A refresh that reads the same host serves the answers
they gave it, without calling them.

A plugin fails when its implementation raises (SystemExit from `sys.exit()` and any other
BaseException included; only KeyboardInterrupt, the operator's, passes), answers something that
is not the hook's answer, or raises while its answer is read. At start a failure stops the
exporter with one line naming the plugin. Afterwards it is contained (all of it in
`passthrough_exporter.judging.calls`): logged with the plugin's name and what it was asked about,
counted as `plugin_error` once per failure (not once per device it concerns), its answer dropped
where it failed while the other plugins still rule; each device it failed on carries the warning
"plugin NAME failed on this device; its rule was skipped", and is never "available" (it is
blocked, "plugin NAME failed on this device: cannot tell whether it can be handed out"): the skipped
rule might have denied it. Names or findings read from an iterator before it failed are kept. An
answer is read once, inside the containment, and kept only in the exact built-in types (`Verdict`,
`str`, `tuple`, `frozenset`), so no plugin code runs after its check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .facts import Facts
    from ..model import Check, Device, Finding, Inventory, Verdict
    from .options import OptionParser
    from ..settings import Settings

PROJECT = "passthrough_exporter"

hookspec = pluggy.HookspecMarker(PROJECT)


# --- start-up ------------------------------------------------------------------------------


@hookspec
def passthrough_addoption(parser: OptionParser) -> None:
    """Add the plugin's command-line options, as pytest's `pytest_addoption` does.

    `parser.addoption("--mine.flag", dest="mine_flag", ...)` takes argparse's arguments; give each
    option a `dest` that starts with the plugin's name. The options appear, in a group named after
    the plugin, on every command that judges devices. Their values reach
    `passthrough_configure` as `settings.getoption(dest)`. Called once per command line (and
    once with no command line for defaults); must not do I/O. Returns nothing.
    """


@hookspec
def passthrough_configure(settings: Settings) -> None:
    """Read the plugin's option values once at start and prepare what its hooks need.

    Parse files, check values, and keep the result in `settings.stash[KEY]` (a key your plugin
    owns) for the per-device hooks. Raise `passthrough_exporter.settings.ConfigError` with one
    line for the operator when an option cannot be honoured: the exporter then refuses to start,
    before it reads any device. Every plugin is called; returns nothing.
    """


# --- per refresh ---------------------------------------------------------------------------


@hookspec
def passthrough_verdict(device: Device, inventory: Inventory, settings: Settings, facts: Facts) -> Verdict | None:
    """Rule on whether `device` can be handed to a VM.

    Called once per device per refresh (see `passthrough_verdicts` for the form asked once for
    every device, and how the two combine). Return a `Verdict` (`Verdict.allow(reason)` or
    `Verdict.deny(reason)`, optionally with warnings) for devices your plugin has an opinion on,
    or None to abstain, or `Verdict.warn(warning)` to add a caveat without ruling. Every plugin is
    asked; the answers combine as follows: any deny makes the device not eligible and its reasons
    are those of the denials; otherwise any allow makes it eligible with the reasons of the allows.
    Warnings of every allow and deny are kept; caveats only when the device ends up eligible. A
    device on which every plugin abstains (or only warns) is not eligible, with the reason "no rule".

    Must not change `device` or `inventory` (both are immutable) nor do I/O: everything a rule
    needs is in the inventory, read once per refresh by the source, and in `facts` (each IOMMU
    group's VFIO status, weakened isolation, the root filesystem's devices), derived from it once
    per refresh.
    """


@hookspec
def passthrough_affected(device: Device, inventory: Inventory, settings: Settings, facts: Facts) -> Iterable[str] | None:
    """Name the devices that leave the host, or stop working, if `device` is handed to a VM.

    Called once per device per refresh (see `passthrough_affected_sets` for the form asked once
    for every device). Return an iterable of device names (or None when your plugin has nothing to
    add). The answer for a device is the union over all plugins, without the device itself, sorted
    by name; names that are not devices of the inventory are dropped and counted as `plugin_error`.
    Built-in plugins contribute for their own types: the IOMMU group, descendants and SR-IOV
    virtual functions of a PCI function; the descendants of a USB or SCSI device.

    Use the inventory's indexes (`children`, `groups`, `descendants()`, `group_peers()`,
    `virtual_functions()`): the answer is computed for every device on every refresh.
    """


@hookspec
def passthrough_verdicts(inventory: Inventory, settings: Settings, facts: Facts) -> Mapping[str, Verdict | None] | None:
    """Rule on every device at once: the per-refresh form of `passthrough_verdict`.

    Called once per refresh, with the arguments of `passthrough_verdict` but `device`. Return a
    mapping from device name to what `passthrough_verdict` would answer for that device (a
    `Verdict`, or None to abstain); a device the mapping leaves out abstains, and None abstains on
    every device. Use this form when a call per device would cost more than the rule: at 20,000
    devices it does, and the built-in rules are written this way. Implement one form of a rule,
    not both: a plugin that implements both is asked both ways and its answers count twice.

    The answers of both forms combine as `passthrough_verdict` says. They are taken in one order,
    which is the order of a device's reasons and warnings: pluggy's three bands across both hooks
    (every `tryfirst` implementation, then the plain ones, then the `trylast` ones) and, within a
    band, the implementations of this hook (in pluggy's order) before those of
    `passthrough_verdict` (in pluggy's order). The built-in type rules (PCI, USB, SCSI) are
    `tryfirst`, so their reason leads; the site policy is `trylast`, so its word comes last.

    The answer is checked as strictly as a per-device one, and a failure is contained as the
    module says: an answer that is not a mapping, or that names a device the inventory does not
    have (keyed by address instead of name, say), is refused whole and the plugin failed on every
    device; a value that is not a well-formed `Verdict` (or None) fails on its device alone. Each
    failure counts once, however many devices it concerns.
    """


@hookspec
def passthrough_affected_sets(
    inventory: Inventory, settings: Settings, facts: Facts
) -> Mapping[str, Iterable[str] | None] | None:
    """Name what goes along for every device at once: the per-refresh form of `passthrough_affected`.

    Called once per refresh, with the arguments of `passthrough_affected` but `device`. Return a
    mapping from device name to what `passthrough_affected` would answer for that device (an
    iterable of device names, or None); a device the mapping leaves out gets nothing from the
    plugin, and None adds nothing for any device. Devices that give the same answer can share one
    `frozenset` (`facts.group_reach[group]`): it is kept by reference and checked once.

    The answers of both forms are joined as `passthrough_affected` says, in the order
    `passthrough_verdicts` gives (the union does not depend on it). The answer is checked as
    `passthrough_verdicts`' is: not a mapping, or a name that is not a device, and the plugin
    failed on every device; a value that is a string or not an iterable fails on its device alone.
    """


@hookspec
def passthrough_findings(
    inventory: Inventory, settings: Settings, verdicts: Mapping[str, Verdict], facts: Facts
) -> Iterable[Finding] | None:
    """Report safety findings about the host, its IOMMU groups or single devices.

    Called once per refresh, after every device has its combined verdict (`verdicts`, by device
    name), so a finding can be about eligible devices only. Return
    `Finding(code, severity, subject, message, fix)` objects: `severity` is "info", "warning" or
    "critical"; `subject` is "host", "group:<number>", "domain:<name>" or a device name; `fix` is
    one sentence an operator can act on. The answers of all plugins are joined; a second finding
    with the same code and subject is dropped. Findings are published as
    `passthrough_finding{code,severity,subject}`, on `/api/findings` and by `check`.
    """


# --- reports -------------------------------------------------------------------------------


@hookspec
def passthrough_checks(settings: Settings) -> Iterable[Check] | None:
    """Name the lines of the `check` report that the plugin's finding codes belong to.

    Return `Check(title, codes)` objects, in the order they should print. A check passes when
    none of its codes is found, and otherwise takes the worst severity among its findings
    (critical: FAIL, warning: WARN). Lines of all plugins are joined in hook order; codes no
    check claims are reported under a last line of their own, so no finding is lost.
    """


@hookspec
def passthrough_report_header(settings: Settings) -> Iterable[str] | str | None:
    """Lines describing the plugin's configuration (a policy file and its rule count, say),
    printed by the `plugins` command below the plugin table. Return a string, strings or None."""
