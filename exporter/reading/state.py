"""State across boots, the reading side: this boot's id and the previous boot's record from the state
file (`--state.path`), for the host facts, so that the rules compare without doing I/O.

The file (written by `serve`'s refresh worker, commands/statefile.py) is
`{"version": 1, "records": [BootRecord, ...]}`, newest first: the current boot's and the previous
one's. A missing file is normal (the first boot, or never written): no previous boot. A file that
cannot be read, is not JSON of this shape, is of a newer version, or a boot id that cannot be read
is one line in `HostFacts.state_problem`, logged once (again only when the problem changes), and
never a failed read.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ..inputs import read_operator_file
from ..model import BootRecord, known_version
from ..settings import ConfigError

log = logging.getLogger(__name__)

STATE_VERSION = 1
# Two records of about 300 bytes a device (VFs are not recorded) fit for 13,000 devices; a hostile
# file of this size made of empty lists costs some 230 MB to refuse, within the unit's MemoryMax.
STATE_LIMIT = 8 << 20
BOOT_ID = ("sys", "kernel", "random", "boot_id")
DEFAULT_STATE_PATH = "/var/lib/passthrough-exporter/state.json"


def read_boot_id(procfs: str) -> str | None:
    """`<procfs>/sys/kernel/random/boot_id` (a UUID), or None when it cannot be read."""
    try:
        text = read_operator_file(os.path.join(procfs, *BOOT_ID), 4096, "boot id").decode("ascii").strip()
    except (ConfigError, UnicodeDecodeError):
        return None
    return text or None


def parse_state(data: bytes) -> list[BootRecord]:
    """The records of a state file, newest first; ValueError when it is not one this version reads."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a state file (no object)")
    known_version(doc.get("version"), STATE_VERSION, "state file")
    records = doc.get("records")
    if not isinstance(records, list):
        raise ValueError("not a state file (no records)")
    return [BootRecord.from_json(r) for r in records]


def state_document(records: list[BootRecord]) -> dict[str, Any]:
    """What `parse_state` reads back."""
    return {"version": STATE_VERSION, "records": [r.to_json() for r in records]}


def previous_of(records: list[BootRecord], boot_id: str) -> BootRecord | None:
    """The newest record of another boot than `boot_id`."""
    return next((r for r in records if r.boot_id is not None and r.boot_id != boot_id), None)


@dataclass
class BootState:
    """Reads the state file for a source: `facts()` are the HostFacts fields of one read."""

    path: str
    procfs: str = "/proc"
    _told: str | None = field(default=None, repr=False)  # the problem last logged
    # The records last parsed and the file they came from (device, inode, size, mtime): a refresh
    # re-reads the file only when it changed (serve writes it once a boot, when the record changes).
    _parsed: tuple[tuple[int, int, int, int], list[BootRecord]] | None = field(default=None, repr=False)

    def facts(self) -> dict[str, Any]:
        """boot_id, state_read, state_problem and previous_boot for the host facts. Never raises."""
        boot_id = read_boot_id(self.procfs)
        previous, problem = None, None
        if boot_id is None:
            problem = (f"cannot read the boot id ({os.path.join(self.procfs, *BOOT_ID)}): this boot cannot be "
                       "told from the previous one")
        else:
            try:
                previous = previous_of(self.records(), boot_id)
            except (ConfigError, ValueError) as exc:
                problem = f"state file {self.path}: {exc}; starting afresh"
        if problem != self._told and problem is not None:
            log.warning("%s", problem)
        self._told = problem
        return {"boot_id": boot_id, "state_read": True, "state_problem": problem, "previous_boot": previous}

    def records(self) -> list[BootRecord]:
        """The file's records, newest first: [] when there is no file. ConfigError or ValueError
        when it cannot be read or is not a state file of this version."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise ConfigError(f"cannot read it: {exc.strerror}") from None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._parsed is not None and self._parsed[0] == key:
            return self._parsed[1]
        try:
            data = read_operator_file(self.path, STATE_LIMIT, "state file")
        except ConfigError as exc:
            raise ConfigError(str(exc).removeprefix(f"{self.path}: ")) from None
        try:
            records = parse_state(data)
        except ValueError as exc:
            raise ValueError(f"corrupt or unknown: {exc}") from None
        self._parsed = (key, records)
        return records
