"""`serve`: the HTTP server, fed by refreshes in a worker process.

This process reads only its own options (where to listen, the web config, how often to refresh,
the log flags) and imports only what serving needs: no plugin, inspector, source or
prometheus-client. The refresh worker it starts (refresher.py) gets the whole command line and
checks the rest (the source, the plugins and their options, the metric options): a usage error
there is its log line, and `serve` exits with the usage code before it listens.

A request: server.py answers it from `Refresher.current()`, the last `Published` state.
A refresh: the refresher thread asks the worker, which reads, judges and renders, and publishes
what comes back (refresher.py, refresh_worker.py, rendered.py).
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import logs
from ..rendering.exposition import DEFAULT_TELEMETRY_PATH
from .cmdline import CommandParser, refresh_interval

if TYPE_CHECKING:
    from ..serving.refresher import Refresher
    from ..serving.server import ExporterServer

log = logging.getLogger("passthrough_exporter.commands.cli")

DEFAULT_LISTEN = ":9839"


def add_options(parser: argparse.ArgumentParser) -> None:
    """The server's own options (the full parser shows them in `serve --help` too)."""
    web = parser.add_argument_group("web")
    web.add_argument("--web.listen-address", dest="listen_addresses", action="append", metavar="[HOST]:PORT",
                     help=f"address to listen on, repeatable; :PORT is every address, IPv6 and IPv4 "
                     f"(default: {DEFAULT_LISTEN})")
    web.add_argument("--web.telemetry-path", dest="telemetry_path", default=DEFAULT_TELEMETRY_PATH, metavar="PATH",
                     help="path the metrics are served at (default: %(default)s)")
    web.add_argument("--web.config.file", dest="web_config", metavar="FILE",
                     help="TLS and basic auth, in the Prometheus exporter-toolkit web-config format")
    parser.add_argument("--refresh-interval", type=refresh_interval, default=60.0, metavar="DURATION",
                        help="how often devices are re-read, e.g. 30s, 5m; at least 1s (default: 60s)")


def check_telemetry_path(path: str) -> str:
    """The path /metrics is served at: absolute, and none of the other paths."""
    if not path.startswith("/") or "?" in path or "#" in path:
        raise ValueError(f"--web.telemetry-path {path!r}: expected a path such as /metrics")
    if path in ("/", "/healthz", "/api") or path.startswith("/api/"):
        raise ValueError(f"--web.telemetry-path {path!r}: that path serves something else")
    return path


def _own_options(argv: Sequence[str]) -> argparse.Namespace:
    """This process's options; the rest of the command line is the worker's to check."""
    parser = CommandParser(prog="passthrough-exporter serve", add_help=False, log_errors=True, strict=False)
    for flag, choices in (("--log.level", logs.LEVELS), ("--log.format", logs.FORMATS)):
        parser.add_argument(flag, dest=flag[2:].replace(".", "_"), default=None, choices=list(choices))
    add_options(parser)
    return parser.parse_known_args(_without_command(argv))[0]


def _without_command(argv: Sequence[str]) -> list[str]:
    """`argv` without its command word: the first word that is neither an option nor the value of
    one of the options that may stand before it (--log.level, --log.format)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in ("--log.level", "--log.format") else 1
    return [*argv[:i], *argv[i + 1:]]


def main(argv: Sequence[str]) -> int:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads the web config and the policy. Every line it
    writes, start-up errors included, is a log line in --log.format."""
    try:
        return _serve(argv)
    except KeyboardInterrupt:
        return 130
    except Exception:  # a log line too, traceback included, where a log pipeline expects it
        log.exception("serve failed")
        return 1


def _serve(argv: Sequence[str]) -> int:
    from ..serving import server, webconfig
    from ..serving.refresher import Refresher, WorkerError

    # Handlers only queue the signal: the work is done on this thread once serving. A SIGHUP during
    # start-up (`systemctl reload` right after start) waits for it rather than ending the process;
    # SIGTERM and SIGINT keep their default until then, so a stuck start can still be stopped.
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()
    signal.signal(signal.SIGHUP, lambda signum, _frame: signals.put(signum))
    args = _own_options(argv)
    logs.setup(args.log_level or "info", args.log_format or "logfmt")
    try:
        addresses = [server.parse_listen_address(a) for a in args.listen_addresses or [DEFAULT_LISTEN]]
        telemetry_path = check_telemetry_path(args.telemetry_path)
        web = webconfig.load(args.web_config) if args.web_config else webconfig.WebConfig()
    except (ValueError, webconfig.WebConfigError) as exc:
        log.error("%s", exc)
        return 1
    refresher = Refresher(argv, args.refresh_interval)
    try:  # the worker checks the rest of the command line, loads the plugins and opens the source
        refresher.start_worker()
    except WorkerError as exc:
        if exc.usage is not None:  # the worker has said what was wrong
            return exc.usage
        log.error("%s", exc)
        return 1
    except OSError as exc:  # no descriptor or process left for it
        log.error("cannot start the refresh worker: %s", exc)
        return 1
    try:
        httpd = server.serve(addresses, refresher, web, telemetry_path=telemetry_path)
    except OSError as exc:  # server.ListenError: which address, and why
        refresher.stop()
        log.error("%s", exc)
        return 1
    refresher.start()
    log.info("listening on %s (%s, at most %d connections), metrics at %s, source %s, refresh every %gs",
             ", ".join(server.format_address(*a[:2]) for a in httpd.server_addresses),
             "https" if web.ssl_context else "http", httpd.bound, telemetry_path, refresher.source_name,
             args.refresh_interval)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signals.put(signum))
    while (signum := signals.get()) == signal.SIGHUP:
        reload(args.web_config, httpd, refresher)
    log.info("shutting down (%s)", signal.Signals(signum).name)
    httpd.shutdown()
    refresher.stop()
    return 0


def reload(web_config: str | None, httpd: ExporterServer, refresher: Refresher) -> None:
    """SIGHUP, as Prometheus takes it: the web config read again now (a bad file keeps the one in
    force), and the policy and plugin options by a new refresh worker (one that cannot start keeps
    the old worker). Neither stops `serve`."""
    from ..serving import webconfig

    log.info("SIGHUP: reloading the web config and the policy")
    if web_config:
        try:
            web = webconfig.load(web_config)
        except webconfig.WebConfigError as exc:
            log.error("cannot reload the web config, keeping the one in force: %s", exc)
        else:
            httpd.use_web_config(web)
            log.info("reloaded the web config from %s (%s)", web_config, "https" if web.ssl_context else "http")
    refresher.reload()
