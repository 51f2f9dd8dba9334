"""The built-in safety plugin on fixture hosts: each finding, its absence, and the verdicts it changes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from passthrough_exporter.judging.facts import Facts, group_layout_hash
from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.plugins.safety import CODES
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from tests.support import hosts
from tests.support.hosts import INTEL, NVIDIA
from tests.support.local import judge_tree

FINDINGS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "findings.md"


def found(snap) -> dict[str, list[tuple[str, str, str]]]:
    out: dict[str, list[tuple[str, str, str]]] = {}
    for f in snap.findings:
        out.setdefault(f.code, []).append((f.severity, f.subject, f.message))
    return out


def test_clean_host_has_no_findings(tree):
    hosts.clean_host(tree)
    snap = judge_tree(tree)
    # Only where `/` is: the NVMe disk alone in group 12, which the host drives (so VFIO would refuse it);
    # and, read without a state file, that changes since the previous boot are not tracked.
    assert [(f.code, f.severity, f.subject) for f in snap.findings] == [
        ("changes_not_tracked", "info", "host"), ("group_not_viable", "info", "group:12"),
        ("group_root_device", "info", "group:12"), ("root_device", "info", "pci_0000_3d_00_0")]
    assert snap.verdicts["pci_0000_00_19_0"].eligible and not snap.verdicts["pci_0000_00_19_0"].warnings


def test_iommu_off_in_firmware(tree):
    hosts.virtio_root(tree)
    f = found(judge_tree(tree))
    [(sev, subject, msg)] = f["iommu_off_firmware"]
    assert (sev, subject) == ("warning", "host")
    assert "3 PCI devices" in msg and "no IOMMU units" in msg and "firmware" in msg
    assert "iommu_off_kernel" not in f


def test_iommu_off_in_kernel_when_the_firmware_exposes_units(tree):
    hosts.virtio_root(tree)
    tree.iommu_unit("dmar0")
    f = found(judge_tree(tree))
    [(sev, subject, msg)] = f["iommu_off_kernel"]
    assert (sev, subject) == ("warning", "host") and "dmar0" in msg and "kernel" in msg
    assert "iommu_off_firmware" not in f


def test_iommu_switched_off_on_the_command_line_is_the_kernel(tree):
    hosts.virtio_root(tree)
    tree.cmdline("root=/dev/vda intel_iommu=off")
    f = found(judge_tree(tree))
    [(sev, subject, msg)] = f["iommu_off_kernel"]
    assert (sev, subject) == ("warning", "host") and "intel_iommu=off" in msg
    assert "iommu_off_firmware" not in f


def test_no_iommu_finding_without_pci_devices_or_with_groups(tree):
    assert not {"iommu_off_kernel", "iommu_off_firmware"} & set(found(judge_tree(tree)))
    hosts.virtio_root(tree)
    tree.pci("0000:00:05.0", INTEL, 0x1234, 0x020000, group=3)
    assert not {"iommu_off_kernel", "iommu_off_firmware"} & set(found(judge_tree(tree)))


@pytest.mark.parametrize("code, setup, fact", [
    ("acs_override", lambda t: t.cmdline("root=/dev/sda1 pcie_acs_override=downstream,multifunction"), "pcie_acs_override"),
    ("unsafe_interrupts", lambda t: t.module_param("vfio_iommu_type1", "allow_unsafe_interrupts", "Y"), "allow_unsafe_interrupts=Y"),
    ("unsafe_noiommu", lambda t: t.module_param("vfio", "enable_unsafe_noiommu_mode", "Y"), "enable_unsafe_noiommu_mode=Y"),
])
def test_weakened_isolation_is_critical(tree, code, setup, fact):
    hosts.clean_host(tree)
    setup(tree)
    f = found(judge_tree(tree))
    [(sev, subject, msg)] = f[code]
    assert (sev, subject) == ("critical", "host") and fact in msg
    assert set(f) & {"acs_override", "unsafe_interrupts", "unsafe_noiommu"} == {code}


def test_weakened_settings_off_give_no_findings(tree):
    hosts.clean_host(tree)
    tree.module_param("vfio_iommu_type1", "allow_unsafe_interrupts", "N")
    tree.module_param("vfio", "enable_unsafe_noiommu_mode", "N")
    tree.cmdline("root=/dev/sda1 intel_iommu=on iommu=pt -- pcie_acs_override=downstream")  # after --: init's
    assert set(found(judge_tree(tree))) == {"changes_not_tracked", "group_not_viable", "group_root_device",
                                            "root_device"}  # info only, as on the clean host


def test_group_mixing_vfio_and_host_drivers_is_critical(tree):
    hosts.base(tree)
    tree.pci("0000:00:01.0", INTEL, 0x1901, 0x060400, driver="pcieport", group=1, reset_method=None)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, parent="0000:00:01.0", driver="vfio-pci", group=2)
    tree.pci("0000:01:00.1", NVIDIA, 0x228B, 0x040300, parent="0000:00:01.0", driver="snd_hda_intel", group=2)
    f = found(judge_tree(tree))
    [(sev, subject, msg)] = f["group_mixed"]
    assert (sev, subject) == ("critical", "group:2")
    assert "pci_0000_01_00_0 on vfio" in msg and "pci_0000_01_00_1" in msg and "vfio-pci" in msg
    [(sev, subject, msg)] = f["group_not_viable"]
    assert (sev, subject) == ("info", "group:2") and "pci_0000_01_00_1 (snd_hda_intel)" in msg


def test_group_fully_on_vfio_is_viable_and_not_mixed(tree):
    hosts.base(tree)
    tree.pci("0000:00:01.0", INTEL, 0x1901, 0x060400, driver="pcieport", group=2, reset_method=None)  # bridge: exempt
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, parent="0000:00:01.0", driver="vfio-pci", group=2)
    tree.pci("0000:01:00.1", NVIDIA, 0x228B, 0x040300, parent="0000:00:01.0", driver="pci-stub", group=2)
    f = found(judge_tree(tree))
    assert "group_mixed" not in f and "group_not_viable" not in f


def test_multi_device_groups_name_what_comes_along(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    hosts.chipset_switch(tree)
    f = found(judge_tree(tree))
    by_subject = {s: (sev, m) for sev, s, m in f["group_multi_device"]}
    assert set(by_subject) == {"group:2", "group:5"}  # groups 0 and 1 hold one function each
    sev, msg = by_subject["group:2"]
    assert sev == "info" and "2 endpoints: pci_0000_01_00_0, pci_0000_01_00_1" in msg
    sev, msg = by_subject["group:5"]
    assert "4 endpoints: pci_0000_04_00_0, pci_0000_05_00_0, pci_0000_06_00_0, pci_0000_06_00_1" in msg
    assert "bridges pci_0000_00_1c_0" in msg
    # Host drivers hold every endpoint of both: not viable (info), never mixed.
    assert {s for _, s, _ in f["group_not_viable"]} == {"group:2", "group:5"}
    assert "group_mixed" not in f


def test_reset_warnings_on_eligible_devices_only(tree):
    hosts.base(tree)  # host bridge without any reset: not eligible, so no finding
    tree.pci("0000:00:02.0", INTEL, 0x3E92, 0x030000, driver="i915", group=1, reset_method="bus pm")
    tree.pci("0000:00:03.0", INTEL, 0x1234, 0x020000, driver="e1000e", group=2, reset_method=None)
    tree.pci("0000:00:04.0", INTEL, 0x1235, 0x020000, driver="igb", group=3, reset_method="flr")
    snap = judge_tree(tree)
    f = found(snap)
    [(sev, subject, msg)] = f["no_flr"]
    assert (sev, subject) == ("warning", "pci_0000_00_02_0") and "only bus, pm" in msg
    [(sev, subject, msg)] = f["no_reset"]
    assert (sev, subject) == ("warning", "pci_0000_00_03_0") and "no reset method" in msg
    # The verdicts carry the same warning, eligibility unchanged.
    assert snap.verdicts["pci_0000_00_02_0"].eligible and msg != snap.verdicts["pci_0000_00_02_0"].warnings[0]
    assert "no function-level reset" in snap.verdicts["pci_0000_00_02_0"].warnings[0]
    assert snap.verdicts["pci_0000_00_03_0"].warnings == (msg,)
    assert not snap.verdicts["pci_0000_00_04_0"].warnings
    assert not snap.verdicts["pci_0000_00_00_0"].warnings
    assert snap.verdicts["pci_0000_00_02_0"].reasons == ("PCI endpoint (display controller)",)


def test_root_disk_controller_is_not_eligible(tree):
    hosts.virtio_root(tree)
    snap = judge_tree(tree)
    v = snap.verdicts["pci_0000_00_02_0"]
    assert not v.eligible and "holds the root filesystem (vda)" in v.reasons[0]
    assert snap.verdicts["pci_0000_00_03_0"].eligible
    f = found(snap)
    [(sev, subject, msg)] = f["root_device"]
    assert (sev, subject) == ("info", "pci_0000_00_02_0") and "vda" in msg and "not eligible" in msg
    assert "group_root_device" not in f  # no IOMMU groups here
    assert snap.affected["pci_0000_00_02_0"] == ()


def test_root_device_group_is_flagged(tree):
    hosts.virtio_root(tree, groups=True)
    f = found(judge_tree(tree))
    assert f["group_root_device"] == [("info", "group:1", "group 1 holds pci_0000_00_02_0 (the root filesystem)")]


def test_devices_sharing_the_root_group_are_denied_and_the_group_warned(tree):
    hosts.nvme_lvm_root(tree)
    tree.pci("0000:3d:00.1", INTEL, 0x1533, 0x020000, parent="0000:00:1d.0", driver="igb", group=12)
    snap = judge_tree(tree)
    v = snap.verdicts["pci_0000_3d_00_1"]
    assert not v.eligible
    assert v.reasons == ("shares IOMMU group 12 with pci_0000_3d_00_0, which holds the root filesystem",)
    f = found(snap)
    [(sev, subject, msg)] = f["group_root_device"]
    assert (sev, subject) == ("warning", "group:12")
    assert "holds pci_0000_3d_00_0 (the root filesystem); passing pci_0000_3d_00_1 would take it along" in msg
    assert f["root_device"][0][1] == "pci_0000_3d_00_0" and "nvme0n1p3" in f["root_device"][0][2]


def test_root_on_a_sata_lun_denies_the_lun_but_not_its_neighbour(tree):
    hosts.sata_disks(tree)
    lun = tree.pci_path("0000:00:17.0") / "ata1" / "host0" / "target0:0:0" / "0:0:0:0"
    tree.partition(tree.block("sda", parent=lun, dev="8:0"), "sda1", dev="8:1")
    tree.root_mount("8:1", "/dev/sda1")
    snap = judge_tree(tree)
    assert not snap.verdicts["scsi_0_0_0_0"].eligible
    assert "root filesystem (sda1)" in snap.verdicts["scsi_0_0_0_0"].reasons[0]
    assert not snap.verdicts["pci_0000_00_17_0"].eligible
    assert snap.verdicts["scsi_0_0_0_1"].eligible  # the DVD drive beside it
    assert [s for _, s, _ in found(snap)["root_device"]] == ["pci_0000_00_17_0"]


def test_root_not_traced_or_no_mountinfo_warn_and_keep_storage_back(tree):
    """Worked out by hand: IOMMU on with remapping; virtio-blk 00:02.0 (class 0x010000, group 1) and the
    virtio NIC 00:03.0 (group 2). Whether `/` is on NFS or the mount table is gone, nothing says the
    disk controller does not hold it: a warning, and the controller is blocked while the NIC is free."""
    hosts.virtio_root(tree, groups=True)
    tree.root_mount("0:31", "server:/export", fstype="nfs4")
    snap = judge_tree(tree)
    [(severity, subject, message)] = found(snap)["root_device_unknown"]
    assert (severity, subject) == ("warning", "host") and "not on a block device traced" in message
    assert "root_device" not in found(snap)
    assert snap.states["pci_0000_00_02_0"] == "blocked" and snap.states["pci_0000_00_03_0"] == "available"
    assert "root filesystem's device is unknown" in snap.blocked_by["pci_0000_00_02_0"]
    (tree.proc / "self" / "mountinfo").unlink()
    snap = judge_tree(tree)
    [(severity, subject, message)] = found(snap)["root_device_unknown"]
    assert (severity, subject) == ("warning", "host") and "cannot be read" in message
    assert snap.states["pci_0000_00_02_0"] == "blocked" and snap.states["pci_0000_00_03_0"] == "available"


def test_boot_vga_device_and_its_group(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    snap = judge_tree(tree)
    f = found(snap)
    [(sev, subject, msg)] = f["boot_vga"]
    assert (sev, subject) == ("warning", "pci_0000_01_00_0") and "boot VGA" in msg
    [(sev, subject, msg)] = f["group_boot_vga"]
    assert (sev, subject) == ("warning", "group:2") and "passing pci_0000_01_00_1 would take it along" in msg
    assert snap.verdicts["pci_0000_01_00_0"].eligible  # warned, not denied


def test_no_boot_vga_findings_without_one(tree):
    hosts.base(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, driver="nvidia", group=2, boot_vga=False)
    f = found(judge_tree(tree))
    assert "boot_vga" not in f and "group_boot_vga" not in f


def test_group_layout_hash_is_stable_and_follows_regrouping(tmp_path):
    from tests.support.sysfs_builder import SysfsTree

    def layout(name, driver="nvidia", audio_group=2):
        t = SysfsTree(tmp_path / name)
        hosts.base(t)
        t.pci("0000:00:01.0", INTEL, 0x1901, 0x060400, driver="pcieport", group=1, reset_method=None)
        t.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, parent="0000:00:01.0", driver=driver, group=2)
        t.pci("0000:01:00.1", NVIDIA, 0x228B, 0x040300, parent="0000:00:01.0", group=audio_group)
        return SysfsSource(str(t.sys), str(t.proc)).read()

    a, b = layout("a"), layout("b", driver="vfio-pci")
    assert re.fullmatch(r"[0-9a-f]{12}", group_layout_hash(a))
    assert group_layout_hash(a) == group_layout_hash(b)  # drivers do not change the layout
    assert group_layout_hash(layout("c", audio_group=3)) != group_layout_hash(a)
    layout_id = Facts.of(a).layout_id
    assert layout_id == int(group_layout_hash(a), 16) and float(layout_id) == layout_id


def builtin_codes(tmp_path: Path) -> dict[str, str]:
    """code -> the built-in plugin whose `check` lines claim it (policy's with an [[expect]] table)."""
    policy = tmp_path / "site.toml"
    policy.write_text('[[expect]]\naddress = "0000:01:00.0"\n')
    inspector = Inspector({"policy": str(policy)})
    out: dict[str, str] = {}
    for impl in inspector.pm.hook.passthrough_checks.get_hookimpls():
        if impl.plugin.__name__.startswith("passthrough_exporter.plugins."):
            for check in impl.function(**{arg: inspector.settings for arg in impl.argnames}):
                out.update(dict.fromkeys(check.codes, impl.plugin_name))
    return out


def test_every_code_is_catalogued_and_documented(tree, tmp_path):
    """Every code of every built-in plugin (safety's `CODES`, and the codes the others claim in their
    check lines) has its row in docs/findings.md: safety's in the first table, the others' in the
    second with the plugin's name."""
    hosts.workstation(tree)
    tree.cmdline("pcie_acs_override=downstream")
    snap = judge_tree(tree)
    codes = builtin_codes(tmp_path)
    for f in snap.findings:
        assert f.code in codes and re.fullmatch(r"[a-z][a-z0-9_]*", f.code)
    assert {code for code, plugin in codes.items() if plugin == "safety"} == set(CODES)
    assert {"health", "assignments", "policy", "pci"} <= set(codes.values())
    page = FINDINGS_PAGE.read_text()
    for code, plugin in codes.items():
        row = f"| `{code}` |" if plugin == "safety" else f"| `{code}` | `{plugin}` |"
        assert row in page, f"{code} ({plugin}) missing from the findings tables of docs/findings.md"


def test_findings_are_listed_critical_first_then_by_code_then_subject_in_natural_order(tree):
    """Groups 2, 10, 101 and 1009 each hold two NICs (group_multi_device, info); group 10's are split
    between vfio-pci and the host (group_mixed, critical); GPUs on 0000:00:02.0 and 0000:00:10.0 have no
    FLR (warning). As text, group:10 sorts before group:2 and group:1009 before group:101."""
    hosts.base(tree)
    hosts.nvme_lvm_root(tree)
    for n, group in enumerate((1009, 101, 10, 2)):
        for fn in (0, 1):
            tree.pci(f"0000:{0x40 + n:02x}:00.{fn}", 0x8086, 0x1521, 0x020000, group=group, reset_method="flr",
                     driver="vfio-pci" if (group, fn) == (10, 0) else "igb")
    for slot in ("02", "10"):
        tree.pci(f"0000:00:{slot}.0", 0x10DE, 0x2484, 0x030000, driver="nvidia", group=200 + int(slot),
                 reset_method="bus")
    order = [(f.severity, f.code, f.subject) for f in judge_tree(tree).findings
             if f.code in ("group_mixed", "no_flr", "group_multi_device")]
    assert order == [
        ("critical", "group_mixed", "group:10"),
        ("warning", "no_flr", "pci_0000_00_02_0"), ("warning", "no_flr", "pci_0000_00_10_0"),
        ("info", "group_multi_device", "group:2"), ("info", "group_multi_device", "group:10"),
        ("info", "group_multi_device", "group:101"), ("info", "group_multi_device", "group:1009"),
    ]


def test_remapping_that_cannot_be_told_never_passes_even_without_groups(tree):
    """The small VM without IOMMU groups and without a readable /proc/interrupts: the remapping line
    must not pass on no evidence (it did, because the IOMMU line already warned)."""
    hosts.small_vm(tree)
    (tree.proc / "interrupts").unlink()
    f = found(judge_tree(tree))
    assert [s[:2] for s in f["interrupt_remapping_unknown"]] == [("warning", "host")]
    assert "no_interrupt_remapping" not in f and "iommu_off_firmware" in f


def test_device_names_keep_their_hex_order():
    """Bus numbers are fixed-width hex: 0x1a and 0x9f come after 0x10 (as text), not before it."""
    from passthrough_exporter.model import natural_key

    names = ["pci_0000_9f_00_0", "pci_0000_10_00_0", "pci_0000_1a_00_0", "pci_0000_00_02_0", "group:10", "group:9"]
    assert sorted(names, key=natural_key) == ["group:9", "group:10", "pci_0000_00_02_0", "pci_0000_10_00_0",
                                              "pci_0000_1a_00_0", "pci_0000_9f_00_0"]


def test_root_unknown_blocks_what_takes_a_disk_along(tree):
    """usb_tree with no mount table: the stick 1-1.4 (mass storage) may hold `/`, so the xHCI 00:14.0
    above it (passing it takes the stick along) is blocked too; the mouse, forwarded alone, is not."""
    hosts.usb_tree(tree)
    snap = judge_tree(tree)
    assert snap.states["usb_1_1_4"] == "blocked" and snap.states["pci_0000_00_14_0"] == "blocked"
    assert "one that goes with it" in snap.blocked_by["pci_0000_00_14_0"]
    assert snap.states["usb_1_1_2"] == "available"


def test_an_unreadable_kernel_command_line_does_not_pass_the_acs_line(tree):
    hosts.clean_host(tree)
    (tree.proc / "cmdline").unlink()
    f = found(judge_tree(tree))
    assert [s[:2] for s in f["kernel_cmdline_unknown"]] == [("warning", "host")]
    assert "acs_override" not in f
