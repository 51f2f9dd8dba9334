"""The `passthrough-exporter` program: `serve` runs lean (serve.py), every other command through
the full command line (cli.py), which loads the plugins."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from .cmdline import early_args, serves_lean, setup_early_logging


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    early = early_args(argv)
    if not serves_lean(argv, early):
        from .cli import main as cli_main

        return cli_main(argv)
    # A reload asked for while starting must not end serve (SIGHUP's default); serve.main queues it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_early_logging(early)
    from .serve import main as serve_main

    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main())
