"""Site policy rules: the allow/deny rules of the `--policy` file (format: `rules`).

The file is read once at start; a bad one stops the exporter with FILE:LINE. Without a file this
plugin abstains.
"""

from __future__ import annotations

from ... import hookimpl
from ...model import Device, Inventory, Verdict
from ...options import OptionParser
from ...settings import Settings
from .rules import Policy, load

POLICY = "policy"  # settings.stash key: the parsed Policy, or None


@hookimpl
def passthrough_addoption(parser: OptionParser) -> None:
    parser.addoption(
        "--policy", dest="policy", metavar="FILE", default=None,
        help="site policy: allow/deny rules in TOML, read once at start (see docs/plugins.md)",
    )


@hookimpl
def passthrough_configure(settings: Settings) -> None:
    path = settings.getoption("policy")
    settings.stash[POLICY] = load(path) if path else None


# trylast: the site's word comes after every built-in rule's, in the reasons too.
@hookimpl(trylast=True)
def passthrough_verdict(device: Device, inventory: Inventory, settings: Settings) -> Verdict | None:
    policy: Policy | None = settings.stash.get(POLICY)
    if policy is None:
        return None
    return policy.verdict(device, inventory)


@hookimpl
def passthrough_report_header(settings: Settings) -> str | None:
    policy: Policy | None = settings.stash.get(POLICY)
    if policy is None:
        return None
    return f"policy {policy.path}: {len(policy.rules)} rules, unmatched = {policy.unmatched}"
