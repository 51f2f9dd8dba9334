"""Control characters in host text are written out, never sent: a VM named to rewrite the `check`
report on a terminal shows its escape sequences instead, in every text output."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from passthrough_exporter.rendering import hostpage
from passthrough_exporter.logs import LogfmtFormatter
from passthrough_exporter.rendering.metrics import render
from passthrough_exporter.textsafe import visible
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.hosts import NVIDIA
from tests.support.local import judge_tree
from tests.support.process import EXE
from tests.support.sysfs_builder import SysfsTree, char_number

# Moves to the start of the line, up one line, erases it, prints PASS, rings the bell.
HOSTILE = "x\r\x1b[1A\x1b[2KPASS\x07"
SHOWN = "x\\x0d\\x1b[1A\\x1b[2KPASS\\x07"
RAW = ("\x1b", "\r", "\x07", "\x9b")
GPU, AUDIO = "pci_0000_01_00_0", "pci_0000_01_00_1"


@pytest.mark.parametrize("text, shown", [
    ("plain name-01", "plain name-01"),
    ("prod db é 数据库", "prod db é 数据库"),  # printable text of any script stays as it is
    (HOSTILE, SHOWN),
    ("a\nb\tc\x00d\x7fe", "a\\x0ab\\x09c\\x00d\\x7fe"),
    ("csi\x9b2J", "csi\\x9b2J"),  # C1: a terminal takes \x9b for ESC [
    ("left\u202eright\u2028", "left\\u202eright\\u2028"),  # reorders or breaks the line on screen
    ("already \\x1b", "already \\x1b"),  # text that looks escaped is left alone
])
def test_visible(text, shown):
    assert visible(text) == shown


def hostile_host(tree) -> None:
    """A GPU and its audio function on vfio-pci in IOMMU group 4, each with its own VFIO cdev (the
    numbers of /dev/zero and /dev/null): QEMU process 31, named HOSTILE, holds the GPU, process 32
    ("other") the audio function. The group is split between two VMs: a critical `group_split`
    whose message names both. A USB stick's product string is HOSTILE too."""
    hosts.base(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, driver="vfio-pci", group=4, vfio_dev="vfio0",
             cdev=char_number("/dev/zero"), reset_method="flr")
    tree.pci("0000:01:00.1", NVIDIA, 0x228B, 0x040300, driver="vfio-pci", group=4, vfio_dev="vfio1",
             cdev=char_number("/dev/null"), reset_method="flr")
    tree.process(31, "qemu-kvm", ["qemu-kvm", "-name", f"guest={HOSTILE},debug-threads=on"], {5: "/dev/zero"})
    tree.process(32, "qemu-kvm", ["qemu-kvm", "-name", "guest=other"], {5: "/dev/null"})
    xhci = tree.pci("0000:00:14.0", hosts.INTEL, 0xA36D, 0x0C0330, driver="xhci_hcd", group=3)
    root = tree.usb_device("usb1", hosts.LINUX, 0x0002, parent=xhci, device_class=9)
    tree.usb_device("1-1", 0x0781, 0x5567, parent=root, devnum=2, product_name=HOSTILE)


def no_raw_controls(text: str) -> None:
    assert not any(c in text for c in RAW), repr(text)


def run(tree, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args, "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)],
                          capture_output=True, text=True, timeout=60)


def test_reading_keeps_the_name_as_it_is(tree):
    hostile_host(tree)
    snap = judge_tree(tree)
    assert snap.facts.in_use[GPU].vm == HOSTILE and snap.facts.in_use[AUDIO].vm == "other"
    assert snap.inventory.devices["usb_1_1"].product == HOSTILE
    # JSON escapes control characters itself: the name goes out exactly as read.
    assert device_object(snap, GPU)["held_by"]["vm"] == HOSTILE


def test_the_check_report_cannot_be_rewritten(tree):
    hostile_host(tree)
    out = run(tree, "check")
    assert out.returncode == 2, out.stderr  # the split group FAILs, and the report says so
    no_raw_controls(out.stdout)
    split = next(line for line in out.stdout.splitlines() if "group_split" in line)
    assert split.startswith("    critical group_split [group:4]: IOMMU group 4 is split between 2 VMs (")
    assert f"{SHOWN}: {GPU}" in split and f"other: {AUDIO}" in split
    assert any(line.endswith(": FAIL") for line in out.stdout.splitlines())
    checks = json.loads(run(tree, "check", "--json").stdout)["checks"]
    assert any(HOSTILE in f["message"] for c in checks for f in c["findings"])  # JSON: the name as read


def test_listings_metrics_and_page_show_the_escapes(tree):
    hostile_host(tree)
    plain = run(tree, "devices")
    assert plain.returncode == 0 and GPU in plain.stdout.split()
    no_raw_controls(plain.stdout)
    as_json = run(tree, "devices", "--json")
    no_raw_controls(as_json.stdout)  # written as \u001b ...
    by_name = {o["name"]: o for o in json.loads(as_json.stdout)}
    assert by_name[GPU]["held_by"]["vm"] == HOSTILE and by_name["usb_1_1"]["product"] == HOSTILE  # ... read back whole

    snap = judge_tree(tree)
    metrics = render(snap).decode()
    no_raw_controls(metrics)
    # Written out, then the exposition's own escaping doubles each backslash.
    shown = SHOWN.replace("\\", "\\\\")
    assert f'passthrough_device_in_use{{device="{GPU}",type="pci",vm="{shown}"}} 1.0' in metrics
    assert f'product="{shown}"' in metrics  # the USB stick's pool series
    page = hostpage.render(snap).decode()
    no_raw_controls(page)
    assert SHOWN in page


def test_log_lines_show_the_escapes(tmp_path):
    """A real log line carrying a path the operator named (the host's procfs lacks a mount table:
    the warning names it), and the formatter given a VM name."""
    tree = SysfsTree(tmp_path / f"host-{HOSTILE}")
    hostile_host(tree)
    out = run(tree, "devices")
    assert out.returncode == 0
    no_raw_controls(out.stderr)
    assert "msg=\"cannot read " in out.stderr and "host-x\\\\x0d\\\\x1b[1A" in out.stderr
    record = logging.LogRecord("passthrough_exporter.judging.live", logging.WARNING, __file__, 1,
                               "held by %s\nsecond line", (HOSTILE,), None)
    line = LogfmtFormatter().format(record)
    no_raw_controls(line)
    assert line.endswith(' msg="held by x\\\\x0d\\\\x1b[1A\\\\x1b[2KPASS\\\\x07\\nsecond line"')


def test_two_products_that_read_alike_are_one_pool_series(tree):
    """A USB stick named `Stick` + ESC and one named with the written-out text `Stick\\x1b` show the
    same label value: they are counted in one pool series, not two series with equal labels (which
    node_exporter's textfile collector refuses)."""
    from tests.support import hosts
    from tests.support.local import judge_tree

    from passthrough_exporter.rendering.metrics import render

    hosts.usb_tree(tree)
    hosts.nvme_lvm_root(tree)
    hub = tree.sys / "bus" / "usb" / "devices" / "1-1"
    for port, name in ((5, "Stick\x1b"), (6, "Stick\\x1b")):
        tree.usb_device(f"1-1.{port}", 0x0781, 0x5590, parent=hub.resolve(), busnum=1, devnum=port, product_name=name)
    text = render(judge_tree(tree)).decode()
    pools = [line for line in text.splitlines() if line.startswith("passthrough_pool_devices") and "0x5590" in line]
    assert pools == ['passthrough_pool_devices{numa_node="",product="Stick\\\\x1b",product_id="0x5590",'
                     'state="available",type="usb_device",vendor_id="0x0781"} 2.0']
