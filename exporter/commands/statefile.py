"""State across boots, the writing side: `serve`'s refresh worker keeps this boot's record, and the
previous boot's, in `--state.path` (reading/state.py reads it back).

Written atomically (fileutil: a reader sees the old file or the new), mode 0644, never over what is
not a regular file, and only when this boot's record changed. A file that cannot be written (a
read-only directory, a FIFO in its place) is one warning, again only when the reason changes; the
refreshes go on.
"""

from __future__ import annotations

import json
import logging

from ..model import BootRecord, Inventory
from ..reading.state import state_document
from .fileutil import atomic_file

log = logging.getLogger(__name__)


class StateWriter:
    """Writes the state file after a refresh, when this boot's record is not the one last written."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._written: BootRecord | None = None
        self._told: str | None = None  # the failure last logged

    def after_refresh(self, inventory: Inventory) -> bool:
        """Write this boot's record (and the previous boot's, as the read found it) if it changed;
        whether the file was written. Never raises."""
        host = inventory.host
        if not host.state_read or host.boot_id is None:  # --no-state, or no boot to key it by (told already)
            return False
        current = BootRecord.of(inventory)
        if current == self._written:
            return False
        records = [current] + ([host.previous_boot] if host.previous_boot is not None else [])
        data = json.dumps(state_document(records), separators=(",", ":"), sort_keys=True).encode() + b"\n"
        try:
            with atomic_file(self.path, mode=0o644) as f:
                f.write(data)
        except OSError as exc:
            why = f"cannot write the state file {self.path}: {exc.strerror or exc}; the next boot will not know this one"
            if why != self._told:
                log.warning("%s", why)
            self._told = why
            return False
        self._written, self._told = current, None
        log.debug("wrote this boot's record of %d devices to %s", len(current.devices), self.path)
        return True
