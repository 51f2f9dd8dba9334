"""Kernel truth and live state on fixture hosts, answers worked out by hand: VFIO variant drivers,
interrupt remapping, unreachable devices, and who holds which device now."""

from __future__ import annotations

import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.rendering.metrics import render
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.reading.sysfs.procs import qemu_guest_name, scan_holders
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.hosts import INTEL, NVIDIA
from tests.support.local import judge_tree
from tests.support.process import EXE
from tests.support.sysfs_builder import char_number

MELLANOX = 0x15B3
# This machine's own character devices, which real and fake processes hold in these tests.
CHAR_DEVICES = ("/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/null")


def number_of(device: str) -> tuple[int, int]:
    rdev = os.stat(device).st_rdev
    return os.major(rdev), os.minor(rdev)


def unheld_char_device() -> str:
    """One of CHAR_DEVICES no process of this machine holds open for writing now: the scan names
    the first holder it finds, so a test's own holder must be the only one."""
    present = [d for d in CHAR_DEVICES if os.path.exists(d)]
    held = scan_holders("/proc", {number_of(d) for d in present}) or {}
    for device in present:
        if number_of(device) not in held:
            return device
    pytest.skip(f"every one of {present} is held open for writing by some process")


def holder_process(device: str, ready: Path, *argv: str, mode: int = os.O_WRONLY) -> subprocess.Popen:
    """A child that opens `device` with `mode`, touches `ready`, and waits (at most 60 s)."""
    return subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time, pathlib; fd = os.open(sys.argv[1], int(sys.argv[2])); "
        "pathlib.Path(sys.argv[3]).write_text('x'); time.sleep(60)"), device, str(mode), str(ready), *argv])


def wait_for(ready: Path) -> None:
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline, f"{ready} never appeared"
        time.sleep(0.02)


def found(snap) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for f in snap.findings:
        out.setdefault(f.code, []).append((f.severity, f.subject))
    return out


# --- VFIO variant drivers ----------------------------------------------------------------


def mlx5_host(tree, vf_group: int) -> None:
    """A ConnectX PF on mlx5_core (group 20) and a VF bound to the mlx5_vfio_pci variant driver."""
    hosts.base(tree)
    tree.pci("0000:3b:00.0", MELLANOX, 0x101D, 0x020000, driver="mlx5_core", group=20, sriov_totalvfs=8)
    tree.pci("0000:3b:00.2", MELLANOX, 0x101E, 0x020000, driver="mlx5_vfio_pci", group=vf_group,
             physfn="0000:3b:00.0", vfio_dev="vfio0")


def test_a_variant_driver_vf_alone_in_its_group_is_viable(tree):
    mlx5_host(tree, vf_group=21)
    snap = judge_tree(tree)
    st = snap.facts.groups[21]
    assert st.vfio == ("pci_0000_3b_00_2",) and st.host == () and st.viable
    codes = found(snap)
    assert "group_mixed" not in codes and ("info", "group:21") not in codes.get("group_not_viable", [])
    text = render(snap).decode()
    assert 'passthrough_iommu_group_viable{group="21"} 1.0' in text
    assert 'passthrough_iommu_group_vfio_devices{group="21"} 1.0' in text
    assert 'passthrough_iommu_group_host_devices{group="21"} 0.0' in text


def test_a_variant_driver_vf_beside_its_pf_on_the_host_driver_is_still_mixed(tree):
    mlx5_host(tree, vf_group=20)  # no ACS: the VF shares the PF's group
    snap = judge_tree(tree)
    st = snap.facts.groups[20]
    assert st.vfio == ("pci_0000_3b_00_2",) and st.host == ("pci_0000_3b_00_0",) and not st.viable
    assert found(snap)["group_mixed"] == [("critical", "group:20")]


def test_the_vfio_device_node_counts_even_under_another_driver_name(tree):
    """The kernel's vfio-dev/ directory is the evidence; a driver name no list knows does not matter."""
    hosts.base(tree)
    tree.pci("0000:5e:00.0", 0x1DD8, 0x0008, 0x020000, driver="newvendor_accel", group=30, vfio_dev="vfio7")
    snap = judge_tree(tree)
    assert snap.facts.groups[30].vfio == ("pci_0000_5e_00_0",) and snap.facts.groups[30].viable
    assert device_object(snap, "pci_0000_5e_00_0")["vfio_dev"] == "vfio7"


# --- interrupt remapping -----------------------------------------------------------------


def gpu_on_vfio(tree) -> None:
    hosts.base(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, driver="vfio-pci", group=2, reset_method="flr")


@pytest.mark.parametrize("chips, cmdline, unsafe, remapping, expected", [
    (("IR-IO-APIC", "IR-PCI-MSIX-0000:01:00.0"), "", "N", True, None),
    (("IO-APIC", "PCI-MSIX-0000:01:00.0"), "", "N", False, ("critical", "host")),  # a GPU waits on vfio-pci
    (("IO-APIC", "PCI-MSI"), "", "Y", False, None),  # unsafe_interrupts says it instead
    (("IR-IO-APIC", "IR-PCI-MSI"), "intremap=off", "N", False, ("critical", "host")),
    (("GICv3", "ITS-MSI"), "", "N", None, None),  # not x86: nothing said, nothing wrong said
], ids=["on", "off", "off-unsafe-allowed", "intremap-off", "arm"])
def test_interrupt_remapping(tree, chips, cmdline, unsafe, remapping, expected):
    gpu_on_vfio(tree)
    tree.interrupts(*chips)
    tree.cmdline(f"root=/dev/sda1 {cmdline}")
    tree.module_param("vfio_iommu_type1", "allow_unsafe_interrupts", unsafe)
    snap = judge_tree(tree)
    assert snap.inventory.host.interrupt_remapping is remapping
    codes = found(snap)
    assert codes.get("no_interrupt_remapping", [None])[0] == expected
    assert ("unsafe_interrupts" in codes) is (unsafe == "Y")
    text = render(snap).decode()
    line = {True: "passthrough_interrupt_remapping_enabled 1.0", False: "passthrough_interrupt_remapping_enabled 0.0"}
    if remapping is None:
        assert "\npassthrough_interrupt_remapping_enabled " not in text  # absent when unknown
    else:
        assert line[remapping] in text


def test_remapping_off_without_a_vfio_device_is_a_warning(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    tree.interrupts("IO-APIC", "PCI-MSI")
    assert found(judge_tree(tree))["no_interrupt_remapping"] == [("warning", "host")]


def test_check_tells_the_truth_about_remapping(tree):
    gpu_on_vfio(tree)
    tree.interrupts("IO-APIC", "PCI-MSI")
    out = subprocess.run([EXE, "check", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)],
                         capture_output=True, text=True, timeout=60)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("VFIO requires interrupt remapping"))
    assert line.endswith(": FAIL") and out.returncode == 2
    assert "no_interrupt_remapping [host]: interrupt remapping is off (no IR- interrupt chip" in out.stdout


def test_dmar_table_tells_the_kernel_from_the_firmware(tree):
    tree.pci("0000:00:00.0", INTEL, 0x3E30, 0x060000, reset_method=None)  # no groups, no units
    assert "iommu_off_firmware" in found(judge_tree(tree))
    tree.acpi_table("DMAR")
    codes = found(judge_tree(tree))
    assert "iommu_off_kernel" in codes and "iommu_off_firmware" not in codes


# --- unreachable devices -----------------------------------------------------------------


def test_an_unreachable_device_is_named_not_taken_for_a_bridge(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    tree.pci("0000:02:00.0", NVIDIA, 0x2204, 0x030000, driver="nvidia", group=9, unreachable=True)
    snap = judge_tree(tree)
    dev = snap.inventory.devices["pci_0000_02_00_0"]
    assert dev.unreachable and dev.header_type is None
    v = snap.verdicts[dev.name]
    assert not v.eligible and v.reasons == ("unreachable: config space reads 0xffff",)
    assert found(snap)["device_unreachable"] == [("critical", "pci_0000_02_00_0")]
    assert snap.facts.groups[9].bridges == () and snap.facts.groups[9].host == ("pci_0000_02_00_0",)
    assert snap.states[dev.name] == "ineligible"


# --- who holds what ------------------------------------------------------------------------





def test_in_use_held_by_and_available(tree):
    snap = judge_tree(hosts.busy_host(tree))
    gpu, audio, nic, spare = "pci_0000_01_00_0", "pci_0000_01_00_1", "pci_0000_00_19_0", "pci_0000_00_1f_0"
    held = {"vm": "win11", "pid": 4242, "process": "qemu-system-x86"}
    assert device_object(snap, gpu)["held_by"] == held
    assert device_object(snap, audio)["held_by"] == held and device_object(snap, audio)["in_use"] is True
    assert device_object(snap, nic)["in_use"] is True and device_object(snap, nic)["held_by"] is None
    assert device_object(snap, "usb_1_1_2")["in_use"] is True and device_object(snap, "usb_1_1_2")["held_by"] is None
    assert device_object(snap, spare)["in_use"] is False and device_object(snap, spare)["available"] is True
    # The xHCI controller is eligible but a device below it is in use: blocked, not available.
    assert snap.verdicts["pci_0000_00_14_0"].eligible and snap.states["pci_0000_00_14_0"] == "blocked"
    assert snap.states["usb_1_1_4"] == "available"
    assert {n for n, s in snap.states.items() if s == "in_use"} == {gpu, audio, nic, "usb_1_1_2"}
    text = render(snap).decode()
    assert f'passthrough_device_in_use{{device="{gpu}",type="pci",vm="win11"}} 1.0' in text
    assert f'passthrough_device_in_use{{device="{nic}",type="pci",vm=""}} 1.0' in text
    assert f'passthrough_device_available{{device="{spare}",type="pci"}} 1.0' in text
    assert f'passthrough_device_available{{device="{gpu}",type="pci"}} 0.0' in text


def test_an_sriov_pf_one_of_whose_vfs_cannot_be_read_is_blocked(tree):
    """The NIC PF 81:00.0 lists its VFs 81:02.0 and 81:02.1 and is available while both are read; when
    81:02.1's directory cannot be listed (skipped, counted), it may be in use: the PF is blocked."""
    hosts.base(tree)
    hosts.sriov_nic(tree)
    assert judge_tree(tree).states["pci_0000_81_00_0"] == "available"
    vf = tree.pci_path("0000:81:02.1")
    shutil.rmtree(vf)
    vf.write_text("")
    snap = judge_tree(tree)
    assert "pci_0000_81_02_1" not in snap.inventory and dict(snap.errors) == {"vanished": 1}
    assert snap.states["pci_0000_81_00_0"] == "blocked"
    assert snap.blocked_by["pci_0000_81_00_0"] == ("its virtual function pci_0000_81_02_1 could not be read: "
                                                   "cannot tell whether it is in use or carries a vGPU")
    assert snap.states["pci_0000_81_02_0"] == "available"


def test_available_on_the_command_line(tree):
    hosts.busy_host(tree)
    args = ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)]
    out = subprocess.run([EXE, "devices", "--available", "--cap", "pci", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["pci_0000_00_1f_0"]
    off = subprocess.run([EXE, "devices", "--available", "--cap", "pci", "--no-live.process-scan", *args],
                         capture_output=True, text=True, timeout=60)
    assert off.stdout.split() == ["pci_0000_00_1f_0"]  # enable= alone already says the GPU is taken
    conflict = subprocess.run([EXE, "devices", "--available", "--affected-by", "pci_0000_00_1f_0", *args],
                              capture_output=True, text=True, timeout=60)
    assert conflict.returncode == 2 and conflict.stderr == "Conflicting flag filters specified.\n"


def test_a_cdev_and_a_usbfs_node_name_their_devices(tree):
    """The VFIO cdev's number (vfio-dev/vfio3/dev) and the USB device's (dev) are /dev/full's and
    /dev/random's here: the QEMU holding those two real devices holds the NIC VF and the stick."""
    hosts.base(tree)
    tree.pci("0000:3b:00.2", MELLANOX, 0x101E, 0x020000, driver="mlx5_vfio_pci", group=21, vfio_dev="vfio3",
             cdev=char_number("/dev/full"))
    hosts.usb_tree(tree)
    tree.write(tree.sys / "bus" / "usb" / "devices" / "1-1.4" / "dev", char_number("/dev/random"))
    tree.write(tree.sys / "bus" / "usb" / "devices" / "1-1.2" / "dev", "189:2")  # the mouse: nobody holds it
    tree.process(77, "qemu-kvm", ["qemu-kvm", "-name", "db1"], {9: "/dev/full", 10: "/dev/random"})
    snap = judge_tree(tree)
    assert snap.inventory.devices["pci_0000_3b_00_2"].char_dev == number_of("/dev/full")
    assert snap.inventory.devices["usb_1_1_2"].char_dev == (189, 2)
    for name in ("pci_0000_3b_00_2", "usb_1_1_4"):
        assert device_object(snap, name)["held_by"] == {"vm": "db1", "pid": 77, "process": "qemu-kvm"}
    assert set(snap.facts.in_use) == {"pci_0000_3b_00_2", "usb_1_1_4"}
    assert snap.states["usb_1_1_2"] == "available"


def test_the_scan_can_be_switched_off(tree):
    hosts.busy_host(tree)
    from passthrough_exporter.judging.inspector import Inspector
    from passthrough_exporter.reading.sources.sysfs import SysfsSource

    snap = Inspector().judge(SysfsSource(str(tree.sys), str(tree.proc), scan_processes=False).read())
    assert snap.inventory.host.holders is None
    assert device_object(snap, "pci_0000_01_00_0")["held_by"] is None  # still in use: enable=1
    assert device_object(snap, "pci_0000_01_00_0")["in_use"] is True


@pytest.mark.parametrize("argv, name", [
    (["qemu", "-name", "guest=win11,debug-threads=on"], "win11"),
    (["qemu", "-name", "vm1,process=qemu:vm1"], "vm1"),
    (["qemu", "-name", "process=x,guest=a,,b"], "a,b"),
    (["qemu", "-m", "1024"], None),
    (["qemu", "-name"], None),
])
def test_qemu_guest_names(argv, name):
    assert qemu_guest_name(argv) == name


def test_a_real_process_holding_a_device_is_found_through_the_real_proc(tmp_path):
    """A child opens a real character device for writing; the scan of this machine's /proc finds it
    by the device's number, and names the VM from its -name."""
    device = unheld_char_device()
    ready = tmp_path / "ready"
    child = holder_process(device, ready, "-name", "guest=legit-vm")
    try:
        wait_for(ready)
        holders = scan_holders("/proc", {number_of(device)})
        assert holders is not None and holders[number_of(device)].pid == child.pid
        assert holders[number_of(device)].process == Path(sys.executable).name[:15]
        assert holders[number_of(device)].vm == "legit-vm"
    finally:
        child.kill()
        child.wait(10)
    assert number_of(device) not in (scan_holders("/proc", {number_of(device)}) or {})  # let go: held no more


def test_a_vf_whose_config_reads_ffff_ids_is_not_unreachable(tree):
    """SR-IOV VFs read 0xffff as vendor and device id by the spec: only all ones everywhere is a lost device."""
    hosts.base(tree)
    hosts.sriov_nic(tree)
    snap = judge_tree(tree)
    vfs = [d for d in snap.inventory if d.physfn]
    assert vfs and all((tree.pci_path(d.address) / "config").read_bytes()[:4] == b"\xff" * 4 for d in vfs)
    assert not any(d.unreachable for d in vfs) and "device_unreachable" not in found(snap)
    assert all(snap.verdicts[d.name].eligible for d in vfs)


def test_a_hostile_device_node_name_cannot_stop_a_refresh(tree):
    """Any process the exporter can read may hold a node named /dev/vfio/² (a digit to isdigit(), not to int())."""
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    tree.process(66, "evil", ["evil"], {3: "/dev/vfio/²", 4: "/dev/bus/usb/٣/1"})
    snap = judge_tree(tree)
    assert "pci_0000_01_00_0" in snap.inventory and not snap.facts.in_use


def test_a_held_group_marks_its_endpoints_not_its_bridges(tree):
    hosts.base(tree)
    tree.pci("0000:00:1c.0", INTEL, 0xA110, 0x060400, driver="pcieport", group=5, reset_method=None)
    tree.pci("0000:02:00.0", INTEL, 0x15BC, 0x020000, parent="0000:00:1c.0", driver="vfio-pci", group=5)
    tree.vfio_group(5, char_number("/dev/zero"))
    tree.process(90, "qemu-kvm", ["qemu-kvm", "-name", "router"], {7: "/dev/zero"})
    snap = judge_tree(tree)
    assert set(snap.facts.in_use) == {"pci_0000_02_00_0"}
    assert snap.facts.in_use["pci_0000_02_00_0"].vm == "router"


def vfio_gpu_in_group_4(tree) -> str:
    """A GPU on vfio-pci alone in group 4, whose VFIO group node has /dev/zero's number."""
    hosts.base(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, driver="vfio-pci", group=4, reset_method="flr")
    tree.vfio_group(4, char_number("/dev/zero"))
    return "pci_0000_01_00_0"


def test_a_file_only_named_like_a_device_holds_nothing(tree, tmp_path):
    """Links under /dev/ whose files are not group 4's node: a regular file (in a private
    directory of /dev/shm, the one place under /dev a test may write), another real character
    device, a name that leads nowhere. None holds the GPU, whatever -name says."""
    gpu = vfio_gpu_in_group_4(tree)
    assert not os.path.exists("/dev/vfio/4")
    fds = {3: "/dev/null", 4: "/dev/vfio/4"}
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as private:
        fake = Path(private) / "vfio" / "4"
        fake.parent.mkdir()
        fake.write_text("")
        if str(fake).startswith("/dev/"):
            fds[5] = str(fake)
        tree.process(31, "qemu-system-x86", ["qemu-system-x86_64", "-name", "guest=prod-db-01"], fds)
        snap = judge_tree(tree)
    assert snap.inventory.host.holders == {}  # scanned: nothing held
    assert snap.facts.in_use == {} and device_object(snap, gpu)["held_by"] is None
    assert snap.states[gpu] == "available"


@pytest.mark.parametrize("flags, held", [
    (0o2100002, True),  # O_RDWR: how QEMU opens its devices
    (0o2100001, True),  # O_WRONLY
    (0o2100000, False),  # O_RDONLY: lsusb reads descriptors that way, anyone may
    (0o12000000, False),  # O_PATH: needs no permission on the node at all
    (None, False),  # no fdinfo: holding is not proven
], ids=["rdwr", "wronly", "rdonly", "o_path", "no-fdinfo"])
def test_only_a_device_open_for_writing_holds_it(tree, flags, held):
    gpu = vfio_gpu_in_group_4(tree)
    tree.process(41, "qemu-kvm", ["qemu-kvm", "-name", "db1"], {6: "/dev/zero"}, flags={6: flags or 0})
    if flags is None:
        (tree.proc / "41" / "fdinfo" / "6").unlink()
    snap = judge_tree(tree)
    assert device_object(snap, gpu)["held_by"] == ({"vm": "db1", "pid": 41, "process": "qemu-kvm"} if held else None)
    assert snap.states[gpu] == ("in_use" if held else "available")


def test_a_link_outside_dev_is_never_stated(tree, tmp_path):
    """Process 51's link text is a path in tmp that leads to /dev/zero, the group's node: were it
    stat'ed, 51 would hold the GPU. Only text under /dev/ is stat'ed, so process 52 holds it."""
    gpu = vfio_gpu_in_group_4(tree)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.symlink_to("/dev/zero")
    tree.process(51, "spoof", ["spoof", "-name", "prod-db-01"], {3: str(elsewhere)})
    snap = judge_tree(tree)
    assert snap.inventory.host.holders == {} and device_object(snap, gpu)["held_by"] is None
    tree.process(52, "qemu-kvm", ["qemu-kvm", "-name", "db1"], {3: "/dev/zero"})
    assert device_object(judge_tree(tree), gpu)["held_by"] == {"vm": "db1", "pid": 52, "process": "qemu-kvm"}


@pytest.mark.parametrize("garbage", ["banana", "0:0", "1:2:3", "-1:5", "1:", "4096:0", "1:1048576", "٣:1"])
def test_garbage_in_a_dev_file_is_counted_not_fatal(tree, garbage):
    """A broken `dev` leaves that number unknown (counted), the rest of the read as it was; a
    process holding a real device never matches it."""
    gpu = vfio_gpu_in_group_4(tree)
    (tree.sys / "devices" / "virtual" / "vfio" / "4" / "dev").write_text(garbage + "\n")
    tree.pci("0000:3b:00.2", MELLANOX, 0x101E, 0x020000, driver="mlx5_vfio_pci", group=21, vfio_dev="vfio3",
             cdev=garbage)
    hosts.usb_tree(tree)
    tree.write(tree.sys / "bus" / "usb" / "devices" / "1-1.4" / "dev", garbage)
    tree.process(61, "qemu-kvm", ["qemu-kvm", "-name", "db1"], {3: "/dev/zero", 4: "/dev/null"})
    snap = judge_tree(tree)
    assert snap.inventory.errors == {"bad_attribute": 3}
    assert snap.inventory.host.vfio_groups == {}
    assert snap.inventory.devices["pci_0000_3b_00_2"].char_dev is None
    assert snap.inventory.devices["usb_1_1_4"].char_dev is None
    assert snap.facts.in_use == {} and snap.states[gpu] == "available"


def test_a_missing_dev_file_is_no_error(tree):
    """Captures made before `dev` was read have none: unknown, and nothing counted."""
    hosts.base(tree)
    tree.pci("0000:3b:00.2", MELLANOX, 0x101E, 0x020000, driver="mlx5_vfio_pci", group=21, vfio_dev="vfio3")
    hosts.usb_tree(tree)
    inv = judge_tree(tree).inventory
    assert not inv.errors and inv.devices["pci_0000_3b_00_2"].char_dev is None
    assert inv.devices["usb_1_1_4"].char_dev is None


def _spawn(argv: list[str]) -> subprocess.Popen:
    """A child that says `ready` on stdout when it has opened what it holds."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ready(child: subprocess.Popen) -> None:
    readable, _, _ = select.select([child.stdout], [], [], 15)
    line = child.stdout.readline() if readable else ""
    if line.strip() != "ready":
        child.kill()
        pytest.fail(f"child never got ready: {line!r} {child.stderr.read()!r}")


def _links(pid: int) -> list[tuple[str, os.stat_result | None, str]]:
    """(link text, stat of the open file, fdinfo) of each open file of `pid`: what the attack staged."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        text = os.readlink(f"/proc/{pid}/fd/{fd}")
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            st = None
        out.append((text, st, Path(f"/proc/{pid}/fdinfo/{fd}").read_text()))
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: to read other users' fd/ and to run a child as nobody")
def test_a_local_user_cannot_forge_a_holder_through_the_real_proc(tree, tmp_path):
    """The spoof of this machine's real /proc: user `nobody` in a user and mount namespace of its
    own mounts a tmpfs on /dev and holds a file it made there, /dev/vfio/4, open read-write; a
    second `nobody` process opens the real node of group 4 (this fixture says /dev/full's, say)
    with O_PATH and read-only. Both say `-name guest=prod-db-01`. Neither holds group 4; a process
    that opens the node for writing does (the control: the test could fail)."""
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    python = "/usr/bin/python3"
    if not (shutil.which("setpriv") and shutil.which("unshare") and os.access(python, os.X_OK)):
        pytest.skip("needs setpriv, unshare and /usr/bin/python3")
    probe = subprocess.run([*nobody, "unshare", "-Urm", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"an unprivileged user cannot make user namespaces here: {probe.stderr.strip()}")
    device = unheld_char_device()
    number = number_of(device)
    hosts.base(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, driver="vfio-pci", group=4, reset_method="flr")
    tree.vfio_group(4, char_number(device))
    hold = "import os, sys, time; {opens}; print('ready', flush=True); time.sleep(60)"
    own_dev = ("mount -t tmpfs none /dev && mkdir /dev/vfio && : > /dev/vfio/4 && exec " + python + " -c \""
               + hold.format(opens="os.open('/dev/vfio/4', os.O_RDWR)") + "\" -name guest=prod-db-01")
    children = []
    try:
        namespaced = _spawn([*nobody, "unshare", "-Urm", "sh", "-c", own_dev])
        children.append(namespaced)
        o_path = _spawn([*nobody, python, "-c", hold.format(
            opens="os.open(sys.argv[1], os.O_PATH); os.open(sys.argv[1], os.O_RDONLY)"),
            device, "-name", "guest=prod-db-01"])
        children.append(o_path)
        for child in children:
            _ready(child)
        # The attack is staged: the link says /dev/vfio/4 (a regular file), the others are the real node.
        staged = _links(namespaced.pid)
        assert any(text == "/dev/vfio/4" and st is not None and stat.S_ISREG(st.st_mode) for text, st, _ in staged)
        real = [st for text, st, _ in _links(o_path.pid) if text == device]
        assert len(real) == 2 and all(stat.S_ISCHR(st.st_mode) and number_of(device) == (
            os.major(st.st_rdev), os.minor(st.st_rdev)) for st in real)
        assert scan_holders("/proc", {number}) == {}
        snap = Inspector().judge(SysfsSource(str(tree.sys), "/proc").read())
        assert snap.inventory.host.vfio_groups == {4: number}
        assert snap.facts.in_use == {} and device_object(snap, "pci_0000_01_00_0")["held_by"] is None

        ready = tmp_path / "ready"
        legit = holder_process(device, ready, "-name", "guest=legit-vm")
        children.append(legit)
        wait_for(ready)
        holders = scan_holders("/proc", {number})
        assert holders is not None and holders[number].pid == legit.pid and holders[number].vm == "legit-vm"
        snap = Inspector().judge(SysfsSource(str(tree.sys), "/proc").read())
        assert device_object(snap, "pci_0000_01_00_0")["held_by"] == {
            "vm": "legit-vm", "pid": legit.pid, "process": Path(sys.executable).name[:15]}
    finally:
        for child in children:
            child.kill()
            child.wait(10)


def test_iommufd_unsafe_interrupts_weaken_isolation_too(tree):
    gpu_on_vfio(tree)
    tree.interrupts("IO-APIC", "PCI-MSI")
    tree.module_param("iommufd", "allow_unsafe_interrupts", "Y")
    codes = found(judge_tree(tree))
    assert codes["unsafe_interrupts"] == [("critical", "host")] and "no_interrupt_remapping" not in codes


def test_remapping_unknown_never_passes_silently(tree):
    gpu_on_vfio(tree)
    (tree.proc / "interrupts").unlink()
    snap = judge_tree(tree)
    assert snap.inventory.host.interrupt_remapping is None
    assert found(snap)["interrupt_remapping_unknown"] == [("warning", "host")]
