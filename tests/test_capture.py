"""`capture`: fixture and real hosts survive capture -> unpack -> `devices --json` unchanged;
the archive holds only what the source reads, with safe names and no secrets."""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.commands import unpack as tar_unpack
from tests.support import hosts, umockdev_tree
from tests.support.process import EXE
from tests.support.sysfs_builder import SysfsTree


def capture(sysfs, procfs, output, *extra):
    return subprocess.run(
        [EXE, "capture", "--output", str(output), "--path.sysfs", str(sysfs), "--path.procfs", str(procfs), *extra],
        capture_output=True, text=True, timeout=120,
    )


def devices_json(sysfs, procfs, *extra):
    out = subprocess.run(
        [EXE, "devices", "--json", "--path.sysfs", str(sysfs), "--path.procfs", str(procfs), *extra],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def unpack(archive: Path, dest: Path) -> Path:
    # Absolute names, `..`, links leaving `dest` and device nodes are refused, on every Python.
    tar_unpack.unpack(archive, dest)
    return dest


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def round_trip(tmp_path: Path, sysfs, procfs, *extra) -> tuple[Path, Path]:
    archive = tmp_path / "host.tar.gz"
    out = capture(sysfs, procfs, archive, *extra)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"wrote {archive}: ") and out.stdout.count("\n") == 1
    return archive, unpack(archive, tmp_path / "unpacked")


def assert_same_read(orig_sys, orig_proc, copy: Path) -> None:
    assert devices_json(orig_sys, orig_proc) == devices_json(copy / "sys", copy / "proc")
    a = SysfsSource(str(orig_sys), str(orig_proc)).read()
    b = SysfsSource(str(copy / "sys"), str(copy / "proc")).read()
    assert a.host == b.host and dict(a.errors) == dict(b.errors)
    mountinfo = [p for p in copy.rglob("mountinfo")]
    for path in mountinfo:  # only the root mount's line travels
        assert len(path.read_text().splitlines()) == 1
    assert list(a.devices.values()) == list(b.devices.values())


def vfio_host(t: SysfsTree) -> None:
    t.cmdline("BOOT_IMAGE=/vmlinuz intel_iommu=on iommu=pt pcie_acs_override=downstream,multifunction")
    t.module_param("vfio_iommu_type1", "allow_unsafe_interrupts", "Y")
    t.module_param("vfio", "enable_unsafe_noiommu_mode", "N")
    t.module_param("vfio_pci", "ids", "10de:2484,10de:228b")


def broken(t: SysfsTree) -> None:
    """Garbage where ids should be (device skipped) and in an optional attribute (field emptied)."""
    hosts.base(t)
    bad = t.pci("0000:00:02.0", 0x8086, 0x3E92, 0x030000, group=7)
    (bad / "vendor").write_text("0xzzzz\n")
    odd = t.pci("0000:00:08.0", 0x8086, 0x1911, 0x088000, group=8)
    (odd / "numa_node").write_text("many\n")
    (odd / "reset_method").unlink()  # an older kernel: `reset` alone says "some reset, kind unknown"


def sata_root(t: SysfsTree) -> None:
    """Root on a partition of a SATA disk, the mount table holding other mounts too."""
    hosts.sata_disks(t)
    lun = t.pci_path("0000:00:17.0") / "ata1" / "host0" / "target0:0:0" / "0:0:0:0"
    t.partition(t.block("sda", parent=lun, dev="8:0"), "sda2", dev="8:2", number=2)
    t.root_mount("8:2", "/dev/sda2")


def vfio_nodes(t: SysfsTree) -> None:
    """Device numbers a holder is matched by: group 4's VFIO node, a VF's VFIO cdev, a USB stick's
    node, and a group whose `dev` is garbage (left unknown, counted, the same after the trip)."""
    hosts.base(t)
    t.pci("0000:01:00.0", 0x10DE, 0x2484, 0x030000, driver="vfio-pci", group=4, vfio_dev="vfio0", cdev="511:0")
    t.pci("0000:02:00.0", 0x10DE, 0x2484, 0x030000, driver="vfio-pci", group=6)
    t.vfio_group(4, "510:4")
    t.vfio_group(6, "no number")
    hosts.usb_tree(t)
    t.write(t.sys / "bus" / "usb" / "devices" / "1-1.4" / "dev", "189:3")


def no_groups(t: SysfsTree) -> None:
    hosts.base(t)
    hosts.desktop_gpu(t, groups=False)


HOSTS = {
    "workstation": lambda t: (hosts.workstation(t), vfio_host(t)),
    "base": hosts.base,
    "desktop_gpu": lambda t: (hosts.base(t), hosts.desktop_gpu(t)),
    "no_groups": no_groups,
    "chipset_switch": hosts.chipset_switch,
    "sriov_and_orphan_vf": lambda t: (hosts.sriov_nic(t), hosts.orphan_vf(t)),
    "usb_tree": hosts.usb_tree,
    "vfio_nodes": vfio_nodes,
    # nvidia/ of each VF: its type and creatable list travel (a capture holds no processes: no QEMU)
    "h200_vgpu": lambda t: (hosts.h200_vgpu(t), shutil.rmtree(t.proc / "5150")),
    "iommufd_host": hosts.iommufd_host,
    "group_only_host": hosts.group_only_host,
    "sata_disks": hosts.sata_disks,
    "sata_root": sata_root,
    "nvme_lvm_root": hosts.nvme_lvm_root,
    "virtio_root": hosts.virtio_root,
    "two_roots": hosts.two_roots,
    "broken": broken,
    "empty": lambda t: None,
}


@pytest.mark.parametrize("host", HOSTS)
def test_fixture_hosts_round_trip(tree, tmp_path, host):
    HOSTS[host](tree)
    archive, copy = round_trip(tmp_path, tree.sys, tree.proc)
    assert_same_read(tree.sys, tree.proc, copy)
    if host.endswith("_root"):  # the root disk's controller is found in the copy too
        assert SysfsSource(str(copy / "sys"), str(copy / "proc")).read().host.root_devices


def test_workstation_flags_agree_after_round_trip(tree, tmp_path):
    hosts.workstation(tree)
    _, copy = round_trip(tmp_path, tree.sys, tree.proc)
    for extra in (["--passthrough"], ["--cap", "scsi"], ["--affected-by", "pci_0000_04_00_0"]):
        assert devices_json(tree.sys, tree.proc, *extra) == devices_json(copy / "sys", copy / "proc", *extra)


def test_host_facts_survive(tree, tmp_path):
    hosts.base(tree)
    vfio_host(tree)
    _, copy = round_trip(tmp_path, tree.sys, tree.proc)
    host = SysfsSource(str(copy / "sys"), str(copy / "proc")).read().host
    assert host.module_params["vfio_iommu_type1.allow_unsafe_interrupts"] == "Y"
    assert "pcie_acs_override" in host.cmdline_params()
    assert host.iommu_units == ("dmar0",) and host.iommu_groups_present


def test_config_space_stops_at_the_header(tree, tmp_path):
    gpu = tree.pci("0000:01:00.0", 0x10DE, 0x2484, 0x030000, group=2)
    full = (gpu / "config").read_bytes() + bytes(range(256)) * 15  # 4 KiB of extended config space
    (gpu / "config").write_bytes(full)
    archive, copy = round_trip(tmp_path, tree.sys, tree.proc)
    configs = [m for n, m in members(archive).items() if n.endswith("/config")]
    assert [m.size for m in configs] == [64]
    assert (copy / "sys/devices/pci0000:01/0000:01:00.0/config").read_bytes() == full[:64]


def test_serials_only_when_asked(tree, tmp_path):
    hosts.usb_tree(tree)
    stick = next(tree.sys.glob("devices/**/1-1.4"))
    (stick / "serial").write_text("4C530001230117115290\n")
    archive, _ = round_trip(tmp_path, tree.sys, tree.proc)
    assert not [n for n in members(archive) if n.endswith("/serial")]

    again = tmp_path / "with-serials.tar.gz"
    assert capture(tree.sys, tree.proc, again, "--include-serials").returncode == 0
    with tarfile.open(again) as tar:
        serials = [m for m in tar.getmembers() if m.name.endswith("/serial")]
        assert [tar.extractfile(m).read() for m in serials] == [b"4C530001230117115290\n"]


def test_only_what_the_source_reads(tree, tmp_path):
    gpu = tree.pci("0000:01:00.0", 0x10DE, 0x2484, 0x030000, driver="vfio-pci", group=2)
    for unread in ("uevent", "resource", "rom", "remove", "vpd", "label"):
        (gpu / unread).write_text("private\n")
    tree.module_param("kvm", "ignore_msrs", "Y")  # not one of the vfio modules
    tree.module_param("vfio_pci", "disable_vga", "N")
    tree.write(tree.proc / "mounts", "secret")
    archive, _ = round_trip(tmp_path, tree.sys, tree.proc)
    names = set(members(archive))
    in_gpu = {posixpath.basename(n) for n in names if n.startswith("sys/devices/pci0000:01/0000:01:00.0/")}
    assert in_gpu == {"vendor", "device", "class", "subsystem_vendor", "subsystem_device", "numa_node",
                      "config", "reset_method", "driver", "iommu_group"}
    assert "sys/module/vfio_pci/parameters/disable_vga" in names
    assert not [n for n in names if "kvm" in n or "/drivers/" in n or n.startswith("sys/kernel/iommu_groups/2/")]
    assert {n for n in names if n.startswith("proc/")} == {"proc/cmdline", "proc/interrupts"}


def test_device_numbers_travel(tree, tmp_path):
    """The `dev` files holders are matched by are in the archive, read back to the same numbers;
    no process's fd/ or fdinfo/ is, even with a process holding one of the devices."""
    vfio_nodes(tree)
    tree.process(4242, "qemu-kvm", ["qemu-kvm", "-name", "db1"], {3: "/dev/null"})
    archive, copy = round_trip(tmp_path, tree.sys, tree.proc)
    names = set(members(archive))
    assert {"sys/devices/virtual/vfio/4/dev", "sys/devices/pci0000:01/0000:01:00.0/vfio-dev/vfio0/dev",
            "sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1.4/dev"} <= names
    assert members(archive)["sys/class/vfio/4"].issym()
    assert {n for n in names if n.startswith("proc/")} == {"proc/cmdline", "proc/interrupts"}
    inv = SysfsSource(str(copy / "sys"), str(copy / "proc")).read()
    assert inv.host.vfio_groups == {4: (510, 4)} and dict(inv.errors) == {"bad_attribute": 1}
    assert inv.devices["pci_0000_01_00_0"].char_dev == (511, 0) and inv.devices["usb_1_1_4"].char_dev == (189, 3)


def test_archive_names_and_links_stay_inside(tree, tmp_path):
    hosts.workstation(tree)
    hosts.orphan_vf(tree)
    archive, _ = round_trip(tmp_path, tree.sys, tree.proc)
    for name, m in members(archive).items():
        assert not name.startswith("/") and ".." not in name.split("/"), name
        assert name.split("/")[0] in ("sys", "proc")
        assert m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == ""
        assert m.isdir() or m.isfile() or m.issym(), name
        if m.issym():
            assert not m.linkname.startswith("/")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
            assert not target.startswith(".."), (name, m.linkname)


def test_refuses_to_overwrite_without_force(tree, tmp_path):
    hosts.base(tree)
    archive = tmp_path / "host.tar.gz"
    archive.write_bytes(b"keep me")
    out = capture(tree.sys, tree.proc, archive)
    assert out.returncode == 1 and "exists; use --force" in out.stderr and "Traceback" not in out.stderr
    assert archive.read_bytes() == b"keep me"
    assert capture(tree.sys, tree.proc, archive, "--force").returncode == 0
    assert tarfile.is_tarfile(archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host", "host.tar.gz"]  # no temp file left


def test_clear_errors(tmp_path):
    out = capture(tmp_path / "nope", tmp_path, tmp_path / "x.tar.gz")
    assert out.returncode == 1 and "is not a sysfs: it does not exist" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x.tar.gz").exists()
    (tmp_path / "sys" / "devices").mkdir(parents=True)
    out = capture(tmp_path / "sys", tmp_path, tmp_path / "missing-dir" / "x.tar.gz")
    assert out.returncode == 1 and "cannot write in" in out.stderr and "Traceback" not in out.stderr


def test_umockdev_recording_round_trips(realdata, tmp_path):
    sys_root = tmp_path / "rec" / "sys"
    umockdev_tree.build(realdata / "umockdev/devices/cameras/canon-powershot-sx200.umockdev", sys_root)
    _, copy = round_trip(tmp_path, sys_root, tmp_path / "rec" / "no-proc", "--include-serials")  # the camera has one
    assert_same_read(sys_root, tmp_path / "rec" / "no-proc", copy)


def test_real_sysfs_round_trips(tmp_path):
    if not os.path.isdir("/sys/bus"):
        pytest.skip("no sysfs mounted")
    archive, copy = round_trip(tmp_path, "/sys", "/proc", "--include-serials")  # the same serials too
    live = {d["name"]: d for d in devices_json("/sys", "/proc")}
    copied = {d["name"]: d for d in devices_json(copy / "sys", copy / "proc")}
    assert sorted(copied) == sorted(live)
    for name in live:
        assert copied[name] == live[name], name
    assert all(m.size <= 64 for n, m in members(archive).items() if n.endswith("/config"))


def test_capture_of_a_capture_is_the_same(tree, tmp_path):
    """The unpacked tree holds everything a read needs: capturing it again (through a symlinked,
    relative root) gives the same members with the same contents."""
    hosts.workstation(tree)
    vfio_host(tree)
    first, copy = round_trip(tmp_path, tree.sys, tree.proc)
    (tmp_path / "via").symlink_to(copy / "sys")
    second = tmp_path / "second.tar.gz"
    out = subprocess.run([EXE, "capture", "-o", second.name, "--path.sysfs", "via", "--path.procfs", "unpacked/proc"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr

    def contents(archive):
        with tarfile.open(archive) as tar:
            return {m.name: (m.type, m.linkname, tar.extractfile(m).read() if m.isfile() else None)
                    for m in tar.getmembers()}
    assert contents(second) == contents(first)


def test_unreadable_attribute_is_left_out_not_emptied(tree, tmp_path):
    hosts.usb_tree(tree)
    mouse = next(tree.sys.glob("devices/**/1-1.2"))
    (mouse / "manufacturer").unlink()
    (mouse / "manufacturer").mkdir()  # reading it fails (EISDIR) even as root
    archive, copy = round_trip(tmp_path, tree.sys, tree.proc)
    assert not [n for n in members(archive) if n.endswith("1-1.2/manufacturer")]
    (mouse_json,) = [d for d in devices_json(copy / "sys", copy / "proc") if d["name"] == "usb_1_1_2"]
    assert mouse_json["vendor"] is None
    assert mouse_json == next(d for d in devices_json(tree.sys, tree.proc) if d["name"] == "usb_1_1_2")


def test_vpd_and_serials_travel_when_asked(tree, tmp_path):
    """What identity needs is in a capture taken with --include-serials: the VPD blobs (the one that fails
    its checksum too, so the copy counts it the same), the NVMe and USB serials; the copy reads the
    same serials. Without it, none of them and no placeholder: the copy reads devices without one."""
    hosts.serials(tree)
    for name in ("with", "without"):
        (tmp_path / name).mkdir()
    archive, copy = round_trip(tmp_path / "with", tree.sys, tree.proc, "--include-serials")
    with tarfile.open(archive) as tar:
        held = {m.name: tar.extractfile(m).read() for m in tar.getmembers()
                if m.name.endswith(("/vpd", "/serial"))}
    assert held == {
        "sys/devices/pci0000:3b/0000:3b:00.0/vpd": hosts.NIC_VPD,
        "sys/devices/pci0000:3c/0000:3c:00.0/vpd": (tree.pci_path("0000:3c:00.0") / "vpd").read_bytes(),
        "sys/devices/pci0000:3d/0000:3d:00.0/nvme/nvme0/serial": b"S4EWNX0R123456      \n",
        "sys/devices/pci0000:00/0000:00:14.0/usb1/serial": b"0000:00:14.0\n",
        "sys/devices/pci0000:00/0000:00:14.0/usb1/1-4/serial": b"4C530001230117115290\n",
    }
    assert_same_read(tree.sys, tree.proc, copy)
    assert SysfsSource(str(copy / "sys"), str(copy / "proc")).read().devices["pci_0000_3b_00_0"].serial == "MT1234X00001"

    archive, copy = round_trip(tmp_path / "without", tree.sys, tree.proc)
    assert not [n for n in members(archive) if n.endswith(("/vpd", "/serial"))]
    read = SysfsSource(str(copy / "sys"), str(copy / "proc")).read()
    assert {d.serial for d in read.devices.values()} == {None} and dict(read.errors) == {}
    original = SysfsSource(str(tree.sys), str(tree.proc)).read()
    assert [dataclasses.replace(d, serial=None) for d in original.devices.values()] == list(read.devices.values())
