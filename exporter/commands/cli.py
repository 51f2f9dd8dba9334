"""Command line: `passthrough-exporter devices` (the inspector) and the commands built on it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

# What only some commands need (prometheus-client, the HTTP server, tempfile, signal handling) is
# imported inside them: `devices` starts without it.
from .. import logs
from ..judging.inspector import Inspector, make_plugin_manager, plugin_table
from ..judging.options import add_plugin_options
from ..judging.query import DeviceIndex, QueryError, check_filters
from ..judging.snapshot import Snapshot
from ..model import KNOWN_TYPES, PASSABLE_TYPES
from ..reading.sources import SOURCES, Source, SourceError
from ..reading.state import DEFAULT_STATE_PATH, BootState
from ..rendering import jsonout
from ..rendering.exposition import DEFAULT_TELEMETRY_PATH
from ..rendering.objects import device_object
from ..settings import ConfigError
from ..textsafe import visible
from . import serve as serve_command
from .cmdline import CommandParser, duration, early_args, serves_lean, setup_early_logging
from .deadline import DEFAULT as DEFAULT_TIMEOUT
from .deadline import Deadline
from .gcpause import gc_paused

if TYPE_CHECKING:
    from ..rendering.metrics import MetricOptions

log = logging.getLogger(__name__)

DESCRIPTION = """\
Which host devices can be passed through to a VM, what goes with each one,
and whether the host's IOMMU isolation can be trusted."""


def add_path_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Where sysfs and procfs are mounted, spelled as node_exporter spells them."""
    parser.add_argument("--path.sysfs", dest="sysfs", default="/sys", metavar="PATH", help="sysfs mount point (default: /sys)")
    parser.add_argument("--path.procfs", dest="procfs", default="/proc", metavar="PATH", help="procfs mount point (default: /proc)")


def add_source_options(parser: argparse.ArgumentParser, pm: pluggy.PluginManager | None) -> None:
    group = parser.add_argument_group("device source")
    group.add_argument("--source", default="sysfs", choices=list(SOURCES),
                       help=f"where to read devices: {', '.join(SOURCES)} (default: sysfs)")
    add_path_options(group)
    group.add_argument(
        "--path.pci-ids", dest="pci_ids", default=None, metavar="FILE",
        help="pci.ids file for vendor and device names (default: the system's; 'none' for numbers only)",
    )
    group.add_argument(
        "--live.process-scan", dest="process_scan", action=argparse.BooleanOptionalAction, default=True,
        help="name the process (and VM) holding each device in use, from <procfs>/<pid>/fd: one pass per "
        "refresh, needs root or CAP_SYS_PTRACE to see other users' processes (default: on)",
    )
    group.add_argument(
        "--libvirt.uri", dest="libvirt_uri", default="qemu:///system", metavar="URI",
        help="libvirt connection URI, opened read-only (default: qemu:///system)",
    )
    group.add_argument(
        "--state.path", dest="state_path", default=None, metavar="FILE",
        help="the devices of this boot and the previous one, to tell what changed since the previous boot; "
        f"serve writes it, the other commands only read it (default: {DEFAULT_STATE_PATH} when reading this "
        "host's own /sys and /proc, none for another root)",
    )
    group.add_argument("--no-state", dest="state", action="store_false",
                       help="neither read nor write the state file: no upgrade-impact findings")
    add_rule_options(parser, pm)


def add_rule_options(parser: argparse.ArgumentParser, pm: pluggy.PluginManager | None) -> None:
    """Options choosing the rule plugins, then each plugin's own: for every command that judges devices."""
    rules = parser.add_argument_group("rules")
    rules.add_argument(
        "--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
        help="also load the rule plugin in this importable module, e.g. mysite.rules (repeatable)",
    )
    rules.add_argument(
        "--disable-plugin", dest="disabled_plugins", action="append", default=[], metavar="NAME",
        help="do not load the plugin NAME, built-ins (pci, usb, scsi, safety, health, assignments, changes, policy) included (repeatable)",
    )
    if pm is not None:
        add_plugin_options(pm, parser)


def state_path(args: argparse.Namespace) -> str | None:
    """The state file of these arguments, or None. A state file belongs to one host: by default it is
    kept only for this host's own /sys and /proc; a tree from elsewhere (a capture, a fixture, a
    container's mount) compared with this host's previous boot would report changes that are not."""
    if not args.state:
        return None
    if args.state_path is not None:
        return args.state_path
    return DEFAULT_STATE_PATH if (args.sysfs, args.procfs) == ("/sys", "/proc") else None


def open_source(args: argparse.Namespace) -> Source:
    cls = SOURCES[args.source].load(args.source)
    path = state_path(args)
    state = BootState(path, args.procfs) if path is not None else None
    if args.source == "sysfs":
        from ..reading import pciids

        names = None if args.pci_ids == "none" else pciids.load(args.pci_ids)
        return cls(args.sysfs, args.procfs, names, scan_processes=args.process_scan, state=state)
    return cls(args.libvirt_uri, sysfs_path=args.sysfs, procfs_path=args.procfs, scan_processes=args.process_scan,
               state=state)


def inspector_from(args: argparse.Namespace) -> Inspector:
    """The inspector for these arguments: the plugins loaded before parsing, configured with them."""
    return Inspector(args, plugin_manager=args.plugin_manager, plugins=args.plugins,
                     disabled_plugins=args.disabled_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    inspector = inspector_from(args)
    rows = plugin_table(inspector.pm)
    if args.json:
        sys.stdout.write(jsonout.dumps(rows) + "\n")
        return 0
    table = [("NAME", "DISTRIBUTION", "VERSION", "MODULE")]
    table += [(r["name"], r["distribution"] or "-", r["version"] or "-", r["module"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print(visible("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3]))
    for line in inspector.report_header():
        print(visible(line))
    return 0




def judge_once(args: argparse.Namespace, inspector: Inspector | None = None) -> Snapshot:
    """Read the source once and judge it: the one-shot commands' snapshot."""
    inspector = inspector or inspector_from(args)
    source = open_source(args)
    try:
        return inspector.judge(source.read(), source=source.name)
    finally:
        source.close()


def cmd_devices(args: argparse.Namespace) -> int:
    with gc_paused():
        return _devices(args)


def _devices(args: argparse.Namespace) -> int:
    try:  # filters that conflict are told before the host is read
        check_filters(args.cap, args.passthrough, args.affected_by, args.available, lambda name: True)
        snapshot = judge_once(args)
        index = DeviceIndex.of(snapshot)
        names = [index.names[i] for i in index.select(cap=args.cap, passthrough=args.passthrough,
                                                      affected_by=args.affected_by, available=args.available)]
    except QueryError as exc:
        print(visible(str(exc)), file=sys.stderr)  # it may quote the name asked for
        return exc.exit_code
    if args.json:
        # Pieces of a megabyte: json.dump would write every token, one system call each when stdout
        # is unbuffered (PYTHONUNBUFFERED=1); one string would hold 20,000 objects' text twice over.
        jsonout.write_array((device_object(snapshot, n) for n in names), sys.stdout.write)
        sys.stdout.write("\n")
    else:
        for name in names:
            print(visible(name))
    return 0


CHECK_UNKNOWN = 3  # `check` could not check: the monitoring-plugin convention's UNKNOWN
ONE_SHOT = ("devices", "textfile", "check", "plugins", "capture")  # the commands with a --timeout
def add_timeout_option(parser: argparse.ArgumentParser) -> None:
    """A one-shot command's deadline; `main` reads it before the plugins load (see `deadline`)."""
    parser.add_argument("--timeout", type=duration, default=DEFAULT_TIMEOUT, metavar="DURATION",
                        help="give up with an error after this long, whatever a source or plugin does, "
                        "e.g. 30s, 5m (default: 2m)")


def add_metric_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metrics")
    group.add_argument(
        "--metrics.device-types", dest="metric_types", default=",".join(PASSABLE_TYPES), metavar="LIST",
        help="device types that get per-device series (default: %(default)s; host-wide and group series "
        "are always there)",
    )
    group.add_argument("--metrics.skip-vfs", dest="skip_vfs", action="store_true",
                       help="no per-device series for SR-IOV virtual functions (large SR-IOV hosts)")
    group.add_argument("--metrics.health", dest="metric_health", action=argparse.BooleanOptionalAction, default=True,
                       help="PCIe link, AER error and power state series per PCI function (default: on)")


def metric_options(args: argparse.Namespace, telemetry_path: str | None = None) -> MetricOptions:
    from ..rendering.metrics import MetricOptions  # prometheus-client: only for the commands that write metrics

    types = tuple(t.strip() for t in args.metric_types.split(",") if t.strip())
    unknown = sorted(set(types) - set(KNOWN_TYPES))
    if unknown:  # a typo would silently drop every per-device series
        raise ConfigError(f"--metrics.device-types: unknown type {', '.join(unknown)}; "
                          f"choose from {', '.join(KNOWN_TYPES)}")
    path = telemetry_path or getattr(args, "telemetry_path", None) or DEFAULT_TELEMETRY_PATH
    return MetricOptions(device_types=types, include_vfs=not args.skip_vfs, include_health=args.metric_health,
                         telemetry_path=path)


def warn_unless_prom(path: str) -> None:
    # node_exporter's textfile collector reads only *.prom: any other name is written and never scraped.
    if path != "-" and not path.endswith(".prom"):
        log.warning("%s does not end in .prom: node_exporter's textfile collector reads only *.prom files", path)


def cmd_textfile(args: argparse.Namespace) -> int:
    from ..rendering.metrics import render
    from .fileutil import preflight

    warn_unless_prom(args.path)
    options = metric_options(args)
    try:
        if args.path != "-":
            preflight(args.path)  # a target that would be refused is refused before the read
    except OSError as exc:
        print(f"passthrough-exporter: cannot write {visible(args.path)}: {exc.strerror}", file=sys.stderr)
        return 1
    with gc_paused():
        snapshot = judge_once(args)
        text = render(snapshot, options)
    try:
        write_atomically(args.path, text)
    except OSError as exc:
        print(f"passthrough-exporter: cannot write {visible(args.path)}: {exc.strerror}", file=sys.stderr)
        return 1
    log.info("wrote %d devices to %s", len(snapshot.inventory), "standard output" if args.path == "-" else args.path)
    return 0


def write_atomically(path: str, data: bytes) -> None:
    """A reader sees the old file or the new one, never a torn one; `-` is standard output."""
    from .fileutil import atomic_file, stdout_binary

    if path == "-":
        out = stdout_binary()
        out.write(data)
        out.flush()
        return
    with atomic_file(path) as f:
        f.write(data)


def cmd_check(args: argparse.Namespace) -> int:
    from ..rendering import check

    inspector = inspector_from(args)
    with gc_paused():
        snapshot = judge_once(args, inspector)
    results = check.run_checks(snapshot, inspector.checks())
    if args.json:
        sys.stdout.write(jsonout.dumps(check.render_json(snapshot, results)) + "\n")
    else:
        sys.stdout.write(check.render_text(snapshot, results))
    return check.exit_code(results)


def cmd_capture(args: argparse.Namespace) -> int:
    from .capture import capture

    if args.output == "-" and sys.stdout is not None and sys.stdout.isatty():  # a gzip stream on a terminal helps nobody
        print("passthrough-exporter: capture --output -: standard output is a terminal; redirect it to a file",
              file=sys.stderr)
        return 1
    summary = capture(args.sysfs, args.procfs, args.output, force=args.force, include_serials=args.include_serials)
    # With the archive on standard output, the summary goes beside it on standard error.
    print(visible(summary.line("standard output" if args.output == "-" else args.output)),
          file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


def add_capture_command(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    snap = sub.add_parser(
        "capture", parents=[common],
        help="capture what the sysfs source reads into a tar.gz, for bug reports",
        description="Capture exactly the sysfs and procfs entries the sysfs source reads (config space "
        "only up to the 64-byte header; no serial numbers unless asked) into a tar.gz. Unpacked, "
        "--path.sysfs DIR/sys --path.procfs DIR/proc reads the same devices.",
    )
    snap.add_argument("--output", "-o", required=True, metavar="FILE.tar.gz", help="archive to write (- for standard output)")
    snap.add_argument("--force", action="store_true", help="overwrite FILE if it is a regular file")
    snap.add_argument("--include-serials", action="store_true",
                      help="also capture the files that hold serial numbers (USB and NVMe serial, PCI vpd): "
                      "what tells a card from another of the same model")
    add_path_options(snap)
    add_timeout_option(snap)
    snap.set_defaults(func=cmd_capture)


class _VersionAction(argparse.Action):
    """argparse's version action, with the version read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        import platform

        from .. import __version__
        from ..buildinfo import revision

        # The first line as Prometheus's programs give it; the second says what it runs on.
        sys.stdout.write(f"passthrough-exporter {__version__} (revision: {revision()})\n"
                         f"  python: {platform.python_implementation()} {platform.python_version()}, "
                         f"platform: {sys.platform}/{platform.machine()}\n")
        parser.exit()


def build_parser(pm: pluggy.PluginManager | None = None, usage_exit: int = 2,
                 log_errors: bool = False) -> argparse.ArgumentParser:
    """The command line; `pm`'s plugins add their options to every command that judges devices.
    `usage_exit`: what a usage error before the command's own options exits with; `log_errors`:
    whether such an error is a log line (the command is `serve`)."""
    parser = CommandParser(prog="passthrough-exporter", description=DESCRIPTION, usage_exit=usage_exit,
                           log_errors=log_errors)
    parser.add_argument("--version", action=_VersionAction, help="show program's version number and exit")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=list(logs.LEVELS), help="(default: info)")
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=list(logs.FORMATS),
                        help="(default: logfmt)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)
    # Accepted after the command too (`serve --log.level debug`), as exporters are usually run.
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--log.level", dest="log_level", default=argparse.SUPPRESS, choices=list(logs.LEVELS),
                        help="debug, info, warn or error (default: info)")
    common.add_argument("--log.format", dest="log_format", default=argparse.SUPPRESS, choices=list(logs.FORMATS),
                        help="logfmt, or json (an object a line) (default: logfmt)")

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
    devices.add_argument("--cap", metavar="TYPE", choices=KNOWN_TYPES,
                         help=f"only devices of this type: {', '.join(KNOWN_TYPES)}")
    devices.add_argument("--passthrough", action="store_true", help="only devices that can be passed through to a VM")
    devices.add_argument("--available", action="store_true",
                         help="only devices free to hand out now: eligible, not in use, not assigned, nothing "
                         "they take along in use or assigned")
    devices.add_argument("--affected-by", metavar="NAME", help="the devices that go along when NAME is passed through (not combinable with --cap/--passthrough)")
    devices.add_argument("--json", action="store_true", help="print device objects as a JSON array")
    add_source_options(devices, pm)
    add_timeout_option(devices)
    devices.set_defaults(func=cmd_devices)

    serve = sub.add_parser(
        "serve", parents=[common], help="run the Prometheus exporter", log_errors=True,
        description="Serve /metrics, /api/devices, /api/findings and /healthz from a snapshot refreshed "
        "in the background. SIGHUP reloads the web config and the policy; SIGTERM or SIGINT stops it.",
    )
    serve_command.add_options(serve)
    add_source_options(serve, pm)
    add_metric_options(serve)
    serve.set_defaults(func=lambda args: serve_command.main(args.argv))

    textfile = sub.add_parser(
        "textfile", parents=[common], help="write the metrics once for node_exporter's textfile collector",
        description="Write the metrics once to PATH, atomically (temp file + rename), replacing a regular "
        "file only; - writes them to standard output.",
    )
    textfile.add_argument("path", metavar="PATH", help="e.g. /var/lib/node_exporter/textfile/passthrough.prom, or -")
    add_source_options(textfile, pm)
    add_metric_options(textfile)
    add_timeout_option(textfile)
    textfile.set_defaults(func=cmd_textfile)

    chk = sub.add_parser(
        "check", parents=[common],
        help="validate the host for safe device passthrough (like virt-host-validate)",
        description="One line per check, PASS, WARN, UNKNOWN or FAIL, with the findings behind it and how to fix "
        "them.",
        epilog="Exit codes, as monitoring plugins (Nagios, Icinga) use them:\n"
        "  0  every check passes\n"
        "  1  a warning\n"
        "  2  a critical finding (a check FAILs)\n"
        "  3  could not check: bad flags, a source that cannot be read, a bad policy file or plugin,\n"
        "     a plugin that failed while judging (and nothing FAILs), or not done within --timeout",
        formatter_class=argparse.RawDescriptionHelpFormatter, usage_exit=CHECK_UNKNOWN,
    )
    chk.add_argument("--json", action="store_true", help="print the checks and their findings as JSON")
    add_source_options(chk, pm)
    add_timeout_option(chk)
    chk.set_defaults(func=cmd_check)

    plugins = sub.add_parser(
        "plugins", parents=[common],
        help="list the loaded rule plugins with their distribution and version",
        description="List the rule plugins that would judge devices with these options.",
    )
    plugins.add_argument("--json", action="store_true", help="print plugin objects as a JSON array")
    add_rule_options(plugins, pm)
    add_timeout_option(plugins)
    plugins.set_defaults(func=cmd_plugins)

    add_capture_command(sub, common)
    from .diff import add_diff_command

    add_diff_command(sub, common)
    return parser


def _early_timeout(text: str | None) -> float:
    """--timeout's seconds, before parsing; a bad value is the parser's to report, moments later."""
    try:
        return DEFAULT_TIMEOUT if text is None else duration(text)
    except argparse.ArgumentTypeError:
        return DEFAULT_TIMEOUT


def parse_command_line(argv: Sequence[str], usage_exit: int = 2) -> argparse.Namespace:
    """The parsed arguments, with the plugin manager that added its options, and logging set up.
    ConfigError when a plugin cannot be loaded; a usage error exits with `usage_exit`."""
    early = early_args(argv)
    pm = make_plugin_manager(early.plugins, early.disabled_plugins)
    args = build_parser(pm, usage_exit, log_errors=early.command == "serve").parse_args(argv)
    args.plugin_manager = pm
    args.argv = list(argv)  # serve's refresh worker parses the same command line
    logs.setup(args.log_level, args.log_format)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    early = early_args(argv)
    if serves_lean(argv, early):
        return serve_command.main(argv)  # without the plugins: the refresh worker loads them
    # What "could not run" exits with: `check` follows the monitoring-plugin convention (3, unknown),
    # for a usage error too (2 would read as critical).
    check = early.command == "check"
    failed = CHECK_UNKNOWN if check else 1
    setup_early_logging(early)  # a usage error of `serve --help ...` is already a line in its format
    serving = early.command == "serve"
    if early.command not in ONE_SHOT:
        return _run(argv, check, failed, serving)
    # Started before the plugins are imported: a plugin that hangs at import is a plugin that hangs.
    seconds = _early_timeout(early.timeout)
    with Deadline(seconds, failed, f"passthrough-exporter: {early.command} did not finish within {seconds:g}s "
                  "(--timeout): a source or a plugin did not answer"):
        return _run(argv, check, failed, serving)


def _run(argv: list[str], check: bool, failed: int, serving: bool) -> int:
    try:
        args = parse_command_line(argv, usage_exit=CHECK_UNKNOWN if check else 2)
    except ConfigError as exc:
        _failed(serving, exc)
        return failed
    try:
        return args.func(args)
    except (SourceError, ConfigError) as exc:
        _failed(serving, exc)
        return failed
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left, nothing more to say
        sys.stderr.close()
        return 0
    except Exception:
        if not serving:
            raise
        log.exception("serve failed")  # a log line too, traceback in `err`, where a log pipeline expects it
        return 1


def _failed(serving: bool, exc: Exception) -> None:
    """Why a command could not run. `serve` writes log lines only (a service's log is read by
    machines, in --log.format); a one-shot command says it in one plain line, for the person or
    the cron mail reading it."""
    if serving:
        log.error("%s", exc)
    else:
        print(f"passthrough-exporter: {visible(str(exc))}", file=sys.stderr)
