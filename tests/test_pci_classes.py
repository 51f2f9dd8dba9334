"""PCI class names in verdicts: bridges by subclass (a host bridge is not a PCI bridge), and a warning
for an endpoint whose class is unknown (no class at all, or a base class the PCI spec does not define)."""

from __future__ import annotations

import json
import subprocess

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.model import Device, Inventory
from passthrough_exporter.plugins import pci
from tests.support import hosts
from tests.support.process import EXE

SETTINGS = Inspector().settings  # every plugin configured with its defaults


def verdict(pci_class: str | None, header_type: int | None = 0):
    """The PCI plugin's own verdict (the other plugins' reset and root-device notes left out)."""
    dev = Device("pci_0000_07_00_0", "pci", address="0000:07:00.0", pci_class=pci_class, header_type=header_type)
    return pci.passthrough_verdicts(inventory=Inventory([dev]), settings=SETTINGS)[dev.name]


@pytest.mark.parametrize("cls, name", [
    ("0x060000", "host bridge"),
    ("0x060100", "ISA bridge"),
    ("0x060400", "PCI bridge"),
    ("0x060401", "PCI bridge"),  # subtractive decode: same subclass, other programming interface
    ("0x060700", "CardBus bridge"),
    ("0x060900", "semi-transparent PCI-to-PCI bridge"),
    ("0x068000", "bridge"),  # "other bridge": the base class's name
    ("0x050000", "memory controller"),
    ("0x0b4000", "processor"),
])
def test_denied_classes_are_named_by_subclass(cls, name):
    v = verdict(cls)
    assert not v.eligible
    assert v.reasons == (f"{name} ({cls}) is host infrastructure, not an endpoint",)


def test_host_bridge_on_a_sysfs_host_says_host_bridge(tree):
    hosts.base(tree)  # 00:00.0, class 0x060000
    out = subprocess.run([EXE, "devices", "--json", "--cap", "pci", "--path.sysfs", str(tree.sys),
                          "--path.procfs", str(tree.proc)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (obj,) = json.loads(out.stdout)
    assert obj["reasons"] == ["host bridge (0x060000) is host infrastructure, not an endpoint"]


@pytest.mark.parametrize("cls", ["0x020000", "0x030000", "0x000000", "0xff0000", "0x400000", "0x130000"])
def test_endpoint_of_a_defined_class_gets_no_class_warning(cls):
    v = verdict(cls)
    assert v.eligible and v.warnings == ()


def test_endpoint_without_a_class_is_allowed_with_a_warning():
    v = verdict(None)
    assert v.eligible and v.reasons == ("PCI endpoint (unknown class)",)
    assert v.warnings == (
        "unknown class: the kernel reports none; check what the device is before passing it through",)


@pytest.mark.parametrize("cls", ["0x140000", "0x3f0000", "0x7a0000", "0xfe0000"])
def test_endpoint_of_an_undefined_base_class_is_allowed_with_a_warning(cls):
    v = verdict(cls)
    assert v.eligible and v.reasons == (f"PCI endpoint (class {cls})",)
    assert v.warnings == (f"unknown class {cls}: its base class is not defined by the PCI specification; "
                          "check what the device is before passing it through",)


def test_unknown_class_warning_reaches_the_device_object(tree):
    hosts.base(tree)
    tree.pci("0000:00:07.0", hosts.INTEL, 0x1234, 0x7A0000, group=3)
    out = subprocess.run([EXE, "devices", "--json", "--cap", "pci", "--path.sysfs", str(tree.sys),
                          "--path.procfs", str(tree.proc)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    obj = {o["name"]: o for o in json.loads(out.stdout)}["pci_0000_00_07_0"]
    assert obj["eligible"] is True
    assert obj["warnings"] == ["unknown class 0x7a0000: its base class is not defined by the PCI specification; "
                               "check what the device is before passing it through"]
