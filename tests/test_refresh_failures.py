"""Refreshes that cannot hang, cannot go silently stale, cannot grow quadratic, and do not repeat
themselves in the log."""

from __future__ import annotations

import io
import logging
import os
import subprocess

import pytest

from passthrough_exporter import logs
from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.rendering.metrics import render
from passthrough_exporter.model import Device, Inventory
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.local import exposition, local_refresher
from tests.support.process import EXE
from tests.support.sysfs_builder import SysfsTree


def fifo_mountinfo(tree: SysfsTree) -> str:
    """A capture can carry a FIFO where <procfs>/self/mountinfo belongs (and no PID 1)."""
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    path = tree.proc / "self" / "mountinfo"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return str(path)


def run(tree: SysfsTree, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args, "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("writer", [False, True], ids=["no-writer", "silent-writer"])
def test_a_fifo_for_mountinfo_costs_one_skipped_input(tree, writer):
    path = fifo_mountinfo(tree)
    held = None
    if writer:  # a writer that holds the FIFO open and never writes: a blocking read would wait for ever
        held = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        out = run(tree, "devices")
        assert out.returncode == 0 and "pci_0000_01_00_0" in out.stdout.split()
        kind = "read_error" if writer else "bad_attribute"  # EAGAIN, or an empty table
        assert "mountinfo" in out.stderr
        inv = SysfsSource(str(tree.sys), str(tree.proc)).read()
        assert dict(inv.errors) == {kind: 1}
        assert inv.host.root_devices == (() if not writer else None)
        assert run(tree, "check").returncode == 1  # the same warnings as without the FIFO, no hang
    finally:
        if held is not None:
            os.close(held)


class Unrenderable:
    """A source whose devices cannot be written out: a name no encoder takes (a lone surrogate)."""

    name = "sysfs"
    error_kinds = ()

    def __init__(self, good: SysfsSource) -> None:
        self.good = good
        self.broken = False

    def read(self) -> Inventory:
        inv = self.good.read()
        if not self.broken:
            return inv
        bad = Device(name="pci_0000_09_00_0", type="pci", driver="snd\udcff", pci_class="0x040300")
        return Inventory([*inv, bad], inv.host)

    def close(self) -> None:
        pass


def test_a_refresh_that_fails_after_the_read_marks_the_source_down(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    source = Unrenderable(SysfsSource(str(tree.sys), str(tree.proc)))
    refresher = local_refresher(source, Inspector(), interval=3600)
    refresher.refresh()
    good = refresher.current()
    assert good.ready and good.status.source_up
    source.broken = True
    refresher.refresh()
    down = refresher.current()
    assert not down.status.source_up and down.ready
    assert down.status.errors_total["refresh_error"] == 1
    assert down.rendered.index.names == good.rendered.index.names  # the old devices
    assert b'passthrough_source_up{source="sysfs"} 0.0' in exposition(down)
    assert b'passthrough_collect_errors_total{kind="refresh_error"} 1.0' in exposition(down)
    source.broken = False
    refresher.refresh()
    assert refresher.current().status.source_up


def test_a_recurring_warning_is_logged_when_it_starts(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    (tree.pci_path("0000:01:00.1") / "numa_node").write_text("minus one\n")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.REPEATS)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        refresher = local_refresher(SysfsSource(str(tree.sys), str(tree.proc)), Inspector(), interval=3600)
        for _ in range(3):
            refresher.refresh()
        assert stream.getvalue().count("attribute numa_node skipped") == 1
        (tree.pci_path("0000:01:00.1") / "numa_node").write_text("0\n")
        refresher.refresh()  # gone: forgotten
        (tree.pci_path("0000:01:00.1") / "numa_node").write_text("minus one\n")
        refresher.refresh()
        refresher.refresh()
        assert stream.getvalue().count("attribute numa_node skipped") == 2  # back: told again, once
        assert refresher.current().status.errors_total["bad_attribute"] == 5  # but every one counted
    finally:
        root.removeHandler(handler)


def test_one_group_of_5000_functions_shares_one_set():
    """No ACS anywhere: every function's affected set is the group, kept once, never 25 million names."""
    n = 5000
    devices = [Device(name=f"pci_0000_{i // 256:02x}_{(i % 256) // 8:02x}_{i % 8}", type="pci",
                      pci_class="0x020000", header_type=0, iommu_group=1) for i in range(n)]
    snap = Inspector().judge(Inventory(devices))
    sets = [snap.affected[d.name] for d in devices]
    assert all(len(s) == n - 1 for s in sets)
    assert len({id(s.shared) for s in sets}) == 1  # one set object for the whole group
    assert all(not s.own for s in sets)
    assert devices[1].name in sets[0] and devices[0].name not in sets[0]
    assert b'passthrough_device_affected_devices{device="pci_0000_00_00_0",type="pci"} 4999.0' in render(snap)
    assert "affected" not in device_object(snap, devices[0].name)
    assert device_object(snap, devices[0].name)["affected_count"] == n - 1
    assert len(device_object(snap, devices[0].name, full=True)["affected"]) == n - 1


RAISER = '''
from passthrough_exporter import hookimpl


@hookimpl
def passthrough_verdict(device):
    if device.name == "pci_0000_01_00_1":
        raise RuntimeError("this rule cannot judge the audio function")
'''


def test_a_rule_that_keeps_failing_is_told_once_across_unchanged_refreshes(tree, tmp_path, monkeypatch):
    """An unchanged host is not judged again: the rule's error is not made again, nor is it over, so an
    unrelated change later does not tell it anew."""
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    (tmp_path / "raising_rules.py").write_text(RAISER)
    monkeypatch.syspath_prepend(str(tmp_path))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.REPEATS)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        refresher = local_refresher(SysfsSource(str(tree.sys), str(tree.proc)), Inspector(plugins=["raising_rules"]))
        refresher.refresh()
        refresher.refresh()  # unchanged
        (tree.proc / "cmdline").write_text("quiet\n")  # a change elsewhere: judged again
        refresher.refresh()
        refresher.refresh()
        assert stream.getvalue().count("Traceback (most recent call last)") == 1  # one record, told once
        assert refresher.errors_total["plugin_error"] == 4  # every refresh counts it
    finally:
        root.removeHandler(handler)
