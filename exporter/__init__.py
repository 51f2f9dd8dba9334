"""passthrough-exporter: which host devices can be passed through to a VM, and at what cost."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("passthrough-exporter")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

import pluggy as _pluggy

#: Decorator for hook implementations in rule plugins (see `passthrough_exporter.hookspecs`).
hookimpl = _pluggy.HookimplMarker("passthrough_exporter")
