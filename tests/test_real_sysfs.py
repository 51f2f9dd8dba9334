"""Smoke test on this machine's own /sys, whatever it holds."""

from __future__ import annotations

import os
import subprocess

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from tests.support.process import EXE

PCI = "/sys/bus/pci/devices"


@pytest.fixture(scope="module")
def snap():
    if not os.path.isdir("/sys/bus"):
        pytest.skip("no sysfs mounted")
    return Inspector().judge(SysfsSource("/sys", "/proc").read())


def test_every_pci_function_is_listed_with_name_vendor_and_class(snap):
    entries = sorted(os.listdir(PCI)) if os.path.isdir(PCI) else []
    for addr in entries:
        name = "pci_" + addr.replace(":", "_").replace(".", "_")
        dev = snap.inventory.devices[name]
        with open(os.path.join(PCI, addr, "vendor")) as f:
            assert int(dev.vendor_id, 16) == int(f.read(), 16)
        with open(os.path.join(PCI, addr, "class")) as f:
            assert int(dev.pci_class, 16) == int(f.read(), 16)
        assert dev.type == "pci" and dev.address == addr
    assert len([d for d in snap.inventory if d.type == "pci"]) == len(entries)


def test_real_host_reads_cleanly(snap):
    assert sum(snap.inventory.errors.values()) == 0, dict(snap.inventory.errors)
    groups = "/sys/kernel/iommu_groups"
    assert snap.inventory.host.iommu_groups_present == bool(os.path.isdir(groups) and os.listdir(groups))


def test_passthrough_listing_on_this_host(snap):
    out = subprocess.run([EXE, "devices", "--passthrough"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.splitlines()
    assert listed == sorted(listed)
    expected = [d.name for d in snap.inventory if snap.verdicts[d.name].eligible]
    assert listed == expected
    for name in listed:
        dev = snap.inventory.devices[name]
        assert dev.type in ("pci", "usb_device", "scsi")
        if dev.type == "pci":  # bridges and host bridges never show up
            assert not dev.pci_class.startswith("0x06")
