"""The command line's parts that `serve`'s server and the other commands share: the parser class,
durations, and the log flags read before anything else. Imports nothing heavy: the server starts
from here without the plugins."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence

log = logging.getLogger("passthrough_exporter.commands.cli")


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
MAX_DURATION = 7 * 86400.0


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
    if value > MAX_DURATION:  # past what a timer takes (threading.TIMEOUT_MAX), and never meant
        raise argparse.ArgumentTypeError(f"{text!r} is too long: at most {MAX_DURATION // 86400:g} days")
    return value


# Each refresh reads every device's attributes from sysfs, scans /proc and runs in a child process:
# more often than once a second it would keep a core busy for no fresher answer.
MIN_REFRESH_INTERVAL = 1.0


def refresh_interval(text: str) -> float:
    """A duration of at least MIN_REFRESH_INTERVAL."""
    value = duration(text)
    if value < MIN_REFRESH_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too short: at least {MIN_REFRESH_INTERVAL:g}s (each refresh reads all of sysfs)")
    return value


class CommandParser(argparse.ArgumentParser):
    """A command's parser: an option it does not know is its error, shown with its own usage, and
    exits with the command's own code for "could not run" (`check`: 3, as monitoring plugins do)."""

    def __init__(self, *args, usage_exit: int = 2, log_errors: bool = False, strict: bool = True, **kwargs) -> None:
        # No abbreviations (`--pass` for `--passthrough`): a flag a plugin or a later version adds
        # would silently change what a shortened flag in a script or unit means.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.usage_exit = usage_exit
        self.log_errors = log_errors  # `serve`: a usage error is a log line, in --log.format, like all it writes
        self.strict = strict  # False: options it does not know are left to another parser (serve's worker)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self.strict:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str):  # type: ignore[override]
        if self.log_errors:
            log.error("%s (see %s --help)", message, self.prog)
            self.exit(self.usage_exit)
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit, f"{self.prog}: error: {message}\n")


def early_args(argv: Sequence[str]) -> argparse.Namespace:
    """What is read before the command line is parsed: the command word (its exit codes depend on
    it) and --plugin and --disable-plugin (the plugins add options to the parser, as pytest loads
    its plugins before parsing), --timeout (the deadline starts before the plugins load), and
    --log.level and --log.format, so that logging is set up before parsing (a usage error of `serve`
    is a log line) and their values are not taken for the command."""
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--plugin", dest="plugins", action="append", default=[])
    early.add_argument("--disable-plugin", dest="disabled_plugins", action="append", default=[])
    early.add_argument("--log.level", dest="log_level")
    early.add_argument("--log.format", dest="log_format")
    early.add_argument("--timeout")
    early.add_argument("command", nargs="?")
    return early.parse_known_args(argv)[0]


def serves_lean(argv: Sequence[str], early: argparse.Namespace) -> bool:
    """The command line runs `serve` itself (not its help or the version): started by serve.py,
    without the plugins, which the refresh worker loads."""
    return early.command == "serve" and not {"-h", "--help", "--version"} & set(argv)


def setup_early_logging(early: argparse.Namespace) -> None:
    """Logging from the first line on, as far as the flags can be read before parsing: a value the
    parser will refuse a moment later falls back to the default meanwhile."""
    from .. import logs

    logs.setup(early.log_level if early.log_level in logs.LEVELS else "info",
               early.log_format if early.log_format in logs.FORMATS else "logfmt")
