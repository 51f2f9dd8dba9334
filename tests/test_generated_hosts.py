"""The synthetic hosts the benchmarks run on (tests/support/synthetic.py) read back as the generator built them."""

from __future__ import annotations

from collections import Counter

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from tests.support.synthetic import generate


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen") / "host"
    tree, manifest = generate(root, 600)
    snap = Inspector().judge(SysfsSource(str(tree.sys), str(tree.proc)).read())
    return manifest, snap


def pci(addr: str) -> str:
    return "pci_" + addr.replace(":", "_").replace(".", "_")


def test_counts_types_and_groups(host):
    manifest, snap = host
    inv = snap.inventory
    assert manifest.devices == 600 and len(inv) == 601  # + computer
    assert not inv.errors
    types = Counter(d.type for d in inv)
    del types["system"]
    assert dict(types) == manifest.by_type
    assert len(inv.groups) == manifest.groups
    # Every block kind is present at this size.
    assert {b.split(":")[0] for b in manifest.blocks} == {"scsi", "sriov", "switch", "chipset", "usb"}


def test_sriov_links_and_vf_groups(host):
    manifest, snap = host
    inv = snap.inventory
    assert manifest.pfs
    for pf, vfs in manifest.pfs.items():
        assert 64 <= len(vfs) <= 256
        assert inv.devices[pci(pf)].virtfns == tuple(pci(v) for v in vfs)  # in virtfnN order
        groups = {inv.devices[pci(v)].iommu_group for v in vfs}
        assert len(groups) == len(vfs) and inv.devices[pci(pf)].iommu_group not in groups
        for v in vfs:
            assert inv.devices[pci(v)].physfn == pci(pf)
            assert inv.groups[inv.devices[pci(v)].iommu_group] == (pci(v),)  # alone in its group
            assert snap.affected[pci(v)] == ()  # a VF takes nothing along
        # The PF takes its VFs along, nothing else (own group, no children).
        assert snap.affected[pci(pf)] == tuple(sorted(pci(v) for v in vfs))


def test_switch_affected_sets(host):
    manifest, snap = host
    sw = manifest.switches[0]
    # A downstream port (own group, ACS) takes its NVMe drive; the drive takes nothing.
    for down, ep in zip(sw["down"], sw["ep"]):
        assert snap.affected[pci(down)] == (pci(ep),)
        assert snap.affected[pci(ep)] == ()
        assert snap.verdicts[pci(ep)].eligible and not snap.verdicts[pci(down)].eligible
    # The root port takes the whole switch: upstream, 8 downstream ports, 8 drives.
    below = {sw["up"], *sw["down"], *sw["ep"]}
    assert snap.affected[pci(sw["root"])] == tuple(sorted(pci(a) for a in below))


def test_chipset_group_takes_usb_and_disks(host):
    manifest, snap = host
    inv = snap.inventory
    members = manifest.chipset_groups[0]
    assert len(members) == 14
    group = inv.devices[pci(members[0])].iommu_group
    assert inv.groups[group] == tuple(sorted(pci(m) for m in members))
    # Any member takes the 13 others plus everything below the group: 23 USB/SCSI devices behind
    # the xHCI (8 USB devices, 12 interfaces, the stick's host, target and LUN) and 6 behind AHCI
    # (two hosts, two targets, two LUNs).
    affected = snap.affected[pci(members[5])]
    assert len(affected) == 13 + 23 + 6
    kinds = Counter(inv.devices[n].type for n in affected)
    assert kinds == {"pci": 13, "usb_device": 8, "usb": 12, "scsi_host": 3, "scsi_target": 3, "scsi": 3}


def test_usb_tree_shape(host):
    _, snap = host
    inv = snap.inventory
    assert inv.devices["usb_1_1_3_1"].parent == "usb_1_1_3"  # webcam behind the nested hub
    assert snap.affected["usb_1_1_3_1"] == tuple(f"usb_1_1_3_1_1_{i}" for i in range(4))
    assert not snap.verdicts["usb_1_1_3"].eligible  # a hub
    assert snap.verdicts["usb_1_1_3_1"].eligible
    stick_lun = [n for n in inv.devices if n.startswith("scsi_") and inv.devices[n].type == "scsi"
                 and "usb_2_1_1_0" in _ancestors(inv, n)]
    assert len(stick_lun) == 1 and snap.verdicts[stick_lun[0]].eligible


def _ancestors(inv, name):
    out = []
    while (parent := inv.devices[name].parent) is not None:
        out.append(parent)
        name = parent
    return out
