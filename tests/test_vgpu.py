"""NVIDIA's vendor-specific vGPU (VFs with `nvidia/`, no mdev) on the H200 fixture host, answers worked
out by hand in `hosts.h200_vgpu`: what is read, each function's state and reason, the vgpu series,
the JSON object, the listing, libvirt's view, and hostile files."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import pytest

from passthrough_exporter.commands import cli
from passthrough_exporter.model import VgpuType
from passthrough_exporter.reading.sysfs.attrs import BadAttribute, vgpu_types
from passthrough_exporter.rendering.metrics import MetricOptions, render
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.hosts import H200_VFS, VGPU_1_18C, VGPU_2_35C
from tests.support.libvirt_host import domain, pci_hostdev, write_host
from tests.support.local import judge_tree

PF = "pci_0000_41_00_0"
VF4, VF5, VF6, VF7 = "pci_0000_41_00_4", "pci_0000_41_00_5", "pci_0000_41_00_6", "pci_0000_41_00_7"
NO_TYPE = "no vGPU type set on this VF"
UNREADABLE = "its vGPU type cannot be read: cannot tell whether it can be handed out"
PF_REASON = f"vGPUs are set on its virtual functions ({VF4} carries type 1414)"
N118, N235 = VGPU_1_18C[1], VGPU_2_35C[1]


def vgpu_series(text: str) -> dict[str, float]:
    """The vgpu families' samples, `name{labels}` -> value."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^(passthrough_vgpu_\w+\{[^}]*\}) (\S+)$", text, re.M)}


def series(family: str, vgpu_type: int, name: str) -> str:
    return f'passthrough_vgpu_{family}{{device="{PF}",name="{name}",vgpu_type="{vgpu_type}"}}'


HAND_WORKED = {
    series("available", 1414, N118): 2.0,  # .6 and .7 carry none and list it
    series("available", 1415, N235): 1.0,  # .6 alone lists it
    series("instances", 1414, N118): 2.0,  # .4 and .5 carry it (and list nothing: the name is .6's)
    series("instances", 1415, N235): 0.0,  # listed, carried by none: a row all the same
}


# --- reading -------------------------------------------------------------------------------


def test_the_vf_files_are_read_into_the_device(tree):
    hosts.h200_vgpu(tree)
    devs = judge_tree(tree).inventory.devices
    # The PF's nvidia/ is not read (only a VF carries a type): None, as for a source without sysfs.
    assert [(devs[n].nvidia_vgpu, devs[n].vgpu_type) for n in (PF, VF4, VF5, VF6, VF7)] == [
        (None, None), (True, 1414), (True, 1414), (True, 0), (True, 0)]
    assert devs[VF4].vgpu_creatable == () and devs[PF].vgpu_creatable is None
    assert devs[VF6].vgpu_creatable == (VgpuType(1414, N118), VgpuType(1415, N235))
    assert devs[VF7].vgpu_creatable == (VgpuType(1414, N118),)


@pytest.mark.parametrize("text, expected", [
    ("ID    : vGPU Name\n1428 : NVIDIA H200X-141C\n1414 : NVIDIA H200X-1-18C",
     ((1428, "NVIDIA H200X-141C"), (1414, "NVIDIA H200X-1-18C"))),
    ("", ()),  # nothing can be created now
    ("ID : vGPU Name", ()),
    ("\n  1414:NVIDIA H200X-1-18C  \n\n", ((1414, "NVIDIA H200X-1-18C"),)),  # trimmed, blanks skipped
    ("1414 : NVIDIA: A:B", ((1414, "NVIDIA: A:B"),)),  # the name is all after the first colon
])
def test_the_creatable_list_is_parsed_as_nvidia_parses_it(text, expected):
    assert vgpu_types(text) == expected


@pytest.mark.parametrize("text", [
    "1414 NVIDIA H200X-1-18C",  # no separator
    "1414 :",  # no name
    "x14 : NVIDIA",  # not a number
    "0 : NVIDIA",  # 0 is "none", never a type
    "4294967296 : NVIDIA",  # above 32 bits
    "\n".join(f"{i} : T{i}" for i in range(1, 258)),  # more types than any GPU offers
])
def test_a_bad_creatable_list_is_refused_whole(text):
    with pytest.raises(BadAttribute):
        vgpu_types(text)


def test_a_pfs_nvidia_directory_is_not_read(tree):
    """NVIDIA's tooling reads nvidia/ on VFs only: vGPU files on the PF make it no VF without a type."""
    hosts.h200_vgpu(tree)
    tree.nvidia_vgpu(hosts.H200_PF, 0, [VGPU_1_18C])
    snap = judge_tree(tree)
    assert (snap.inventory.devices[PF].nvidia_vgpu, snap.inventory.devices[PF].vgpu_type) == (None, None)
    assert snap.blocked_by[PF] == PF_REASON  # not NO_TYPE: its VFs' vGPUs block it, as without the files
    assert device_object(snap, PF)["vgpu"] is None
    assert vgpu_series(render(snap).decode()) == HAND_WORKED


def test_a_vfs_nvidia_directory_without_the_vgpu_files_leaves_its_type_unknown(tree, caplog):
    """.7's nvidia/ holds neither file: whether it carries a type cannot be told, so it is blocked (not
    counted: a missing attribute is unknown, not an error). It lists nothing now: 1414 has one free VF."""
    hosts.h200_vgpu(tree)
    nvidia = tree.pci_path(H200_VFS[3]) / "nvidia"
    for f in nvidia.iterdir():
        f.unlink()
    tree.write(nvidia / "something_else", "1")
    snap = judge_tree(tree)
    dev = snap.inventory.devices[VF7]
    assert (dev.nvidia_vgpu, dev.vgpu_type, dev.vgpu_creatable) == (True, None, None)
    assert snap.blocked_by[VF7] == UNREADABLE and dict(snap.errors) == {}
    assert snap.blocked_by[PF] == PF_REASON
    assert vgpu_series(render(snap).decode()) == {**HAND_WORKED, series("available", 1414, N118): 1.0}


def test_a_linked_nvidia_directory_is_refused_and_counted(tree, caplog):
    """sysfs attribute groups are directories, never links: .6's nvidia/ as a link (to files that read
    well) is one counted warning and an unknown type, never "no nvidia/ here, available". Its list is
    lost: 1414 has one free VF (.7), and 1415, which only .6 listed, has no series."""
    hosts.h200_vgpu(tree)
    nvidia = tree.pci_path(H200_VFS[2]) / "nvidia"
    elsewhere = tree.root / "elsewhere"
    nvidia.rename(elsewhere)
    nvidia.symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING):
        snap = judge_tree(tree)
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "41:00.6" in r.getMessage()]
    assert len(warned) == 1 and dict(snap.errors) == {"bad_attribute": 1}
    dev = snap.inventory.devices[VF6]
    assert (dev.nvidia_vgpu, dev.vgpu_type, dev.vgpu_creatable) == (True, None, None)
    assert snap.states[VF6] == "blocked" and snap.blocked_by[VF6] == UNREADABLE
    assert vgpu_series(render(snap).decode()) == {
        series("available", 1414, N118): 1.0, series("instances", 1414, N118): 2.0}


# --- live state ----------------------------------------------------------------------------


def test_each_function_gets_its_hand_worked_state(tree):
    hosts.h200_vgpu(tree)
    snap = judge_tree(tree)
    assert {n: snap.states[n] for n in (PF, VF4, VF5, VF6, VF7)} == {
        PF: "blocked", VF4: "in_use", VF5: "available", VF6: "blocked", VF7: "blocked"}
    assert {n: snap.blocked_by.get(n) for n in (PF, VF4, VF5, VF6, VF7)} == {
        PF: PF_REASON, VF4: None, VF5: None, VF6: NO_TYPE, VF7: NO_TYPE}
    assert device_object(snap, VF4)["held_by"] == {"vm": "llm1", "pid": 5150, "process": "qemu-system-x86"}
    assert dict(snap.errors) == {}


def test_the_pf_is_available_once_no_vf_carries_a_type(tree):
    hosts.h200_vgpu(tree)
    for addr in H200_VFS[:2]:
        tree.nvidia_vgpu(addr, 0, [VGPU_1_18C])
    os.unlink(tree.proc / "5150" / "fd" / "4")  # the VM is gone
    snap = judge_tree(tree)
    assert snap.states[PF] == "available"
    assert {snap.blocked_by[n] for n in (VF4, VF5, VF6, VF7)} == {NO_TYPE}


def test_a_pf_one_of_whose_vfs_cannot_be_read_is_blocked(tree, caplog):
    """No VF that is read carries a type and no VM runs, but .5's directory cannot be listed (it
    carries 1414 on the disk): the PF still lists it, and it may be in use or carry a vGPU."""
    hosts.h200_vgpu(tree)
    tree.nvidia_vgpu(H200_VFS[0], 0, [VGPU_1_18C])
    os.unlink(tree.proc / "5150" / "fd" / "4")
    vf5 = tree.pci_path(H200_VFS[1])
    shutil.rmtree(vf5)
    tree.write(vf5, "")
    snap = judge_tree(tree)
    assert VF5 not in snap.inventory and VF5 in snap.inventory.devices[PF].virtfns
    assert dict(snap.errors) == {"vanished": 1}
    assert snap.states[PF] == "blocked"
    assert snap.blocked_by[PF] == (f"its virtual function {VF5} could not be read: cannot tell whether it is in "
                                   "use or carries a vGPU")


def test_vfs_naming_a_pf_without_virtfn_links_are_its_vfs(tree):
    """The PF's virtfn* links are missing, its VFs' physfn links are there: they are its VFs all the
    same. No VM runs: .4 and .5 carry 1414, so the PF is blocked, and the series (names too) are the
    hand-worked ones but for .4, which is free of its VM (still carrying 1414: no change in counts)."""
    hosts.h200_vgpu(tree)
    os.unlink(tree.proc / "5150" / "fd" / "4")
    for link in tree.pci_path(hosts.H200_PF).glob("virtfn*"):
        link.unlink()
    snap = judge_tree(tree)
    assert snap.inventory.devices[PF].virtfns == ()
    assert snap.inventory.virtual_functions(PF) == (VF4, VF5, VF6, VF7)
    assert snap.blocked_by[PF] == PF_REASON
    assert set(snap.affected[PF]) == {VF4, VF5, VF6, VF7}
    assert vgpu_series(render(snap).decode()) == HAND_WORKED
    assert device_object(snap, VF4)["vgpu"]["name"] == N118


def test_free_vgpu_capacity_is_only_vfs_whose_one_blocker_is_no_type(tree, tmp_path):
    """.6 and .7 carry no type but both are configured in libvirt domains: neither is free to take one,
    so no type has a free VF. Instances are as hand-worked."""
    pytest.importorskip("libvirt", reason="the [libvirt] extra is not installed")
    hosts.h200_vgpu(tree)
    snap = _libvirt_snapshot(tree, tmp_path, (domain("a", pci_hostdev("0000:41:00.6")),
                                              domain("b", pci_hostdev("0000:41:00.7"))))
    assert (snap.states[VF6], snap.states[VF7]) == ("assigned", "assigned")
    assert vgpu_series(render(snap).decode()) == {
        **HAND_WORKED, series("available", 1414, N118): 0.0, series("available", 1415, N235): 0.0}


def test_a_vf_blocked_by_an_assigned_group_peer_is_no_free_capacity(tree, tmp_path):
    """.6 (no type; lists 1414 and 1415) shares IOMMU group 52 with .5 (carries 1414), which a shut-off
    domain is configured with: starting that domain takes the group, so .6 is blocked by its peer, not
    by its missing type, and is not free vGPU capacity. Only .7 is free: available 1414 = 1, 1415 = 0."""
    pytest.importorskip("libvirt", reason="the [libvirt] extra is not installed")
    hosts.h200_vgpu(tree)
    group = tree.sys / "kernel" / "iommu_groups"
    (tree.pci_path(H200_VFS[2]) / "iommu_group").unlink()  # .6 from group 53 into .5's group 52
    os.symlink(group / "52", tree.pci_path(H200_VFS[2]) / "iommu_group")
    os.rename(group / "53" / "devices" / H200_VFS[2], group / "52" / "devices" / H200_VFS[2])
    snap = _libvirt_snapshot(tree, tmp_path, (domain("b", pci_hostdev("0000:41:00.5"), running=False),))
    assert snap.states[VF5] == "assigned"
    assert (snap.states[VF6], snap.blocked_by[VF6]) == ("blocked", f"{VF5}, which goes with it, is assigned")
    assert snap.blocked_by[VF7] == "no vGPU type set on this VF"
    assert vgpu_series(render(snap).decode()) == {
        **HAND_WORKED, series("available", 1414, N118): 1.0, series("available", 1415, N235): 0.0}


def test_without_sysfs_another_vendors_gpu_vfs_are_judged_as_before(tree, tmp_path):
    """Only NVIDIA's GPUs have the vendor-specific vGPU files: an Intel GPU's SR-IOV VFs (8086:a7a0 on
    vfio-pci, each alone in its group) read through a remote libvirt stay available, and so does their
    PF (on i915, its own group)."""
    pytest.importorskip("libvirt", reason="the [libvirt] extra is not installed")
    hosts.base(tree)
    tree.interrupts("IR-IO-APIC", "IR-PCI-MSI")
    tree.pci("0000:00:02.0", 0x8086, 0xA7A0, 0x030000, driver="i915", group=1, sriov_totalvfs=7)
    for n in (1, 2):
        tree.pci(f"0000:00:02.{n}", 0x8086, 0xA7A0, 0x030000, driver="vfio-pci", group=1 + n, physfn="0000:00:02.0")
    snap = _libvirt_snapshot(tree, tmp_path, sysfs=False)
    assert {n: snap.states[n] for n in ("pci_0000_00_02_0", "pci_0000_00_02_1", "pci_0000_00_02_2")} == dict.fromkeys(
        ("pci_0000_00_02_0", "pci_0000_00_02_1", "pci_0000_00_02_2"), "available")


def test_no_vgpu_capacity_is_free_while_vfio_cannot_assign_at_all(tree):
    """Interrupt remapping off (unsafe interrupts not allowed): every VF is blocked by the host first."""
    hosts.h200_vgpu(tree)
    tree.interrupts("IO-APIC", "PCI-MSI")
    snap = judge_tree(tree)
    assert snap.blocked_by[VF6] == "interrupt remapping is off: VFIO refuses to assign devices on this host"
    assert vgpu_series(render(snap).decode()) == {
        **HAND_WORKED, series("available", 1414, N118): 0.0, series("available", 1415, N235): 0.0}


def test_the_type_names_are_worked_out_once_per_refresh(tree):
    hosts.h200_vgpu(tree)
    assert judge_tree(tree).facts.vgpu_names == {PF: {1414: N118, 1415: N235}}


def test_a_gpu_whose_vfs_all_carry_a_type_keeps_its_series_without_a_name(tree):
    """.6 and .7 take type 1414 too and, the GPU's capacity used, every VF lists nothing: sysfs names
    no type any more (the PF is still one of vgpu_names, with no name), and the series stay: 1414
    available 0, instances 4, name empty; 1415 is listed and carried by none, so it has no series."""
    hosts.h200_vgpu(tree)
    for vf in H200_VFS[2:]:
        (tree.pci_path(vf) / "nvidia" / "current_vgpu_type").write_text("1414")
        (tree.pci_path(vf) / "nvidia" / "creatable_vgpu_types").write_text("")
    snap = judge_tree(tree)
    assert snap.facts.vgpu_names == {PF: {}}
    assert vgpu_series(render(snap).decode()) == {series("available", 1414, ""): 0.0,
                                                 series("instances", 1414, ""): 4.0}


def _libvirt_snapshot(tree, tmp_path, domains=(), sysfs=True):
    from passthrough_exporter.judging.inspector import Inspector
    from passthrough_exporter.reading.sources.libvirt import LibvirtSource

    uri = write_host(tree, tmp_path / "host.xml", domains)
    source = LibvirtSource(uri, sysfs_path=str(tree.sys) if sysfs else None, procfs_path=str(tree.proc))
    try:
        return Inspector().judge(source.read(), source="libvirt")
    finally:
        source.close()


def test_without_sysfs_a_display_vf_and_its_pf_are_never_available(tree, tmp_path):
    """A remote libvirt (no sysfs): libvirt's XML has no nvidia/, so whether a GPU's VF carries a vGPU
    type cannot be read. Every VF is blocked, and so is the PF; no vgpu series (nothing was read).
    Without /proc's holders .4 is not seen in use: blocked all the same."""
    pytest.importorskip("libvirt", reason="the [libvirt] extra is not installed")
    hosts.h200_vgpu(tree)
    snap = _libvirt_snapshot(tree, tmp_path, sysfs=False)
    unread = "without the host's sysfs, whether a vGPU type is set on it cannot be read"
    assert {n: (snap.inventory.devices[n].nvidia_vgpu, snap.states[n], snap.blocked_by.get(n))
            for n in (VF4, VF5, VF6, VF7)} == dict.fromkeys((VF4, VF5, VF6, VF7), (None, "blocked", unread))
    assert snap.blocked_by[PF] == (f"without the host's sysfs, whether its virtual function {VF4} carries a vGPU "
                                   "type cannot be read: it may carry one")
    assert vgpu_series(render(snap).decode()) == {}
    assert device_object(snap, VF5)["vgpu"] is None


def test_a_vf_carrying_a_type_is_assigned_like_any_vfio_device(tree, tmp_path):
    pytest.importorskip("libvirt", reason="the [libvirt] extra is not installed")
    hosts.h200_vgpu(tree)
    snap = _libvirt_snapshot(tree, tmp_path, (domain("llm2", pci_hostdev("0000:41:00.5")),))
    # libvirt's XML has no nvidia/: the fields come from sysfs, and the answers are sysfs' own.
    devs = snap.inventory.devices
    assert (devs[VF6].nvidia_vgpu, devs[VF6].vgpu_type, devs[VF6].vgpu_creatable) == (
        True, 0, (VgpuType(1414, N118), VgpuType(1415, N235)))
    assert {n: snap.states[n] for n in (PF, VF4, VF5, VF6, VF7)} == {
        PF: "blocked", VF4: "in_use", VF5: "assigned", VF6: "blocked", VF7: "blocked"}
    assert snap.blocked_by[PF] == PF_REASON and snap.blocked_by[VF6] == NO_TYPE
    assert vgpu_series(render(snap).decode()) == HAND_WORKED


# --- rendering -----------------------------------------------------------------------------


def test_the_vgpu_series_per_pf_and_type(tree):
    hosts.h200_vgpu(tree)
    assert vgpu_series(render(judge_tree(tree)).decode()) == HAND_WORKED


def test_the_vgpu_series_stay_with_skip_vfs_and_go_without_pci(tree):
    hosts.h200_vgpu(tree)
    snap = judge_tree(tree)
    text = render(snap, MetricOptions(include_vfs=False)).decode()
    assert vgpu_series(text) == HAND_WORKED  # the PF's capacity, as the pools count VFs
    assert f'device="{VF6}"' not in text and f'passthrough_device_available{{device="{PF}",type="pci"}} 0.0' in text
    assert vgpu_series(render(snap, MetricOptions(device_types=("usb_device",))).decode()) == {}


def test_the_json_object_shows_the_vf_type_and_what_it_can_take(tree):
    hosts.h200_vgpu(tree)
    snap = judge_tree(tree)
    # .4 lists nothing (capacity used): the name of its type is its siblings'.
    assert device_object(snap, VF4)["vgpu"] == {"type": 1414, "name": N118, "creatable": []}
    assert device_object(snap, VF6)["vgpu"] == {
        "type": 0, "name": None, "creatable": [{"type": 1414, "name": N118}, {"type": 1415, "name": N235}]}
    assert device_object(snap, PF)["vgpu"] is None
    obj = device_object(snap, VF7)
    assert (obj["available"], obj["blocked_by"]) == (False, NO_TYPE)


def test_only_the_vf_carrying_a_free_type_is_listed_available(tree, capsys):
    hosts.h200_vgpu(tree)
    args = ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)]
    assert cli.main(["devices", "--available", *args]) == 0
    assert capsys.readouterr().out.split() == [VF5]
    assert cli.main(["devices", "--json", "--cap", "pci", *args]) == 0
    objs = {o["name"]: o for o in json.loads(capsys.readouterr().out)}
    assert objs[VF5]["vgpu"] == {"type": 1414, "name": N118, "creatable": []} and objs[VF5]["available"]


# --- hostile and missing inputs ------------------------------------------------------------


def _garbage_type(tree):
    tree.write(tree.pci_path(H200_VFS[1]) / "nvidia" / "current_vgpu_type", "14x4")


def _junk_lines(tree):
    tree.write(tree.pci_path(H200_VFS[1]) / "nvidia" / "creatable_vgpu_types",
               "ID : vGPU Name\n1414 : NVIDIA H200X-1-18C\ncat /etc/shadow")


def _huge_list(tree):
    tree.write(tree.pci_path(H200_VFS[1]) / "nvidia" / "creatable_vgpu_types",
               "\n".join(f"{i} : NVIDIA H200X-{i}" for i in range(1, 400)))  # past the 4 KiB of a page


def _unreadable_type(tree):
    path = tree.pci_path(H200_VFS[1]) / "nvidia" / "current_vgpu_type"
    path.unlink()
    path.mkdir()  # a read fails (EISDIR), whoever runs the test: root reads a mode-000 file


def _unlistable_dir(tree):
    path = tree.pci_path(H200_VFS[1]) / "nvidia"
    for f in path.iterdir():
        f.unlink()
    path.rmdir()
    tree.write(path, "")  # `nvidia` is there, not as a directory: listing it fails


@pytest.mark.parametrize("spoil, kind, vf5_type, vf5_creatable, reason", [
    (_garbage_type, "bad_attribute", None, (), UNREADABLE),
    (_junk_lines, "bad_attribute", 1414, None, None),  # its type is known: it stays available
    (_huge_list, "bad_attribute", 1414, None, None),
    (_unreadable_type, "read_error", None, (), UNREADABLE),
    (_unlistable_dir, "vanished", None, None, UNREADABLE),
], ids=["garbage-type", "junk-lines", "huge-list", "unreadable-type", "unlistable-dir"])
def test_a_bad_vgpu_file_is_one_counted_warning_and_never_a_false_available(
        tree, caplog, spoil, kind, vf5_type, vf5_creatable, reason):
    hosts.h200_vgpu(tree)
    spoil(tree)
    with caplog.at_level(logging.WARNING):
        snap = judge_tree(tree)
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "41:00.5" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert dict(snap.errors) == {kind: 1}
    dev = snap.inventory.devices[VF5]
    assert (dev.nvidia_vgpu, dev.vgpu_type, dev.vgpu_creatable) == (True, vf5_type, vf5_creatable)
    assert snap.states[VF5] == ("blocked" if reason else "available") and snap.blocked_by.get(VF5) == reason
    # Everything else is still reported, as before.
    assert len([d for d in snap.inventory if d.type == "pci"]) == 6
    assert {n: snap.states[n] for n in (PF, VF4, VF6, VF7)} == {
        PF: "blocked", VF4: "in_use", VF6: "blocked", VF7: "blocked"}
    assert snap.blocked_by[PF] == PF_REASON  # .4 still carries a type
    # .5 lists nothing, so its list's loss changes no count; its type's loss takes it out of instances.
    expected = dict(HAND_WORKED)
    if vf5_type is None:
        expected[series("instances", 1414, N118)] = 1.0
    assert vgpu_series(render(snap).decode()) == expected


def test_a_vf_whose_type_cannot_be_read_keeps_its_pf_blocked(tree, caplog):
    """Neither VF carries a type that can be read: the PF may still be shared out, so it is blocked."""
    hosts.h200_vgpu(tree)
    tree.nvidia_vgpu(H200_VFS[0], 0, [VGPU_1_18C])
    os.unlink(tree.proc / "5150" / "fd" / "4")
    (tree.pci_path(H200_VFS[1]) / "nvidia" / "current_vgpu_type").unlink()  # missing: unknown, not 0
    snap = judge_tree(tree)
    assert snap.blocked_by[VF5] == UNREADABLE
    assert snap.blocked_by[PF] == f"the vGPU type of its virtual function {VF5} cannot be read: it may carry one"
    assert dict(snap.errors) == {}  # a missing attribute is unknown, not an error
