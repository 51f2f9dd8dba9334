"""The refresh worker's side (see worker.py): `python -m passthrough_exporter.worker_process FD ARGS...`.

Parses the command line `serve` got, opens the same source with the same plugins and options, says
it is ready, then answers each request on the socket FD with one refresh: a small pickled header,
then the large buffers as they are.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection

from . import logs
from .cli import inspector_from, metric_options, open_source, parse_command_line
from .gcpause import gc_paused
from .refresher import Failed, build_once
from .settings import ConfigError
from .sources import SourceError


def main(argv: Sequence[str]) -> int:
    """The child: `FD ARGS...`, FD its end of the socket pair, ARGS the server's command line."""
    # Ctrl-C reaches the whole process group: the server decides, and the child leaves when the
    # server closes the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    try:
        args = parse_command_line(argv[1:])
        inspector, options = inspector_from(args), metric_options(args)
        source = open_source(args)
    except (SourceError, ConfigError) as exc:  # what the server could not see: its path, its environment
        conn.send(("error", str(exc)))
        return 1
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    try:
        conn.send(("ready", source.name))
        while True:
            try:
                _, errors_total = conn.recv()
            except EOFError:
                return 0
            logs.REPEATS.next_refresh()
            with gc_paused():
                outcome = build_once(source, inspector, options, errors_total, time.monotonic())
                if isinstance(outcome, Failed):
                    conn.send(("failed", outcome.kind, outcome.why))
                    continue
                header, blobs = outcome.served.to_wire()
                conn.send(("built", outcome.errors, header, len(blobs)))
                for blob in blobs:
                    conn.send_bytes(blob)
                del outcome, header, blobs  # the next refresh is built without this one
    except (BrokenPipeError, ConnectionResetError):  # the server is gone
        return 0
    finally:
        source.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
