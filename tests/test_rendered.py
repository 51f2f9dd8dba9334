"""The rendered form: every body the server stitches from it is the bytes the snapshot itself gives.

The oracle is the snapshot's own device objects, filtered here by the filters' documented meaning,
and printed by the standard library's `json.dumps(indent=2)`: nothing of the index or its
stitching is used to check it.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import socket
import threading
from dataclasses import replace
from multiprocessing.connection import Connection

import pytest

from passthrough_exporter.rendering.metrics import MetricOptions, errors_total, render
from passthrough_exporter.judging.query import ConflictingFilters, DeviceNotFound, QueryError
from passthrough_exporter.serving.refresher import Published
from passthrough_exporter.rendering.rendered import Rendered, receive, send
from passthrough_exporter.judging.snapshot import Snapshot
from passthrough_exporter.rendering.status import Status
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.local import judge_tree
from tests.support.synthetic import generate


def _text(value: object) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


FILTERS = [dict(zip(("cap", "passthrough", "available"), combo))
           for combo in itertools.product((None, "pci", "usb_device", "usb", "scsi", "scsi_host", "system"),
                                          (False, True), (False, True))]


def _matching(snap: Snapshot, cap: str | None, passthrough: bool, available: bool) -> list[str]:
    """DESIGN's filters, spelled out: a type, eligible, and free to hand out now."""
    return [dev.name for dev in snap.inventory
            if (cap is None or dev.type == cap) and (not passthrough or snap.verdicts[dev.name].eligible)
            and (not available or snap.states.get(dev.name) == "available")]


def _check_every_body(snap: Snapshot) -> None:
    rendered = Rendered.of(snap, MetricOptions())
    index = rendered.index
    assert index.names == tuple(snap.inventory.devices)
    for kwargs in FILTERS:
        want = _text([device_object(snap, n) for n in _matching(snap, **kwargs)])
        assert rendered.list_body(index.select(**kwargs)) == want, kwargs
    for name in snap.inventory.devices:
        assert rendered.device_body(name) == _text(device_object(snap, name, full=True)), name
        want = _text([device_object(snap, n) for n in sorted(snap.affected[name])])
        assert rendered.list_body(index.select(affected_by=name)) == want, name
    assert rendered.findings == _text([f.to_json() for f in snap.findings])


def test_every_body_of_the_workstation(tree):
    hosts.workstation(tree)
    snap = judge_tree(tree)
    assert any(len(a) for a in snap.affected.values())  # groups, VFs and children to stitch
    _check_every_body(snap)


def test_every_body_of_a_busy_host(tree):
    """Devices in use, held by a named VM, blocked: the live fields come through as they are."""
    hosts.busy_host(tree)
    snap = judge_tree(tree)
    assert {"in_use", "blocked", "available", "ineligible"} == set(snap.states.values())
    _check_every_body(snap)


def test_every_body_of_a_generated_host_with_shared_groups(tmp_path):
    """SR-IOV PFs, chipset groups of 14 functions, USB and SCSI trees: sets shared between devices."""
    tree, _ = generate(tmp_path / "gen", 300, seed=3)
    snap = judge_tree(tree)
    shared = {id(a.shared) for a in snap.affected.values() if a.shared}
    assert len(shared) < sum(1 for a in snap.affected.values() if a.shared)  # some set serves several
    _check_every_body(snap)


def test_queries_are_refused_as_the_cli_refuses_them(tree):
    hosts.workstation(tree)
    rendered = Rendered.of(judge_tree(tree), MetricOptions())
    with pytest.raises(QueryError, match="unknown type 'gpu'"):
        rendered.index.select(cap="gpu")
    with pytest.raises(ConflictingFilters):
        rendered.index.select(cap="pci", affected_by="pci_0000_01_00_0")
    with pytest.raises(DeviceNotFound, match="Node device 'nope' not found"):
        rendered.index.select(affected_by="nope")
    with pytest.raises(DeviceNotFound, match="Node device 'nope' not found"):
        rendered.device_body("nope")


def test_the_record_crosses_a_socket_whole(tree):
    """What the worker sends is what the server receives: every field, buffers as read-only views."""
    hosts.workstation(tree)
    rendered = Rendered.of(judge_tree(tree), MetricOptions())
    ours, theirs = socket.socketpair()
    with ours, theirs, Connection(os.dup(ours.fileno())) as conn, Connection(os.dup(theirs.fileno())) as out:
        sender = threading.Thread(target=send, args=(out, theirs, ("built",), rendered))
        sender.start()
        kind, header, sizes = conn.recv()
        back = receive(ours, header, sizes)
        sender.join()
    assert kind == "built" and len(sizes) == 5  # metrics, its gzip, findings, page, device objects
    assert back == rendered  # every field, the index and the buffers included
    assert isinstance(back.objects, memoryview) and back.objects.readonly
    # Each buffer its own: a client still sending the exposition keeps it alone alive, not the record.
    assert back.metrics.obj is not back.objects.obj
    assert back.device_body("pci_0000_01_00_0") == rendered.device_body("pci_0000_01_00_0")


def test_the_status_families_close_the_exposition(tree):
    """The server's status families after the worker's host families: the text `render` gives the
    snapshot, gzipped or not; a failed refresh changes only them."""
    hosts.workstation(tree)
    snap = judge_tree(tree)
    rendered = Rendered.of(snap, MetricOptions())
    errors = {**snap.errors_total, "refresh_error": 3}
    down = Published.of(rendered, Status("sysfs", False, snap.duration, snap.finished_at, errors_total(errors)),
                        ready=True)
    want = render(replace(snap, source_up=False, errors_total=errors))
    assert b"".join(down.metrics(b"", gzip=False)) == want
    assert b'passthrough_source_up{source="sysfs"} 0.0' in want
    assert gzip.decompress(b"".join(down.metrics(b"# extra\n", gzip=True))) == want + b"# extra\n"
