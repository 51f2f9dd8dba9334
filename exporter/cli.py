"""Command line: `passthrough-exporter devices` (the inspector) and the commands built on it."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence

from passthrough_exporter import __version__, logs, policy
from passthrough_exporter.fileutil import atomic_file
from passthrough_exporter.inspector import Inspector, make_plugin_manager, plugin_table
from passthrough_exporter.metrics import MetricOptions
from passthrough_exporter.model import KNOWN_TYPES, PASSABLE_TYPES
from passthrough_exporter.query import QueryError, select
from passthrough_exporter.settings import DEFAULT_PCI_DENIED_CLASSES, ConfigError, Settings
from passthrough_exporter.snapshot import Snapshot
from passthrough_exporter.sources import SOURCES, Source, SourceError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Which host devices can be passed through to a VM, what goes with each one,
and whether the host's IOMMU isolation can be trusted."""


def add_path_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Where sysfs and procfs are mounted, spelled as node_exporter spells them."""
    parser.add_argument("--path.sysfs", dest="sysfs", default="/sys", metavar="PATH", help="sysfs mount point (default: /sys)")
    parser.add_argument("--path.procfs", dest="procfs", default="/proc", metavar="PATH", help="procfs mount point (default: /proc)")


def add_source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("device source")
    group.add_argument("--source", default="sysfs", help=f"where to read devices: {', '.join(SOURCES)} (default: sysfs)")
    add_path_options(group)
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
        try:
            from passthrough_exporter.sources.libvirt import LibvirtSource
        except ImportError as exc:
            raise SourceError(f"--source libvirt needs libvirt-python (pip install 'passthrough-exporter[libvirt]'): {exc}") from None
        return LibvirtSource(args.libvirt_uri, sysfs_path=args.sysfs, procfs_path=args.procfs)
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


def judge_once(args: argparse.Namespace) -> Snapshot:
    """Read the source once and judge it: the one-shot commands' snapshot."""
    inspector = Inspector(settings_from(args))
    source = open_source(args)
    try:
        return inspector.judge(source.read(), source=source.name)
    finally:
        source.close()


def cmd_devices(args: argparse.Namespace) -> int:
    snapshot = judge_once(args)
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


DEFAULT_LISTEN = ":9839"
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def duration(text: str) -> float:
    """'60s', '5m', '1h', '500ms' or plain seconds -> seconds."""
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = text, 1
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 5m)") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("a duration must be a positive, finite number")
    return value


def add_metric_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metrics")
    group.add_argument(
        "--metrics.device-types", dest="metric_types", default=",".join(PASSABLE_TYPES), metavar="LIST",
        help="device types that get per-device series (default: %(default)s; host-wide and group series "
        "are always there)",
    )
    group.add_argument("--metrics.skip-vfs", dest="skip_vfs", action="store_true",
                       help="no per-device series for SR-IOV virtual functions (large SR-IOV hosts)")


def metric_options(args: argparse.Namespace) -> MetricOptions:
    types = tuple(t.strip() for t in args.metric_types.split(",") if t.strip())
    unknown = sorted(set(types) - set(KNOWN_TYPES))
    if unknown:  # a typo would silently drop every per-device series
        raise ConfigError(f"--metrics.device-types: unknown type {', '.join(unknown)}; "
                          f"choose from {', '.join(KNOWN_TYPES)}")
    return MetricOptions(device_types=types, include_vfs=not args.skip_vfs)


def cmd_serve(args: argparse.Namespace) -> int:
    from . import server, webconfig
    from .refresher import Refresher

    try:
        address = server.parse_listen_address(args.listen_address)
        web = webconfig.load(args.web_config) if args.web_config else webconfig.WebConfig()
    except (ValueError, webconfig.WebConfigError) as exc:
        print(f"passthrough-exporter: {exc}", file=sys.stderr)
        return 1
    # Bad options (policy, plugins, metric types) stop us before the source opens.
    inspector, options = Inspector(settings_from(args)), metric_options(args)
    source = open_source(args)
    refresher = Refresher(source, inspector, args.refresh_interval, options)
    try:
        httpd = server.serve(address, refresher, web)
    except OSError as exc:
        print(f"passthrough-exporter: cannot listen on {args.listen_address}: {exc.strerror}", file=sys.stderr)
        return 1
    refresher.start()
    log.info("listening on %s:%d (%s, at most %d connections), source %s, refresh every %gs", address[0],
             httpd.server_address[1], "https" if web.ssl_context else "http", httpd.bound, source.name,
             args.refresh_interval)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    httpd.shutdown()
    refresher.stop()
    source.close()
    return 0


def cmd_textfile(args: argparse.Namespace) -> int:
    from passthrough_exporter.metrics import render

    options = metric_options(args)
    snapshot = judge_once(args)
    try:
        write_atomically(args.path, render(snapshot, options))
    except OSError as exc:
        print(f"passthrough-exporter: cannot write {args.path}: {exc.strerror}", file=sys.stderr)
        return 1
    log.info("wrote %d devices to %s", len(snapshot.inventory), args.path)
    return 0


def write_atomically(path: str, data: bytes) -> None:
    """A reader sees the old file or the new one, never a torn one."""
    with atomic_file(path) as f:
        f.write(data)


def cmd_check(args: argparse.Namespace) -> int:
    from passthrough_exporter import check

    snapshot = judge_once(args)
    results = check.run_checks(snapshot)
    if args.json:
        json.dump(check.render_json(snapshot, results), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(check.render_text(snapshot, results))
    return check.exit_code(results)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from passthrough_exporter.capture import snapshot

    summary = snapshot(args.sysfs, args.procfs, args.output, force=args.force, include_serials=args.include_serials)
    print(summary.line(args.output))
    return 0


def add_snapshot_command(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    snap = sub.add_parser(
        "snapshot", parents=[common],
        help="capture what the sysfs source reads into a tar.gz, for bug reports",
        description="Capture exactly the sysfs and procfs entries the sysfs source reads (config space "
        "only up to the 64-byte header, no USB serial numbers) into a tar.gz. Unpacked, "
        "--path.sysfs DIR/sys --path.procfs DIR/proc reads the same devices.",
    )
    snap.add_argument("--output", "-o", required=True, metavar="FILE.tar.gz", help="archive to write")
    snap.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    snap.add_argument("--include-serials", action="store_true", help="also capture USB devices' serial numbers")
    add_path_options(snap)
    snap.set_defaults(func=cmd_snapshot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="passthrough-exporter", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"passthrough-exporter {__version__}")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=list(logs.LEVELS), help="(default: info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Accepted after the command too (`serve --log.level debug`), as exporters are usually run.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log.level", dest="log_level", default=argparse.SUPPRESS, choices=list(logs.LEVELS),
                        help="debug, info, warn or error (default: info)")

    devices = sub.add_parser(
        "devices", parents=[common],
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

    serve = sub.add_parser(
        "serve", parents=[common], help="run the Prometheus exporter",
        description="Serve /metrics, /api/devices, /api/findings and /healthz from a snapshot refreshed "
        "in the background.",
    )
    web = serve.add_argument_group("web")
    web.add_argument("--web.listen-address", dest="listen_address", default=DEFAULT_LISTEN, metavar="[HOST]:PORT",
                     help="address to listen on (default: %(default)s)")
    web.add_argument("--web.config.file", dest="web_config", metavar="FILE",
                     help="TLS and basic auth, in the Prometheus exporter-toolkit web-config format")
    serve.add_argument("--refresh-interval", type=duration, default=60.0, metavar="DURATION",
                       help="how often devices are re-read, e.g. 30s, 5m (default: 60s)")
    add_source_options(serve)
    add_metric_options(serve)
    serve.set_defaults(func=cmd_serve)

    textfile = sub.add_parser(
        "textfile", parents=[common], help="write the metrics once for node_exporter's textfile collector",
        description="Write the metrics once to PATH, atomically (temp file + rename).",
    )
    textfile.add_argument("path", metavar="PATH", help="e.g. /var/lib/node_exporter/textfile/passthrough.prom")
    add_source_options(textfile)
    add_metric_options(textfile)
    textfile.set_defaults(func=cmd_textfile)

    chk = sub.add_parser(
        "check", parents=[common],
        help="validate the host for safe device passthrough (like virt-host-validate)",
        description="One line per check, PASS, WARN or FAIL, with the findings behind it and how to fix them.\n"
        "Exit code: 0 all checks pass, 1 warnings, 2 failures.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chk.add_argument("--json", action="store_true", help="print the checks and their findings as JSON")
    add_source_options(chk)
    chk.set_defaults(func=cmd_check)

    plugins = sub.add_parser(
        "plugins", parents=[common],
        help="list the loaded rule plugins with their distribution and version",
        description="List the rule plugins that would judge devices with these options.",
    )
    plugins.add_argument("--json", action="store_true", help="print plugin objects as a JSON array")
    add_plugin_options(plugins)
    plugins.set_defaults(func=cmd_plugins)

    add_snapshot_command(sub, common)
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
