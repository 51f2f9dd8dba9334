"""Site policy rules: the allow/deny rules of the `--policy` file (see `passthrough_exporter.policy`).

The file is parsed once at start into `settings.policy`; without one this plugin abstains.
"""

from __future__ import annotations

from passthrough_exporter import hookimpl
from passthrough_exporter.model import Device, Inventory, Verdict
from passthrough_exporter.settings import Settings


@hookimpl
def passthrough_verdict(device: Device, inventory: Inventory, settings: Settings) -> Verdict | None:
    if settings.policy is None:
        return None
    return settings.policy.verdict(device, inventory)
