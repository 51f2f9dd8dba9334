"""Site policy: the allow/deny rules and the expected devices of the `--policy` file (format:
`rules`; expected devices compared in `expect`).

The file is read at start; a bad one stops the exporter with FILE:LINE. `serve` reads it again on
SIGHUP (in a new refresh worker; a bad one is logged and the old one kept). Without a file this
plugin abstains and reports nothing.
"""

from __future__ import annotations

from ... import hookimpl
from ...judging.options import OptionParser
from ...model import Check, Finding, Inventory, Verdict
from ...settings import Settings
from .expect import CHECK, findings
from .rules import Policy, load

POLICY = "policy"  # settings.stash key: the parsed Policy, or None


@hookimpl
def passthrough_addoption(parser: OptionParser) -> None:
    parser.addoption(
        "--policy", dest="policy", metavar="FILE", default=None,
        help="site policy: allow/deny rules and expected devices in TOML, read at start and, by serve, on SIGHUP "
        "(see docs/plugins.md)",
    )


@hookimpl
def passthrough_configure(settings: Settings) -> None:
    path = settings.getoption("policy")
    settings.stash[POLICY] = load(path) if path else None


# trylast: the site's word comes after every built-in rule's, in the reasons too.
@hookimpl(trylast=True)
def passthrough_verdicts(inventory: Inventory, settings: Settings) -> dict[str, Verdict | None] | None:
    policy: Policy | None = settings.stash.get(POLICY)
    if policy is None:
        return None
    return {d.name: policy.verdict(d, inventory) for d in inventory}


@hookimpl
def passthrough_findings(inventory: Inventory, settings: Settings) -> list[Finding]:
    policy: Policy | None = settings.stash.get(POLICY)
    if policy is None:
        return []
    return list(findings(policy.expectations, inventory, policy.path))


@hookimpl
def passthrough_checks(settings: Settings) -> list[Check]:
    # Only a file with [[expect]] tables gets the line: without any, a PASS would claim a check
    # that was never made.
    policy: Policy | None = settings.stash.get(POLICY)
    return [CHECK] if policy is not None and policy.expectations else []


@hookimpl
def passthrough_report_header(settings: Settings) -> str | None:
    policy: Policy | None = settings.stash.get(POLICY)
    if policy is None:
        return None
    return (f"policy {policy.path}: {len(policy.rules)} rules, unmatched = {policy.unmatched}, "
            f"{len(policy.expectations)} expected devices")
