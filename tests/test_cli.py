"""The `devices` command through the installed console script: output, seed-parity errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import hosts
from tests.support.process import EXE


def run(tree, *args):
    return subprocess.run(
        [EXE, "devices", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc), *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def desktop(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    hosts.usb_tree(tree)
    return tree


def test_plain_listing_is_sorted_one_name_per_line(desktop):
    out = run(desktop)
    assert out.returncode == 0, out.stderr
    names = out.stdout.splitlines()
    assert names == sorted(names)
    assert names[0] == "computer" and "pci_0000_01_00_0" in names and "usb_1_1_2_1_0" in names


def test_passthrough_and_cap(desktop):
    out = run(desktop, "--passthrough")
    assert out.stdout.splitlines() == ["pci_0000_00_14_0", "pci_0000_01_00_0", "pci_0000_01_00_1",
                                       "scsi_6_0_0_0", "usb_1_1_2", "usb_1_1_4"]
    out = run(desktop, "--cap", "usb_device", "--passthrough")
    assert out.stdout.splitlines() == ["usb_1_1_2", "usb_1_1_4"]
    out = run(desktop, "--cap", "scsi_host")
    assert out.stdout.splitlines() == ["scsi_host6"]


def test_affected_by(desktop):
    out = run(desktop, "--affected-by", "pci_0000_01_00_0")
    assert (out.returncode, out.stdout) == (0, "pci_0000_01_00_1\n")


@pytest.mark.parametrize("extra", [["--cap", "pci"], ["--passthrough"]])
def test_affected_by_conflicts_with_other_filters(desktop, extra):
    out = run(desktop, "--affected-by", "pci_0000_01_00_0", *extra)
    assert out.returncode == 2
    assert out.stderr.strip() == "Conflicting flag filters specified."
    assert out.stdout == ""


def test_unknown_device(desktop):
    out = run(desktop, "--affected-by", "pci_0000_09_00_0")
    assert out.returncode == 1
    # The line before it warns that the fixture has no mount table (the root device is unknown).
    assert out.stderr.splitlines()[-1] == "Node device 'pci_0000_09_00_0' not found"


def test_json_objects(desktop):
    out = run(desktop, "--json", "--cap", "pci")
    objs = json.loads(out.stdout)
    assert [o["name"] for o in objs] == ["pci_0000_00_00_0", "pci_0000_00_01_0", "pci_0000_00_14_0",
                                          "pci_0000_01_00_0", "pci_0000_01_00_1"]
    gpu = objs[3]
    for key in ("name", "type", "parent", "vendor_id", "product_id", "vendor", "product", "class", "driver",
                "iommu_group", "eligible", "reasons", "warnings", "assigned_to"):
        assert key in gpu
    assert gpu["iommu_group"] == 2 and gpu["eligible"] is True and gpu["assigned_to"] is None
    assert gpu["affected_count"] == 1 and "affected" not in gpu  # lists count; the list is per device
    assert gpu["warnings"] == ["boot VGA device: the host console and firmware use it",
                               "no function-level reset (only bus): resets may fail or take the other "
                               "functions of the device with them"]


def test_denied_classes_are_configurable(desktop):
    out = run(desktop, "--passthrough", "--cap", "pci", "--pci.denied-classes", "0x06,0x03")
    assert out.stdout.splitlines() == ["pci_0000_00_14_0", "pci_0000_01_00_1"]
    bad = run(desktop, "--pci.denied-classes", "zz")
    assert bad.returncode == 1 and "not a hex class prefix" in bad.stderr


def test_missing_sysfs_root_is_a_clear_error(tmp_path):
    out = subprocess.run([EXE, "devices", "--path.sysfs", str(tmp_path / "nope")], capture_output=True, text=True)
    assert out.returncode == 1
    assert "is not a sysfs: it does not exist" in out.stderr and "Traceback" not in out.stderr


def test_version_and_module_entry():
    out = subprocess.run([sys.executable, "-m", "passthrough_exporter", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("passthrough-exporter ")


def test_libvirt_source_without_libvirt_python_is_one_line():
    """As in the sysfs-only container image: a clear error, not a traceback."""
    code = ("import sys; sys.modules['libvirt'] = None; from passthrough_exporter.commands.cli import main; "
            "sys.exit(main(['devices', '--source', 'libvirt']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "--source libvirt needs libvirt-python" in out.stderr


def test_devices_starts_without_what_only_other_commands_need(desktop):
    # prometheus-client, the HTTP server's modules, YAML, bcrypt and lxml cost start-up time `devices` never uses.
    code = ("import sys; from passthrough_exporter.commands.cli import main; "
            f"rc = main(['devices', '--json', '--path.sysfs', {str(desktop.sys)!r}, '--path.procfs', {str(desktop.proc)!r}]); "
            "sys.stdout.flush(); "
            "print(sorted(m for m in ('prometheus_client', 'lxml', 'yaml', 'bcrypt', 'http.server') "
            "if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "[]"
    assert "pci_0000_01_00_0" in out.stdout


def test_version_is_read_when_asked():
    out = subprocess.run([EXE, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("passthrough-exporter ") and out.stderr == ""
