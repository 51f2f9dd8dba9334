"""The served form: every body the server stitches from it is the bytes the snapshot itself gives.

The oracle is the snapshot's own device objects and `query.select`, printed by the standard
library's `json.dumps(indent=2)`: nothing of the table's stitching is used to check it.
"""

from __future__ import annotations

import gzip
import itertools
import json
from dataclasses import replace

import hosts
import pytest
from helpers import generate_module, judge_tree

from passthrough_exporter.metrics import MetricOptions, Status, render
from passthrough_exporter.query import ConflictingFilters, DeviceNotFound, QueryError, select
from passthrough_exporter.renderer import render_served
from passthrough_exporter.served import Served
from passthrough_exporter.snapshot import Snapshot


def _text(value: object) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


FILTERS = [dict(zip(("cap", "passthrough", "available"), combo))
           for combo in itertools.product((None, "pci", "usb_device", "usb", "scsi", "scsi_host", "system"),
                                          (False, True), (False, True))]


def _check_every_body(snap: Snapshot) -> None:
    served = render_served(snap, MetricOptions())
    table = served.table
    assert table.names == tuple(snap.inventory.devices)
    for kwargs in FILTERS:
        want = _text([snap.device_object(n) for n in select(snap, **kwargs)])
        assert table.list_body(table.select(**kwargs)) == want, kwargs
    for name in snap.inventory.devices:
        assert table.device_body(name) == _text(snap.device_object(name, full=True)), name
        want = _text([snap.device_object(n) for n in select(snap, affected_by=name)])
        assert table.list_body(table.select(affected_by=name)) == want, name
    assert served.findings == _text([f.to_json() for f in snap.findings])


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
    tree, _ = generate_module().generate(tmp_path / "gen", 300, seed=3)
    snap = judge_tree(tree)
    shared = {id(a.shared) for a in snap.affected.values() if a.shared}
    assert len(shared) < sum(1 for a in snap.affected.values() if a.shared)  # some set serves several
    _check_every_body(snap)


def test_queries_are_refused_as_the_cli_refuses_them(tree):
    hosts.workstation(tree)
    table = render_served(judge_tree(tree), MetricOptions()).table
    with pytest.raises(QueryError, match="unknown type 'gpu'"):
        table.select(cap="gpu")
    with pytest.raises(ConflictingFilters):
        table.select(cap="pci", affected_by="pci_0000_01_00_0")
    with pytest.raises(DeviceNotFound, match="Node device 'nope' not found"):
        table.select(affected_by="nope")
    with pytest.raises(DeviceNotFound, match="Node device 'nope' not found"):
        table.device_body("nope")


def test_the_wire_form_carries_every_body(tree):
    hosts.workstation(tree)
    served = render_served(judge_tree(tree), MetricOptions())
    back = Served.from_wire(*served.to_wire())
    assert back == served  # every field, the table's arrays and buffers included
    assert back.table.device_body("pci_0000_01_00_0") == served.table.device_body("pci_0000_01_00_0")


def test_a_new_status_rewrites_the_tail_of_the_exposition_only(tree):
    hosts.workstation(tree)
    snap = judge_tree(tree)
    served = render_served(snap, MetricOptions())
    errors = {**snap.errors_total, "refresh_error": 3}
    down = served.with_status(replace(Status.of(snap), source_up=False, errors_total=errors))
    assert down.metrics == render(replace(snap, source_up=False, errors_total=errors))
    assert b'passthrough_source_up{source="sysfs"} 0.0' in down.metrics
    assert gzip.decompress(down.metrics_gzip) == down.metrics
    assert down.table is served.table and down.page is served.page
