"""Command line: `passthrough-exporter devices` (the inspector) and the commands built on it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from passthrough_exporter import __version__, logs, policy
from passthrough_exporter.inspector import Inspector, make_plugin_manager, plugin_table
from passthrough_exporter.query import QueryError, select
from passthrough_exporter.settings import DEFAULT_PCI_DENIED_CLASSES, ConfigError, Settings
from passthrough_exporter.sources import SOURCES, Source, SourceError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Which host devices can be passed through to a VM, what goes with each one,
and whether the host's IOMMU isolation can be trusted."""


def add_source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("device source")
    group.add_argument("--source", default="sysfs", help=f"where to read devices: {', '.join(SOURCES)} (default: sysfs)")
    group.add_argument("--path.sysfs", dest="sysfs", default="/sys", metavar="PATH", help="sysfs mount point (default: /sys)")
    group.add_argument("--path.procfs", dest="procfs", default="/proc", metavar="PATH", help="procfs mount point (default: /proc)")
    group.add_argument(
        "--path.pci-ids", dest="pci_ids", default=None, metavar="FILE",
        help="pci.ids file for vendor and device names (default: the system's; 'none' for numbers only)",
    )
    group.add_argument(
        "--libvirt.uri", dest="libvirt_uri", default="qemu:///system", metavar="URI",
        help="libvirt connection URI, opened read-only (default: qemu:///system)",
    )
    rules = add_plugin_options(parser)
    rules.add_argument(
        "--pci.denied-classes", dest="pci_denied_classes", metavar="LIST",
        default=",".join(DEFAULT_PCI_DENIED_CLASSES),
        help="comma-separated PCI class prefixes never eligible (default: %(default)s)",
    )


def add_plugin_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Options choosing the rule plugins and the site policy: for every command that judges devices."""
    rules = parser.add_argument_group("rules")
    rules.add_argument(
        "--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
        help="also load the rule plugin in this importable module, e.g. mysite.rules (repeatable)",
    )
    rules.add_argument(
        "--disable-plugin", dest="disabled_plugins", action="append", default=[], metavar="NAME",
        help="do not load the plugin NAME, built-ins (pci, usb, scsi, policy) included (repeatable)",
    )
    rules.add_argument(
        "--policy", metavar="FILE", default=None,
        help="site policy: allow/deny rules in TOML, read once at start (see docs/plugins.md)",
    )
    return rules


def open_source(args: argparse.Namespace) -> Source:
    if args.source == "sysfs":
        from passthrough_exporter.sources.sysfs import SysfsSource

        from passthrough_exporter import pciids

        names = None if args.pci_ids == "none" else pciids.load(args.pci_ids)
        return SysfsSource(args.sysfs, args.procfs, names)
    if args.source == "libvirt":
        from passthrough_exporter.sources.libvirt import LibvirtSource  # needs libvirt-python

        return LibvirtSource(args.libvirt_uri)
    raise SourceError(f"unknown source {args.source!r}; choose one of: {', '.join(SOURCES)}")


def settings_from(args: argparse.Namespace) -> Settings:
    raw = getattr(args, "pci_denied_classes", None)
    classes = tuple(c.strip().lower() for c in (raw or "").split(",") if c.strip()) if raw is not None else None
    for c in classes or ():
        digits = c.removeprefix("0x")
        if not digits or len(digits) > 6 or any(ch not in "0123456789abcdef" for ch in digits):
            raise SourceError(f"--pci.denied-classes: {c!r} is not a hex class prefix like 0x06")
    policy_file = getattr(args, "policy", None)
    return Settings(
        pci_denied_classes=(tuple("0x" + c.removeprefix("0x") for c in classes)
                            if classes is not None else DEFAULT_PCI_DENIED_CLASSES),
        # getattr: parsers without add_plugin_options still build settings
        plugins=tuple(getattr(args, "plugins", None) or ()),
        disabled_plugins=tuple(getattr(args, "disabled_plugins", None) or ()),
        policy=policy.load(policy_file) if policy_file else None,  # parsed once, refused at start
    )


def cmd_plugins(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    rows = plugin_table(make_plugin_manager(settings.plugins, settings.disabled_plugins))
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    table = [("NAME", "DISTRIBUTION", "VERSION", "MODULE")]
    table += [(r["name"], r["distribution"] or "-", r["version"] or "-", r["module"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    if settings.policy is not None:
        print(f"policy {settings.policy.path}: {len(settings.policy.rules)} rules, unmatched = {settings.policy.unmatched}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    source = open_source(args)
    try:
        snapshot = Inspector(settings_from(args)).judge(source.read(), source=source.name)
    finally:
        source.close()
    try:
        names = select(snapshot, cap=args.cap, passthrough=args.passthrough, affected_by=args.affected_by)
    except QueryError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    if args.json:
        json.dump([snapshot.device_object(n) for n in names], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for name in names:
            print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="passthrough-exporter", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"passthrough-exporter {__version__}")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=list(logs.LEVELS), help="(default: info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    devices = sub.add_parser(
        "devices",
        help="list host devices, eligible ones, or what goes with one",
        description="List host devices, sorted by name, one per line (or as JSON objects).",
        epilog="Examples:\n"
        "  passthrough-exporter devices --passthrough\n"
        "  passthrough-exporter devices --cap pci --json\n"
        "  passthrough-exporter devices --affected-by pci_0000_01_00_0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    devices.add_argument("--cap", metavar="TYPE", help="only devices of this type: pci, usb_device, usb, scsi_host, scsi_target, scsi, system")
    devices.add_argument("--passthrough", action="store_true", help="only devices that can be passed through to a VM")
    devices.add_argument("--affected-by", metavar="NAME", help="the devices that go along when NAME is passed through (not combinable with --cap/--passthrough)")
    devices.add_argument("--json", action="store_true", help="print device objects as a JSON array")
    add_source_options(devices)
    devices.set_defaults(func=cmd_devices)

    plugins = sub.add_parser(
        "plugins",
        help="list the loaded rule plugins with their distribution and version",
        description="List the rule plugins that would judge devices with these options.",
    )
    plugins.add_argument("--json", action="store_true", help="print plugin objects as a JSON array")
    add_plugin_options(plugins)
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        return args.func(args)
    except (SourceError, ConfigError) as exc:
        print(f"passthrough-exporter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left, nothing more to say
        sys.stderr.close()
        return 0
