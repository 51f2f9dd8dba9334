"""The inventory's guarantees: unknown parents, self-parents, cycles and duplicates never break the tree."""

from __future__ import annotations

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.model import Device, Finding, Inventory


def pci(name, parent="computer", group=None, **kw):
    return Device(name=name, type="pci", parent=parent, iommu_group=group, pci_class="0x020000", **kw)


def test_missing_parent_keeps_the_device_and_skips_the_link(caplog):
    inv = Inventory([Device(name="scsi_target0_0_0", type="scsi_target", parent="scsi_host0")])
    assert "scsi_target0_0_0" in inv
    assert inv.devices["scsi_target0_0_0"].parent == "scsi_host0"  # what the source said stays visible
    assert inv.children.get("computer", ()) == ()
    assert inv.errors == {"missing_parent": 1}
    assert "parent scsi_host0 of device scsi_target0_0_0 does not exist" in caplog.text


def test_self_parent_and_cycles_terminate():
    inv = Inventory([
        pci("pci_a", parent="pci_a"),
        pci("pci_b", parent="pci_c"),
        pci("pci_c", parent="pci_d"),
        pci("pci_d", parent="pci_b"),
        pci("pci_e", parent="pci_c"),
    ])
    assert inv.errors == {"parent_cycle": 2}
    # Exactly one link of the b -> c -> d -> b ring is cut, so every walk ends.
    for name in ("pci_a", "pci_b", "pci_c", "pci_d", "pci_e"):
        walked = list(inv.descendants(name))
        assert len(walked) == len(set(walked)) and name not in walked
    # The walk starts at pci_b and finds the ring back at it: pci_b's own link (to pci_c) is the one cut,
    # leaving pci_b -> pci_d -> pci_c -> pci_e.
    assert inv.children["pci_b"] == ("pci_d",) and inv.children["pci_d"] == ("pci_c",)
    snap = Inspector().judge(inv)
    assert snap.affected["pci_b"] == ("pci_c", "pci_d", "pci_e")
    assert snap.affected["pci_d"] == ("pci_c", "pci_e")


def test_duplicates_keep_the_first():
    inv = Inventory([pci("pci_x", driver="first"), pci("pci_x", driver="second")])
    assert inv.devices["pci_x"].driver == "first"
    assert inv.errors == {"duplicate": 1}


def test_groups_hold_pci_functions_only():
    inv = Inventory([pci("pci_a", group=3), pci("pci_b", group=3),
                     Device(name="mdev_x", type="mdev", iommu_group=3)])
    assert inv.groups == {3: ("pci_a", "pci_b")}
    assert inv.group_peers("pci_a") == ("pci_b",)


def test_finding_rejects_unknown_severity():
    with pytest.raises(ValueError):
        Finding("x", "fatal", "host", "nope")


def test_finding_fields_must_be_text():
    """They become label values; a number would only fail later, while rendering /metrics."""
    with pytest.raises(TypeError, match="subject"):
        Finding("x", "info", 12, "group twelve")


def test_virtual_functions_are_what_either_link_says_and_is_present():
    """The PF lists pci_vf1 (present) and pci_vf2 (not read); pci_vf3 names the PF through its physfn
    alone. The PF's VFs: the listed present one first, then the one pointing at it; pci_vf2 is not one."""
    inv = Inventory([pci("pci_pf", virtfns=("pci_vf1", "pci_vf2")), pci("pci_vf1", physfn="pci_pf"),
                     pci("pci_vf3", physfn="pci_pf"), pci("pci_other", physfn="pci_elsewhere")])
    assert inv.virtual_functions("pci_pf") == ("pci_vf1", "pci_vf3")
    assert inv.virtual_functions("pci_elsewhere") == ()  # not present: no VFs, even if some point at it
    assert inv.virtual_functions("pci_vf1") == ()
