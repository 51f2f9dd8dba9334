"""passthrough-exporter: which host devices can be passed through to a VM, and at what cost."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Both made on first use. `hookimpl`, the decorator for hook implementations in rule plugins (see
    # `passthrough_exporter.judging.hookspecs`): `serve`'s server imports no plugin, so it needs no pluggy.
    # `__version__` (--version, build_info, the host page): importing importlib.metadata to read it
    # costs every other command a fifth of its start-up.
    if name == "hookimpl":
        import pluggy

        globals()["hookimpl"] = marker = pluggy.HookimplMarker("passthrough_exporter")
        return marker
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("passthrough-exporter")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        version = "0+unknown"
    globals()["__version__"] = version
    return version
