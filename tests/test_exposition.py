"""The exporter's own text writer against prometheus-client's, byte for byte."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.rendering.metrics import MetricOptions, SnapshotCollector, render
from passthrough_exporter.model import Device, Finding, HostFacts, Inventory
from passthrough_exporter.judging.snapshot import Snapshot
from tests.support import hosts
from tests.support.local import judge_tree


def reference(snap: Snapshot, options: MetricOptions | None = None) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snap, options))
    return generate_latest(reg)


def test_same_bytes_as_prometheus_client(tree):
    hosts.workstation(tree)
    snap = judge_tree(tree)
    assert render(snap) == reference(snap)
    narrow = MetricOptions(device_types=("pci",), include_vfs=False)
    assert render(snap, narrow) == reference(snap, narrow)


def test_escaping_and_odd_values_match():
    odd = 'a"b\\c\nd é'
    inv = Inventory([
        Device(name="pci_0000_00_02_0", type="pci", driver=odd, vendor_id="0x8086", iommu_group=7,
               assigned_to='vm "one"'),
        Device(name="usb_1_1", type="usb_device", parent="computer", vendor=odd),
    ], HostFacts(iommu_groups_present=True, cmdline="pcie_acs_override=downstream"))
    snap = Inspector().judge(inv)
    snap = Snapshot(snap.inventory, snap.facts, snap.verdicts, snap.affected,
                    findings=(Finding("x", "warning", odd, "m"),), errors_total={"vanished": 3, "new\\kind": 1},
                    duration=0.123456789, finished_at=1_700_000_000.25)
    assert render(snap) == reference(snap)
    # The newline is a control character: written out (\x0a), then the backslashes escaped.
    assert b'driver="a\\"b\\\\c\\\\x0ad \xc3\xa9"' in render(snap)
