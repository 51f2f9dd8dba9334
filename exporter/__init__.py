"""passthrough-exporter: which host devices can be passed through to a VM, and at what cost."""

from __future__ import annotations

import pluggy as _pluggy

#: Decorator for hook implementations in rule plugins (see `passthrough_exporter.hookspecs`).
hookimpl = _pluggy.HookimplMarker("passthrough_exporter")


def __getattr__(name: str) -> str:
    # `__version__` is read on first use (--version, build_info, the host page): importing
    # importlib.metadata to read it costs every other command a fifth of its start-up.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("passthrough-exporter")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        version = "0+unknown"
    globals()["__version__"] = version
    return version
