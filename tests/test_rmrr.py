"""Firmware-required 1:1 mappings (RMRRs): a `direct` line in an IOMMU group's `reserved_regions`
makes the group's PCI functions not eligible and `group_rmrr` names the group; `direct-relaxable`
(USB, graphics) does not count; a group without the file is unknown, never a claim.

Answers worked out by hand from DESIGN.md (Verdicts, RMRR; findings table, `group_rmrr`) and the
fixture host `hosts.rmrr_server`.
"""

from __future__ import annotations

import pytest

from passthrough_exporter.reading.sysfs.host import region_types
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.hosts import HT_REGION, MSI_REGION, NIC_RMRR
from tests.support.local import judge_tree

RMRR = "firmware requires a 1:1 mapping (RMRR)"
NIC = ("pci_0000_02_00_0", "pci_0000_02_00_1")
RELAXABLE = ("pci_0000_00_02_0", "pci_0000_00_14_0")  # iGPU (group 1), xHCI (group 3)


def rmrr_findings(snap):
    return [(f.severity, f.subject, f.message) for f in snap.findings if f.code == "group_rmrr"]


def test_a_direct_region_denies_the_group_and_relaxable_ones_do_not(tree):
    hosts.rmrr_server(tree)
    snap = judge_tree(tree)
    assert snap.inventory.host.rmrr_groups == frozenset({9})
    assert dict(snap.inventory.errors) == {}
    for name in NIC:  # both functions of group 9: not eligible, with DESIGN's reason
        verdict = snap.verdicts[name]
        assert not verdict.eligible and RMRR in verdict.reasons, name
        assert snap.states[name] == "ineligible"
        assert RMRR in device_object(snap, name)["reasons"]
    for name in RELAXABLE:  # `direct-relaxable` only: eligible, nothing said about RMRRs
        verdict = snap.verdicts[name]
        assert verdict.eligible and RMRR not in verdict.reasons, name
        assert snap.states[name] == "available", name
    assert snap.states["usb_1_1_4"] == "available"  # the stick below the xHCI: untouched
    assert rmrr_findings(snap) == [(
        "warning", "group:9",
        "group 9 (pci_0000_02_00_0, pci_0000_02_00_1) has a 1:1 mapping the firmware requires (an RMRR, a "
        "`direct` reserved region): the kernel refuses to attach its devices to VFIO")]
    finding = next(f for f in snap.findings if f.code == "group_rmrr")
    assert finding.fix.startswith("the kernel will refuse VFIO for its devices: move the card to another slot")


def test_malformed_lines_are_counted_once_per_file_and_the_rest_read(tree):
    """Group 9: a line of garbage and a region whose end is below its start, then the `direct` one:
    one bad attribute, and group 9 still has its RMRR. Group 1: a line with two fields only (bad
    attribute number two), and its `direct-relaxable` line still denies nothing."""
    hosts.rmrr_server(tree)
    tree.reserved_regions(9, "no region here", "0x0000000000002000 0x0000000000001000 direct",
                          NIC_RMRR, MSI_REGION)
    tree.reserved_regions(1, "0x00000000fee00000 msi", "0x000000003c000000 0x000000003fffffff direct-relaxable")
    snap = judge_tree(tree)
    assert dict(snap.inventory.errors) == {"bad_attribute": 2}
    assert snap.inventory.host.rmrr_groups == frozenset({9})
    assert [s for _, s, _ in rmrr_findings(snap)] == ["group:9"]
    assert not snap.verdicts["pci_0000_02_00_0"].eligible and snap.verdicts["pci_0000_00_02_0"].eligible


def test_a_bad_line_alone_claims_nothing(tree):
    """Group 9's only `direct`-looking line is malformed (the end is not hex): counted, and no RMRR
    is made up from it, so the NIC stays eligible."""
    hosts.rmrr_server(tree)
    tree.reserved_regions(9, "0x0000000079e1a000 0x0000000079e1czzz direct", MSI_REGION)
    snap = judge_tree(tree)
    assert dict(snap.inventory.errors) == {"bad_attribute": 1}
    assert snap.inventory.host.rmrr_groups == frozenset()
    assert snap.verdicts["pci_0000_02_00_0"].eligible and not rmrr_findings(snap)


def test_a_group_without_the_file_is_unknown_not_denied(tree):
    """A kernel before 4.11 has no `reserved_regions`: the NIC's group 9 without it is no claim
    either way: eligible, no finding, no error."""
    hosts.rmrr_server(tree)
    (tree.sys / "kernel" / "iommu_groups" / "9" / "reserved_regions").unlink()
    snap = judge_tree(tree)
    assert snap.inventory.host.rmrr_groups == frozenset() and dict(snap.inventory.errors) == {}
    for name in NIC:
        assert snap.verdicts[name].eligible and snap.states[name] == "available", name
    assert not rmrr_findings(snap)


@pytest.mark.parametrize("text, types, bad", [
    ("", set(), 0),
    (f"{MSI_REGION}\n", {"msi"}, 0),
    (f"{NIC_RMRR}\n{MSI_REGION}\n{HT_REGION}\n", {"direct", "msi", "reserved"}, 0),
    ("0x000000003c000000 0x000000003fffffff direct-relaxable\n", {"direct-relaxable"}, 0),
    ("0x0000000000001000 0x0000000000001000 direct\n", {"direct"}, 0),  # a one-byte region: start == end is fine
    ("fee00000 feefffff msi\n", set(), 1),  # the kernel writes 0x
    ("0x2000 0x1000 direct\n0x1000 direct\n\n" + MSI_REGION, {"msi"}, 2),
])
def test_region_types(text, types, bad):
    assert region_types(text) == (types, bad)
