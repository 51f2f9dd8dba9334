"""The refresh worker's side (see worker.py): `python -m passthrough_exporter.worker_process FD ARGS...`.

Parses the command line `serve` got, opens the same source with the same plugins and options, says
it is ready, then answers each request on the socket FD with one refresh: a small pickled header,
then the descriptors of two sealed memory files holding the large buffers: the server reads the
first out (the exposition, its gzip, the findings, the page) and maps the second (the device objects).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
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
    # Ctrl-C, systemd's SIGTERM to the whole unit and a terminal's hangup reach the child too: the
    # server decides. It ends the child by closing the socket (then kills it, if it is in the middle
    # of a refresh), and on SIGHUP replaces it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    conn = Connection(os.dup(sock.fileno()))  # messages; `sock` itself passes the buffers' descriptor
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
                fds: list[int] = []
                try:
                    header, blobs = outcome.served.to_wire()
                    # Two files: the server copies the first out and lets it go, and maps the second.
                    fds.append(buffers_file(blobs[:-1]))
                    fds.append(buffers_file(blobs[-1:]))
                except (OSError, MemoryError) as exc:  # no memory for the files: this refresh fails
                    for fd in fds:
                        os.close(fd)
                    conn.send(("failed", "refresh_error", f"cannot hand the refresh over: {exc}"))
                    continue
                try:
                    conn.send(("built", outcome.errors, outcome.findings, header, [len(b) for b in blobs]))
                    socket.send_fds(sock, [b"\0"], fds)
                finally:
                    for fd in fds:
                        os.close(fd)
                del outcome, header, blobs  # the next refresh is built without this one
    except (BrokenPipeError, ConnectionResetError):  # the server is gone
        return 0
    finally:
        source.close()


def buffers_file(blobs: Sequence[bytes]) -> int:
    """A memory file holding `blobs` one after another, sealed (it can no longer change or shrink, so
    the server can map it safely): it reaches the server as a descriptor, not through the socket."""
    fd = os.memfd_create("passthrough-served", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with open(fd, "wb", closefd=False) as f:
            for blob in blobs:
                f.write(blob)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
