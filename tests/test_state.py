"""State across boots: the state file read into the host facts, written by serve's worker, and the
changes plugin's findings from it, boot after boot (answers worked out by hand)."""

from __future__ import annotations

import json
import logging
import os
import stat

from passthrough_exporter.commands.statefile import StateWriter
from passthrough_exporter.model import BootRecord, Device, HostFacts, Inventory
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.reading.state import BootState, parse_state

from .support import hosts
from .support.local import inspector

BOOT_A, BOOT_B, BOOT_C = ("aaaaaaaa-0000-4000-8000-00000000000a", "bbbbbbbb-0000-4000-8000-00000000000b",
                          "cccccccc-0000-4000-8000-00000000000c")


_STATES: dict[str, BootState] = {}


def read(tree, path):
    """A read as a source makes it, with one BootState per state file (as one per process)."""
    state = _STATES.setdefault(str(path), BootState(str(path), str(tree.proc)))
    return SysfsSource(str(tree.sys), str(tree.proc), state=state).read()


def changes(inventory: Inventory) -> list[tuple[str, str, str]]:
    return [(f.code, f.severity, f.subject) for f in inspector().judge(inventory).findings
            if f.code in ("device_replaced", "group_changed", "group_renumbered", "device_gone", "device_new",
                          "state_unreadable", "no_previous_boot")]


def test_boot_after_boot(tree, tmp_path):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    state = tmp_path / "state" / "state.json"
    state.parent.mkdir()
    writer = StateWriter(str(state))
    # Boot A, the first: no file, nothing to compare with (an info line, not silence).
    tree.boot_id(BOOT_A)
    inv = read(tree, state)
    assert inv.host.boot_id == BOOT_A and inv.host.previous_boot is None and inv.host.state_problem is None
    assert changes(inv) == [("no_previous_boot", "info", "host")]
    assert writer.after_refresh(inv) is True
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o644
    assert writer.after_refresh(read(tree, state)) is False  # the same record: not written again
    # Boot B: the GPU at 01:00.0 is another model (10de:2484 -> 10de:2204), group 2 is group 12 now.
    tree.boot_id(BOOT_B)
    (tree.pci_path("0000:01:00.0") / "device").write_text("0x2204\n")
    for addr in ("0000:01:00.0", "0000:01:00.1"):
        link = tree.pci_path(addr) / "iommu_group"
        target = tree.sys / "kernel" / "iommu_groups" / "12"
        target.mkdir(parents=True, exist_ok=True)
        link.unlink()
        tree.link(link, target)
    inv = read(tree, state)
    assert inv.host.previous_boot is not None and inv.host.previous_boot.boot_id == BOOT_A
    found = [("device_replaced", "warning", "pci_0000_01_00_0"), ("group_renumbered", "info", "group:12")]
    assert changes(inv) == found
    assert writer.after_refresh(inv) is True
    assert [r.boot_id for r in parse_state(state.read_bytes())] == [BOOT_B, BOOT_A]
    assert changes(read(tree, state)) == found  # the same boot read again: the findings hold
    # Boot C, nothing changed since B: no findings.
    tree.boot_id(BOOT_C)
    inv = read(tree, state)
    assert inv.host.previous_boot.boot_id == BOOT_B
    assert changes(inv) == []


def test_a_missing_boot_id_is_said(tree, tmp_path, caplog):
    hosts.base(tree)
    tree.boot_id(None)
    with caplog.at_level(logging.WARNING):
        inv = read(tree, tmp_path / "state.json")
        read(tree, tmp_path / "state.json")
    assert "cannot read the boot id" in inv.host.state_problem
    assert changes(inv) == [("state_unreadable", "warning", "host")]
    assert sum("boot id" in r.getMessage() for r in caplog.records) == 1  # once
    assert StateWriter(str(tmp_path / "state.json")).after_refresh(inv) is False  # nothing to key it by


def test_a_corrupt_or_newer_file_is_one_warning_and_a_fresh_start(tree, tmp_path, caplog):
    hosts.base(tree)
    state = tmp_path / "state.json"
    for content, said in ((b"{not json", "not JSON"), (json.dumps({"version": 9, "records": []}).encode(), "newer"),
                          (b'{"version": 1, "records": [{"version": 1}]}', "corrupt")):
        state.write_bytes(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            inv = read(tree, state)
            read(tree, state)
        assert said in inv.host.state_problem
        assert [r.getMessage() for r in caplog.records if "state file" in r.getMessage()] == [inv.host.state_problem]
        assert changes(inv) == [("state_unreadable", "warning", "host")]
        assert StateWriter(str(state)).after_refresh(inv) is True  # a fresh start: this boot's record alone
        assert [r.boot_id for r in parse_state(state.read_bytes())] == [inv.host.boot_id]


def test_no_state_reads_nothing_and_finds_nothing(tree):
    hosts.base(tree)
    inv = SysfsSource(str(tree.sys), str(tree.proc)).read()
    assert inv.host.state_read is False and changes(inv) == []


def test_an_unwritable_place_is_one_warning(tree, tmp_path, caplog):
    hosts.base(tree)
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    inv = Inventory([], HostFacts(boot_id=BOOT_A, state_read=True))
    writer = StateWriter(str(fifo))
    with caplog.at_level(logging.WARNING):
        assert writer.after_refresh(inv) is False
        assert writer.after_refresh(inv) is False
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # never replaced
    assert len([r for r in caplog.records if "cannot write the state file" in r.getMessage()]) == 1


def _gpu(**kw: object) -> Device:
    return Device(name="pci_0000_01_00_0", type="pci", address="0000:01:00.0", vendor_id="0x10de",
                  product_id="0x2484", pci_class="0x030000", iommu_group=2, **kw)  # type: ignore[arg-type]


def test_critical_when_a_domain_is_configured_with_the_device():
    before = BootRecord.of(Inventory([_gpu(serial="A1")]), BOOT_A)
    now = _gpu(serial="B2", assignments=(("win11", False),), assigned_to="win11", assigned_running=False)
    inv = Inventory([now], HostFacts(boot_id=BOOT_B, state_read=True, previous_boot=before))
    snap = inspector().judge(inv)
    [f] = [f for f in snap.findings if f.code == "device_replaced"]
    assert f.severity == "critical" and "domain win11 (shut off)" in f.message and f.fix
    assert "A1" not in f.message and "B2" not in f.message
    # The domain itself: its <hostdev> now names another card.
    [h] = [f for f in snap.findings if f.code == "hostdev_changed"]
    assert (h.severity, h.subject) == ("critical", "domain:win11")
    assert h.message == ("domain win11 is configured with pci_0000_01_00_0 (replaced), changed since the previous "
                         "boot: it will not start, or will start with another device")


def test_a_gone_device_a_domain_names_is_critical():
    before = BootRecord.of(Inventory([_gpu()]), BOOT_A)
    host = HostFacts(boot_id=BOOT_B, state_read=True, previous_boot=before,
                     missing_hostdevs=(("win11", "pci address=0000:01:00.0"),))
    [f] = [f for f in inspector().judge(Inventory([], host)).findings if f.code == "device_gone"]
    assert (f.severity, f.subject) == ("critical", "pci_0000_01_00_0") and "win11" in f.message
    [h] = [f for f in inspector().judge(Inventory([], host)).findings if f.code == "hostdev_changed"]
    assert (h.subject, h.message.split(",")[0]) == ("domain:win11", "domain win11 is configured with "
                                                                     "pci_0000_01_00_0 (gone)")
    host = HostFacts(boot_id=BOOT_B, state_read=True, previous_boot=before)
    found = inspector().judge(Inventory([], host)).findings
    [f] = [f for f in found if f.code == "device_gone"]
    assert f.severity == "warning"
    assert not [f for f in found if f.code == "hostdev_changed"]  # no domain names it


def test_an_untouched_device_of_a_domain_gives_no_hostdev_finding():
    """A domain on a device that did not change: nothing about it, whatever changed elsewhere."""
    nic = Device(name="pci_0000_05_00_0", type="pci", address="0000:05:00.0", vendor_id="0x8086",
                 product_id="0x1572", pci_class="0x020000", iommu_group=7,
                 assignments=(("router", True),), assigned_to="router", assigned_running=True)
    before = BootRecord.of(Inventory([_gpu(serial="A1"), nic]), BOOT_A)
    inv = Inventory([_gpu(serial="B2"), nic], HostFacts(boot_id=BOOT_B, state_read=True, previous_boot=before))
    found = inspector().judge(inv).findings
    assert [(f.code, f.severity, f.subject) for f in found if f.code in ("device_replaced", "hostdev_changed")] == [
        ("device_replaced", "warning", "pci_0000_01_00_0")]


def test_the_default_state_file_is_this_hosts_alone():
    """A state file records one host's boots: a tree from elsewhere (a capture, a fixture, another
    machine's mount) is compared with nothing unless a state file is given for it."""
    from passthrough_exporter.commands.cli import parse_command_line, state_path
    from passthrough_exporter.reading.state import DEFAULT_STATE_PATH

    def path(*argv: str) -> str | None:
        return state_path(parse_command_line(["devices", *argv]))

    assert path() == DEFAULT_STATE_PATH == "/var/lib/passthrough-exporter/state.json"
    assert path("--path.sysfs", "/srv/capture/sys") is None
    assert path("--path.procfs", "/host/proc") is None
    assert path("--path.sysfs", "/host/sys", "--state.path", "/var/lib/x/state.json") == "/var/lib/x/state.json"
    assert path("--no-state") is None and path("--no-state", "--state.path", "/tmp/s.json") is None
