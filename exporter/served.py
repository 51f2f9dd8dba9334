"""What the server hands out for one refresh: bytes and flat indexes, no device objects.

A `Served` is made from a judged snapshot (`renderer.render_served`), in this process or in the
refresh worker, and is all the HTTP server needs: the exposition, the host page, the findings, and a
`DeviceTable` that answers every documented device query by stitching prerendered JSON objects. It
holds a few large buffers and arrays rather than a million small objects, so it crosses from the
worker as a small header and a few buffers (`to_wire`/`from_wire`) and costs the server bytes, not
objects. A buffer may be `bytes` or a read-only memoryview of a mapped file: both slice, join,
compress and send alike.
"""

from __future__ import annotations

import pickle
from array import array
from dataclasses import dataclass, field

from .bodies import gzipped_open
from .jsonout import dumps
from .metrics import Status, render_status
from .query import DeviceNotFound, check_filters

# JSON device objects are stored as they sit in an array (jsonout's layout: two spaces deeper than
# the top level); the one-device answer is the same text one level out, with "affected" added.
_LIST_INDENT = b"\n  "
_AFFECTED_KEY = b',\n  "affected": '


@dataclass(frozen=True, slots=True)
class DeviceTable:
    """Every device of a snapshot, in name order, as the API serves them.

    Affected sets keep the snapshot's sharing: a device points at one shared set (its IOMMU group
    and what hangs below it; -1 for none) and has its own extras, both as runs of device indexes.
    """

    names: tuple[str, ...]
    types: tuple[str, ...]
    eligible: bytes  # one byte per device, 1 or 0
    available: bytes
    text: bytes  # the devices' JSON objects (UTF-8), one after another
    ends: array  # 'q': object i is text[ends[i-1]:ends[i]]
    shared_of: array  # 'i': the shared set of device i, or -1
    shared_ends: array  # 'q': shared set s is shared_items[shared_ends[s-1]:shared_ends[s]]
    shared_items: array  # 'i'
    own_ends: array  # 'q': device i's own extras are own_items[own_ends[i-1]:own_ends[i]]
    own_items: array  # 'i'
    index: dict[str, int] = field(compare=False, repr=False)  # name -> its position in `names`

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def _span(ends: array, i: int) -> slice:
        """Where run i lies, in a layout where run i ends at ends[i] and starts where run i-1 ended."""
        return slice(ends[i - 1] if i else 0, ends[i])

    def affected(self, i: int) -> list[int]:
        """The indexes of what goes with device i, in name order, i itself excluded."""
        s = self.shared_of[i]
        found = set(self.shared_items[self._span(self.shared_ends, s)]) if s >= 0 else set()
        found.update(self.own_items[self._span(self.own_ends, i)])
        found.discard(i)
        return sorted(found)

    def object_text(self, i: int) -> memoryview:
        return memoryview(self.text)[self._span(self.ends, i)]

    def select(self, cap: str | None = None, passthrough: bool = False, affected_by: str | None = None,
               available: bool = False) -> list[int]:
        """`query.select` on the table: the same filters, errors and order, as indexes."""
        check_filters(cap, passthrough, affected_by, available, self.index.__contains__)
        if affected_by is not None:
            return self.affected(self.index[affected_by])
        types, eligible, free = self.types, self.eligible, self.available
        return [i for i in range(len(self.names))
                if (cap is None or types[i] == cap) and (not passthrough or eligible[i])
                and (not available or free[i])]

    def list_body(self, indexes: list[int]) -> bytes:
        """The JSON array of these devices' objects: the text `devices --json` prints, and a newline."""
        if not indexes:
            return b"[]\n"
        objects = self.object_text
        return b"[\n  " + b",\n  ".join([objects(i) for i in indexes]) + b"\n]\n"

    def device_body(self, name: str) -> bytes:
        """The one-device JSON object: the list object one level out, plus the sorted `affected`."""
        i = self.index.get(name)
        if i is None:
            raise DeviceNotFound(name)
        text = bytes(self.object_text(i)).replace(_LIST_INDENT, b"\n")  # strings hold no raw newline
        affected = dumps([self.names[j] for j in self.affected(i)]).replace("\n", "\n  ").encode()
        return text[:-2] + _AFFECTED_KEY + affected + b"\n}\n"


@dataclass(frozen=True, slots=True)
class Served:
    """One refresh, ready to serve. `metrics` ends with the status families (from `status_at`)."""

    status: Status
    devices: int
    metrics: bytes
    status_at: int
    metrics_gzip: bytes  # gzipped_open: the server joins its process metrics to it per scrape
    findings: bytes  # the /api/findings body
    page: bytes  # the host page
    table: DeviceTable

    def with_status(self, status: Status) -> Served:
        """The same devices under another status (a failed refresh): only the exposition's tail changes."""
        metrics = b"".join([memoryview(self.metrics)[:self.status_at], render_status(status)])
        return Served(status, self.devices, metrics, self.status_at, gzipped_open(metrics), self.findings, self.page,
                      self.table)

    # --- across a pipe: a small pickled header and the large buffers as they are ---------------

    _BLOBS = ("metrics", "metrics_gzip", "findings", "page")

    def to_wire(self) -> tuple[bytes, list[bytes]]:
        t = self.table
        header = (self.status, self.devices, self.status_at, t.names, t.types, t.eligible, t.available,
                  t.ends, t.shared_of, t.shared_ends, t.shared_items, t.own_ends, t.own_items)
        return pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL), [
            *(getattr(self, b) for b in self._BLOBS), t.text]

    @classmethod
    def from_wire(cls, header: bytes, blobs: list[bytes]) -> Served:
        (status, devices, status_at, names, types, eligible, available, ends, shared_of, shared_ends,
         shared_items, own_ends, own_items) = pickle.loads(header)  # noqa: S301 - from our own worker
        metrics, metrics_gzip, findings, page, text = blobs
        table = DeviceTable(names, types, eligible, available, text, ends, shared_of, shared_ends,
                            shared_items, own_ends, own_items, {name: i for i, name in enumerate(names)})
        return cls(status, devices, metrics, status_at, metrics_gzip, findings, page, table)
