"""The refresh worker: `python -m passthrough_exporter.commands.refresh_worker FD ARGS...`, started by `serve`.

It parses `serve`'s command line ARGS (it is where the plugins are loaded and their options read:
the server imports none of them), opens the source, says it is ready, then answers each request on
the socket FD with one refresh (`build`): read, judge, render. The answer is a `Rendered` record
(rendered.py), "unchanged" when the host reads exactly as it did for the record the server holds
(the server says which, by its token), or why the refresh failed.
A plugin that crashes or hangs takes this process down, not the server: the server counts one failed
refresh and starts another worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

from .. import logs
from ..judging.inspector import Inspector
from ..model import Inventory
from ..reading.sources import Source
from ..rendering.metrics import ERROR_KINDS, MetricOptions
from ..rendering.rendered import Rendered, send
from .gcpause import gc_paused
from .statefile import StateWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Failed:
    kind: str  # source_error | refresh_error: the passthrough_collect_errors_total kind it counts as
    why: str


class Builder:
    """Builds refreshes for one source, inspector and options; keeps the last read to tell an
    unchanged host. The rules are functions of the read and the options (hookspecs.py), so a read
    equal to the last one judges and renders to the same bodies: the server keeps serving those,
    and the refresh costs the read alone (about half of it on a large host, benchmarks/RESULTS.md)."""

    def __init__(self, source: Source, inspector: Inspector, options: MetricOptions,
                 state: StateWriter | None = None) -> None:
        self.source, self.inspector, self.options = source, inspector, options
        self.state = state  # writes this boot's record after a refresh (None: --no-state)
        self._last: Inventory | None = None  # the read behind the last record made
        self.token = 0  # that record's: the server says which record it serves

    def build(self, held: int = 0) -> Rendered | Failed | None:
        """One refresh: a record, None when the host read as it did for the record the server
        `held` (that record's token; 0 for none), or why it failed. Never raises."""
        started = time.monotonic()
        try:
            inventory = self.source.read()
        except Exception as exc:  # the source could not be read: the server keeps the old bodies
            return Failed("source_error", str(exc))
        if held and held == self.token and self._last is not None and _same_read(inventory, self._last):
            logs.REPEATS.carry_over()  # the judge's warnings were not made again, nor are they over
            return None
        self._last = None
        try:
            snap = self.inspector.judge(inventory, source=self.source.name, started=started)
            rendered = Rendered.of(snap, self.options, token=int.from_bytes(os.urandom(8), "big") or 1)
        except Exception as exc:  # a bug, or input nobody foresaw: never a silently stale snapshot
            log.exception("refresh failed unexpectedly")
            return Failed("refresh_error", f"{type(exc).__name__}: {exc}")
        self._last, self.token = inventory, rendered.token
        if self.state is not None:  # after the refresh succeeded; a failure to write is a warning
            self.state.after_refresh(inventory)
        return rendered

    def answer(self, held: int = 0) -> tuple:
        """`build` as the server hears it: ("built", Rendered) | ("unchanged",) | ("failed", kind, why)."""
        outcome = self.build(held)
        if outcome is None:
            return ("unchanged",)
        if isinstance(outcome, Failed):
            return ("failed", outcome.kind, outcome.why)
        return ("built", outcome)


def _same_read(a: Inventory, b: Inventory) -> bool:
    return a.host == b.host and a.errors == b.errors and a.devices == b.devices


try:  # glibc's; musl has none
    _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
except (AttributeError, OSError):
    _MALLOC_TRIM = None


def _return_free_memory() -> None:
    """Hand the heap the refresh freed back to the system (glibc keeps it for reuse otherwise): 2 ms
    for about 9 MB less resident between refreshes at 20,000 devices."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def main(argv: Sequence[str]) -> int:
    """The worker: `FD ARGS...`, FD its end of the socket pair, ARGS serve's command line."""
    # Ctrl-C, systemd's SIGTERM to the whole unit and a terminal's hangup reach the worker too: the
    # server decides. It ends the worker by closing the socket (then kills it, if it is in the
    # middle of a refresh), and on SIGHUP replaces it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    conn = Connection(os.dup(sock.fileno()))  # the messages; `sock` itself carries the records' buffers
    from ..reading.sources import SourceError
    from ..settings import ConfigError
    from .cli import inspector_from, metric_options, open_source, parse_command_line, state_path
    from .cmdline import early_args, setup_early_logging

    setup_early_logging(early_args(argv[1:]))  # a usage error is a log line in --log.format, as the server's
    try:
        args = parse_command_line(argv[1:])
    except SystemExit as exc:  # a usage error, already written as a log line by the parser
        conn.send(("usage", exc.code if isinstance(exc.code, int) else 2))
        return 2
    except ConfigError as exc:  # a plugin that cannot be loaded
        conn.send(("error", "refresh_error", str(exc)))
        return 1
    try:
        builder = Builder(open_source(args), inspector_from(args), metric_options(args),
                          StateWriter(path) if (path := state_path(args)) is not None else None)
    except SourceError as exc:
        conn.send(("error", "source_error", str(exc)))
        return 1
    except ConfigError as exc:  # a bad policy file, a plugin option refused
        conn.send(("error", "refresh_error", str(exc)))
        return 1
    except Exception as exc:
        conn.send(("error", "refresh_error", f"{type(exc).__name__}: {exc}"))
        return 1
    try:
        conn.send(("ready", builder.source.name, ERROR_KINDS))
        while True:
            try:
                _, held = conn.recv()  # ("refresh", the token of the record the server serves)
            except EOFError:
                return 0
            logs.REPEATS.next_refresh()
            with gc_paused():
                answer = builder.answer(held)
                if answer[0] == "built":
                    send(conn, sock, ("built",), answer[1])
                else:
                    conn.send(answer)
                del answer  # the next refresh is built without this one
            _return_free_memory()
    except (BrokenPipeError, ConnectionResetError):  # the server is gone
        return 0
    finally:
        builder.source.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
