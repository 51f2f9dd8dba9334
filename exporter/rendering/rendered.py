"""What one refresh hands the server (`Rendered`): every body rendered once, and the index that
answers the API's device queries.

The refresh worker makes it (`Rendered.of`) and sends it (`send`); the server receives it
(`receive`) and serves it as it is until the next refresh. It crosses as one record: a small
pickled header, and its large buffers out of band (pickle protocol 5), each read straight into a
buffer of the server's with the interpreter lock released. The server holds bytes and a small
index, never a snapshot.
"""

from __future__ import annotations

import pickle
import socket
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from ..judging.query import DeviceIndex, DeviceNotFound
from . import jsonout
from .bodies import gzipped_open
from .objects import device_object

if TYPE_CHECKING:
    from ..judging.snapshot import Snapshot
    from .metrics import MetricOptions

Buffer = bytes | memoryview  # a field as made (bytes) or as received (a slice of the server's buffer)

# Device objects are stored as they sit in an array (jsonout's layout: two spaces deeper than the
# top level); the one-device answer is the same text one level out, with "affected" added.
_LIST_INDENT = b"\n  "
_AFFECTED_KEY = b',\n  "affected": '


@dataclass(frozen=True, slots=True)
class Rendered:
    """One refresh, ready to serve."""

    metrics: Buffer  # the host's families; the server adds the status and process families (status.py)
    metrics_gzip: Buffer  # the same gzipped (`gzipped_open`), so that the server joins its own to it
    findings: Buffer  # the /api/findings body
    page: Buffer  # the host page
    index: DeviceIndex
    objects: Buffer  # every device's JSON object, one after another, in index order
    ends: array  # 'q': object i is objects[ends[i-1]:ends[i]]
    errors: Mapping[str, int]  # bad inputs this refresh skipped, by kind
    findings_count: int
    token: int = 0  # names the record: the worker answers "unchanged" only to the server holding it

    @classmethod
    def of(cls, snap: Snapshot, options: MetricOptions, token: int = 0) -> Rendered:
        from . import hostpage  # the refresh worker's modules: never imported by the server
        from .metrics import render_host

        metrics = render_host(snap, options)
        index = DeviceIndex.of(snap)
        objects = bytearray()  # one growing buffer: a list of the objects and its join would hold them twice
        ends = array("q")
        item = jsonout.array_item
        for name in index.names:
            objects += item(device_object(snap, name)).encode()
            ends.append(len(objects))
        return cls(metrics, gzipped_open(metrics), (jsonout.dumps([f.to_json() for f in snap.findings]) + "\n").encode(),
                   hostpage.render(snap, options.telemetry_path), index, bytes(objects), ends, dict(snap.errors),
                   len(snap.findings), token)

    def object_text(self, i: int) -> memoryview:
        return memoryview(self.objects)[self.ends[i - 1] if i else 0:self.ends[i]]

    def list_body(self, positions: Sequence[int]) -> bytes:
        """The JSON array of these devices' objects: the text `devices --json` prints, and a newline."""
        if not positions:
            return b"[]\n"
        return b"[\n  " + b",\n  ".join([self.object_text(i) for i in positions]) + b"\n]\n"

    def device_body(self, name: str) -> bytes:
        """The one-device JSON object: the list object one level out, plus the sorted `affected`."""
        i = self.index.positions.get(name)
        if i is None:
            raise DeviceNotFound(name)
        text = bytes(self.object_text(i)).replace(_LIST_INDENT, b"\n")  # strings hold no raw newline
        names = self.index.names
        affected = jsonout.dumps([names[j] for j in self.index.affected_of(i)]).replace("\n", "\n  ").encode()
        return text[:-2] + _AFFECTED_KEY + affected + b"\n}\n"

    def __reduce__(self) -> tuple:
        # The large buffers out of band (`send`): the header pickles the rest and their places.
        return type(self), tuple(pickle.PickleBuffer(v) if isinstance(v, (bytes, bytearray, memoryview)) else v
                                 for v in (getattr(self, f.name) for f in fields(self)))


# Before the first refresh: no host family (the status families alone are served), nothing to query.
EMPTY = Rendered(b"", gzipped_open(b""), b"[]\n", b"", DeviceIndex((), (), b"", b"", (), {}), b"", array("q"), {}, 0)


def send(conn: Connection, sock: socket.socket, message: tuple, rendered: Rendered) -> None:
    """Send `message` with `rendered`'s header and buffer sizes added, on `conn`, then its buffers
    as they are on `sock`, the same socket (`receive` reads them)."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(rendered, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    conn.send((*message, header, [v.nbytes for v in views]))
    for view in views:
        sock.sendall(view)


def receive(sock: socket.socket, header: bytes, sizes: Sequence[int]) -> Rendered:
    """The record whose header and buffer sizes came in a message: its buffers, each read from
    `sock` into a buffer of its own (the lock released while the kernel copies; a client still
    sending an old exposition keeps that one alive, not the whole record), then the header."""
    parts = []
    for size in sizes:
        view = memoryview(bytearray(size))
        got = 0
        while got < size:
            n = sock.recv_into(view[got:])
            if not n:
                raise EOFError("the refresh worker's buffers ended early")
            got += n
        parts.append(view.toreadonly())
    return pickle.loads(header, buffers=parts)  # noqa: S301 - from our own worker
