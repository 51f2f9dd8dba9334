"""Response bodies of one refresh, each made (and gzipped) at most once while it is served.

A body that depends only on the refresh and the documented query parameters is the same bytes
for every client, so the first request makes it (a device list stitched from the refresh's device
objects, a gzipped form) and the others share it: a client costs bytes sent, not work or memory.
The cache belongs to one published refresh and goes with it; it is
bounded in entries and in bytes (least recently used first out), so clients asking for every
device name or filter combination cannot grow it without limit.
"""

from __future__ import annotations

import gzip
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

MAX_ENTRIES = 4096
MAX_BYTES = 64 * 1024 * 1024
GZIP_LEVEL = 6


def gzipped(data: bytes) -> bytes:
    """`data` gzipped as every body is (mtime 0: the same bytes every time)."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


# A gzip member's header: deflate, no name, mtime 0, unknown OS (the same bytes every time).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_EMPTY_LAST_BLOCK = b"\x03\x00"  # an empty final deflate block, byte-aligned after a sync flush


def _deflate() -> zlib._Compress:
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate: no zlib wrapper


def gzipped_open(data: bytes | memoryview) -> bytes:
    """`data` gzipped so that more can be joined to it without compressing it again (`gzip_append`):
    its deflate stream is flushed to a byte boundary and closed by an empty final block."""
    c = _deflate()
    stream = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    last = c.flush()
    assert last == _EMPTY_LAST_BLOCK, last
    return b"".join([_GZIP_HEADER, stream, last, struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)])


def gzip_append(member: bytes | memoryview, extra: bytes) -> list[bytes | memoryview]:
    """The parts of one gzip member holding `member`'s data (made by `gzipped_open`) then `extra`:
    `member` up to its empty final block, as it is, then `extra` compressed and the new trailer.
    Only `extra` is compressed; the checksum continues from the one in `member`'s trailer."""
    view = memoryview(member)
    assert bytes(view[-10:-8]) == _EMPTY_LAST_BLOCK, "not made by gzipped_open"
    crc, size = struct.unpack("<II", view[-8:])
    c = _deflate()
    tail = c.compress(extra) + c.flush()
    return [view[:-10], tail + struct.pack("<II", zlib.crc32(extra, crc), (size + len(extra)) & 0xFFFFFFFF)]


@dataclass(slots=True)
class Body:
    data: bytes
    gzipped: bytes | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return len(self.data) + (len(self.gzipped) if self.gzipped is not None else 0)

    def gzip(self) -> bytes:
        """The gzipped body, compressed on first use (mtime 0: the same bytes every time)."""
        with self._lock:
            if self.gzipped is None:
                self.gzipped = gzipped(self.data)
            return self.gzipped


class Bodies:
    """Rendered bodies by key; `render` runs at most once per key while the entry stays cached."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Body] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._rendering: dict[Hashable, threading.Lock] = {}
        self.renders = 0  # how many times a body was rendered (tests and figures)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def lookup(self, key: Hashable, want_gzip: bool = False) -> bytes | None:
        """The cached body, or None when it (or its gzip) still has to be produced. Never blocks long."""
        with self._lock:
            body = self._entries.get(key)
            if body is None:
                return None
            self._entries.move_to_end(key)
            return body.data if not want_gzip else body.gzipped

    def produce(self, key: Hashable, render: Callable[[], bytes], want_gzip: bool = False) -> bytes:
        """The body for `key`, rendering (and gzipping) it if needed. Blocking: run it off the event loop.

        Concurrent callers for one key wait for the first one's render instead of repeating it.
        An exception from `render` (a query error) propagates and nothing is cached.
        """
        with self._lock:
            gate = self._rendering.setdefault(key, threading.Lock())
        with gate:
            try:
                with self._lock:
                    body = self._entries.get(key)
                if body is None:
                    body = Body(render())
                    with self._lock:
                        self.renders += 1
                        self._store(key, body)
                if not want_gzip:
                    return body.data
                if body.gzipped is not None:
                    return body.gzipped
                before = body.size
                zipped = body.gzip()
                with self._lock:
                    if self._entries.get(key) is body:
                        self._bytes += body.size - before
                        self._evict(keep=key)
                return zipped
            finally:
                with self._lock:
                    if self._rendering.get(key) is gate:
                        del self._rendering[key]

    def _store(self, key: Hashable, body: Body) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = body
        self._bytes += body.size
        self._evict(keep=key)

    def _evict(self, keep: Hashable) -> None:
        # The entry just produced stays even when it alone is over budget: it is being served now.
        while (len(self._entries) > self.max_entries or self._bytes > self.max_bytes) and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:
                self._entries.move_to_end(keep)
                oldest = next(iter(self._entries))
            self._bytes -= self._entries.pop(oldest).size
