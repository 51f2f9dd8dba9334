"""The `passthrough-exporter` program: `serve` runs lean (serve.py), every other command through
the full command line (cli.py), which loads the plugins."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from . import logs
from .cmdline import early_args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    early = early_args(argv)
    if early.command != "serve" or {"-h", "--help", "--version"} & set(argv):
        from .cli import main as cli_main

        return cli_main(argv)
    # A reload asked for while starting must not end serve (SIGHUP's default); serve.main queues it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Logging from the first line on, as far as the flags can be read before parsing.
    logs.setup(early.log_level if early.log_level in logs.LEVELS else "info",
               early.log_format if early.log_format in logs.FORMATS else "logfmt")
    from .serve import main as serve_main

    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main())
