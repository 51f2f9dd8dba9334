"""The per-snapshot body cache: one render per key, bounded in entries and bytes."""

from __future__ import annotations

import gzip
import random
import threading
import time

import pytest

from passthrough_exporter.rendering.bodies import Bodies


def test_rendered_once_and_gzipped_once() -> None:
    bodies = Bodies()
    calls = []
    render = lambda: calls.append(1) or b"x" * 1000  # noqa: E731
    assert bodies.lookup("k") is None
    assert bodies.produce("k", render) == b"x" * 1000
    assert bodies.lookup("k") == b"x" * 1000 and bodies.lookup("k", want_gzip=True) is None
    zipped = bodies.produce("k", render, want_gzip=True)
    assert gzip.decompress(zipped) == b"x" * 1000 and bodies.lookup("k", want_gzip=True) is zipped
    assert len(calls) == 1 and bodies.renders == 1 and bodies.bytes == 1000 + len(zipped)


def test_bounded_in_entries_least_recently_used_first_out() -> None:
    bodies = Bodies(max_entries=3)
    for key in "abc":
        bodies.produce(key, lambda: b"body")
    bodies.lookup("a")  # used: "b" is now the oldest
    bodies.produce("d", lambda: b"body")
    assert len(bodies) == 3 and bodies.lookup("b") is None and bodies.lookup("a") == b"body"
    assert bodies.bytes == 12


def test_bounded_in_bytes_gzip_included() -> None:
    bodies = Bodies(max_bytes=2500)
    for key in range(10):
        bodies.produce(key, lambda: random.Random(key).randbytes(1024))  # incompressible
    assert len(bodies) == 2 and bodies.bytes == 2048
    bodies.produce(9, lambda: b"", want_gzip=True)  # gzip of the newest pushes the older one out
    assert len(bodies) == 1 and bodies.lookup(8) is None and bodies.bytes <= 2500
    big = bodies.produce("big", lambda: b"y" * 10_000)  # larger than the budget: kept alone, served
    assert big == b"y" * 10_000 and len(bodies) == 1 and bodies.bytes == 10_000


def test_errors_are_not_cached() -> None:
    bodies = Bodies()

    def fail() -> bytes:
        raise LookupError("no such device")

    for _ in range(2):
        with pytest.raises(LookupError):
            bodies.produce("k", fail)
    assert len(bodies) == 0 and bodies.renders == 0


def test_concurrent_producers_of_one_key_share_the_render() -> None:
    bodies = Bodies()
    calls = []

    def slow() -> bytes:
        calls.append(1)
        time.sleep(0.2)
        return b"z"

    out = []
    threads = [threading.Thread(target=lambda: out.append(bodies.produce("k", slow))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert out == [b"z"] * 8 and len(calls) == 1
