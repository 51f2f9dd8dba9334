"""Command line: `passthrough-exporter devices` (the inspector) and the commands built on it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from passthrough_exporter import __version__, logs
from passthrough_exporter.inspector import Inspector
from passthrough_exporter.query import QueryError, select
from passthrough_exporter.settings import DEFAULT_PCI_DENIED_CLASSES, Settings
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
    rules = parser.add_argument_group("rules")
    rules.add_argument(
        "--pci.denied-classes", dest="pci_denied_classes", metavar="LIST",
        default=",".join(DEFAULT_PCI_DENIED_CLASSES),
        help="comma-separated PCI class prefixes never eligible (default: %(default)s)",
    )


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
    classes = tuple(c.strip().lower() for c in args.pci_denied_classes.split(",") if c.strip())
    for c in classes:
        digits = c.removeprefix("0x")
        if not digits or len(digits) > 6 or any(ch not in "0123456789abcdef" for ch in digits):
            raise SourceError(f"--pci.denied-classes: {c!r} is not a hex class prefix like 0x06")
    return Settings(pci_denied_classes=tuple("0x" + c.removeprefix("0x") for c in classes))


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


def cmd_snapshot(args: argparse.Namespace) -> int:
    from passthrough_exporter.capture import snapshot

    summary = snapshot(args.sysfs, args.procfs, args.output, force=args.force, include_serials=args.include_serials)
    print(summary.line(args.output))
    return 0


def add_snapshot_command(sub: argparse._SubParsersAction) -> None:
    snap = sub.add_parser(
        "snapshot",
        help="capture what the sysfs source reads into a tar.gz, for bug reports",
        description="Capture exactly the sysfs and procfs entries the sysfs source reads (config space "
        "only up to the 64-byte header, no USB serial numbers) into a tar.gz. Unpacked, "
        "--path.sysfs DIR/sys --path.procfs DIR/proc reads the same devices.",
    )
    snap.add_argument("--output", "-o", required=True, metavar="FILE.tar.gz", help="archive to write")
    snap.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    snap.add_argument("--include-serials", action="store_true", help="also capture USB devices' serial numbers")
    snap.add_argument("--path.sysfs", dest="sysfs", default="/sys", metavar="PATH", help="sysfs mount point (default: /sys)")
    snap.add_argument("--path.procfs", dest="procfs", default="/proc", metavar="PATH", help="procfs mount point (default: /proc)")
    snap.set_defaults(func=cmd_snapshot)


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
    add_snapshot_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        return args.func(args)
    except SourceError as exc:
        print(f"passthrough-exporter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left, nothing more to say
        sys.stderr.close()
        return 0
