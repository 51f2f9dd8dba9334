"""Smoke test on this machine's own /sys, whatever it holds."""

from __future__ import annotations

import glob
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
        # Kubernetes' rule for resource.kubernetes.io/pcieRoot: the first directory under
        # /sys/devices of the function's canonical path (x86 root buses sit right there).
        top = os.path.realpath(os.path.join(PCI, addr)).removeprefix("/sys/devices/").split("/")[0]
        assert dev.pcie_root == top and top.startswith("pci"), addr
    assert len([d for d in snap.inventory if d.type == "pci"]) == len(entries)


def test_real_host_reads_cleanly(snap):
    assert sum(snap.inventory.errors.values()) == 0, dict(snap.inventory.errors)
    groups = "/sys/kernel/iommu_groups"
    assert snap.inventory.host.iommu_groups_present == bool(os.path.isdir(groups) and os.listdir(groups))


def test_vfio_backends_are_this_hosts(snap):
    """iommufd as /sys/class/misc says; cdev told only when VFIO drives a device, never guessed."""
    misc = "/sys/class/misc"
    expected = os.path.exists(f"{misc}/iommu") if os.path.isdir(misc) else None
    assert snap.inventory.host.iommufd is expected
    vfio = [d for d in snap.inventory if d.type == "pci" and (
        d.vfio_dev is not None or (d.driver or "").startswith("vfio") or (d.driver or "").endswith("vfio_pci"))]
    # A cdev is a `dev` in the function's vfio-dev/vfio<N>/; told only from a whole sysfs (class/misc there).
    has_cdev = [any(os.path.exists(f"{n}/dev") for n in glob.glob(f"/sys/bus/pci/devices/{d.address}/vfio-dev/vfio[0-9]*"))
                for d in vfio]
    assert snap.facts.backends["cdev"] == (all(has_cdev) if vfio and expected is not None else None)


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


def test_serials_are_the_hosts_own(snap):
    """Each USB device's and NVMe controller's `serial` as the host gives it; a readable `vpd` is
    parsed without a counted error (test_real_host_reads_cleanly), an unreadable one gives none."""
    devices = snap.inventory.devices
    for dev in snap.inventory:
        if dev.type == "usb_device":
            path = f"/sys/bus/usb/devices/{dev.address}/serial"
            if os.path.exists(path):
                with open(path, "rb") as f:
                    assert dev.serial == (f.read().decode(errors="backslashreplace").strip() or None), dev.name
            else:
                assert dev.serial is None, dev.name
    for addr in sorted(os.listdir(PCI)) if os.path.isdir(PCI) else []:
        dev = devices["pci_" + addr.replace(":", "_").replace(".", "_")]
        nvme = os.path.join(PCI, addr, "nvme")
        ctrls = sorted(n for n in os.listdir(nvme) if n.startswith("nvme")) if os.path.isdir(nvme) else []
        if ctrls and os.path.exists(os.path.join(nvme, ctrls[0], "serial")):
            with open(os.path.join(nvme, ctrls[0], "serial")) as f:
                assert dev.serial == (f.read().strip() or None), dev.name
        elif not os.access(os.path.join(PCI, addr, "vpd"), os.R_OK):
            assert dev.serial is None, dev.name
