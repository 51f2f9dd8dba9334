"""Hook specifications: the whole contract between passthrough-exporter and its rule plugins.

A plugin is a module or object with functions named like the hooks below, decorated with
`passthrough_exporter.hookimpl`, and published in the entry-point group
`passthrough_exporter.plugins`. The built-in PCI, USB, SCSI and site-policy rules are loaded that
way too. The plugin author's guide is docs/plugins.md.

A hook implementation may accept any subset of a hook's arguments, by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from passthrough_exporter.model import Device, Finding, Inventory, Verdict
    from passthrough_exporter.settings import Settings

PROJECT = "passthrough_exporter"

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def passthrough_verdict(device: Device, inventory: Inventory, settings: Settings) -> Verdict | None:
    """Rule on whether `device` can be handed to a VM.

    Called once per device per refresh. Return a `Verdict` (`Verdict.allow(reason)` or
    `Verdict.deny(reason)`, optionally with warnings) for devices your plugin has an opinion on,
    or None to abstain, or `Verdict.warn(warning)` to add a caveat without ruling. Every plugin is
    asked; the answers combine as follows: any deny makes the device not eligible and its reasons
    are those of the denials; otherwise any allow makes it eligible with the reasons of the allows.
    Warnings of every allow and deny are kept; caveats only when the device ends up eligible. A
    device on which every plugin abstains (or only warns) is not eligible, with the reason "no rule".

    Must not change `device` or `inventory` (both are immutable) nor do I/O: everything a rule
    needs is in the inventory, read once per refresh by the source.
    """


@hookspec
def passthrough_affected(device: Device, inventory: Inventory, settings: Settings) -> Iterable[str] | None:
    """Name the devices that leave the host, or stop working, if `device` is handed to a VM.

    Return an iterable of device names (or None when your plugin has nothing to add). The
    answer for a device is the union over all plugins, without the device itself, sorted by name.
    Built-in plugins contribute for their own types: the IOMMU group, descendants and SR-IOV
    virtual functions of a PCI function; the descendants of a USB or SCSI device.

    Use the inventory's indexes (`children`, `groups`, `descendants()`, `group_peers()`,
    `virtual_functions()`): the answer is computed for every device on every refresh.
    """


@hookspec
def passthrough_findings(
    inventory: Inventory, settings: Settings, verdicts: Mapping[str, Verdict]
) -> Iterable[Finding] | None:
    """Report safety findings about the host, its IOMMU groups or single devices.

    Called once per refresh, after every device has its combined verdict (`verdicts`, by device
    name), so a finding can be about eligible devices only. Return `Finding(code, severity, subject, message)` objects:
    `severity` is "info", "warning" or "critical"; `subject` is "host", "group:<number>" or a
    device name. Findings are published as `passthrough_finding{code,severity,subject}` and on
    `/api/findings`.
    """
