"""VFIO backends on fixture hosts, answers worked out by hand: the group interface, the VFIO cdev
(vfio-dev/vfio<N>/dev) and iommufd (class/misc/iommu), in the metrics, in `check` (its note line,
`vfio_no_cdev`, `--json`), in the holder scan, and through a capture."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.model import Device, HostFacts, Inventory
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.rendering.metrics import render
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.hosts import INTEL, NVIDIA
from tests.support.local import judge_tree
from tests.support.process import EXE
from tests.support.sysfs_builder import char_number
from tests.test_capture import members, round_trip

CDEV, IOMMUFD = "passthrough_vfio_cdev_enabled", "passthrough_iommufd_enabled"
NO_CDEV_FIX = ("fix: to open them through iommufd (QEMU or libvirt with iommufd, KubeVirt 1.9 and newer), boot a "
               "kernel 6.6 or newer built with CONFIG_VFIO_DEVICE_CDEV=y and CONFIG_IOMMUFD; until then use VFIO's "
               "group interface (/dev/vfio/<group>)")


def samples(snap) -> dict[str, float]:
    """The two backend metrics' samples: absent ones are missing from the dict."""
    out = {}
    for line in render(snap).decode().splitlines():
        name, _, value = line.partition(" ")
        if name in (CDEV, IOMMUFD):
            out[name] = float(value)
    return out


def no_cdev(snap) -> list[tuple[str, str, str]]:
    return [(f.severity, f.subject, f.message) for f in snap.findings if f.code == "vfio_no_cdev"]


def check(tree, *args) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "check", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc), *args],
                          capture_output=True, text=True, timeout=60)


def desktop(tree) -> None:
    """`base` and `desktop_gpu`: the GPU on nvidia, its audio on snd_hda_intel; VFIO drives nothing."""
    hosts.base(tree)
    hosts.desktop_gpu(tree)


# --- metrics and facts ----------------------------------------------------------------------


def test_a_host_with_cdev_and_iommufd(tree):
    """iommufd_host: the NIC's vfio-dev/vfio0 has `dev`, group 7 has its node, class/misc/iommu is there."""
    hosts.iommufd_host(tree)
    snap = judge_tree(tree)
    assert snap.inventory.host.iommufd is True
    assert dict(snap.facts.backends) == {"group": True, "cdev": True, "iommufd": True}
    assert snap.facts.cdev_missing == ()
    assert samples(snap) == {CDEV: 1.0, IOMMUFD: 1.0}
    assert no_cdev(snap) == [] and not snap.inventory.errors


def test_a_host_with_neither(tree):
    """group_only_host: vfio-dev/vfio0 without `dev`; class/misc holds `vfio` but no `iommu`."""
    hosts.group_only_host(tree)
    snap = judge_tree(tree)
    assert snap.inventory.host.iommufd is False
    assert dict(snap.facts.backends) == {"group": True, "cdev": False, "iommufd": False}
    assert snap.facts.cdev_missing == ("pci_0000_00_19_0",)
    assert samples(snap) == {CDEV: 0.0, IOMMUFD: 0.0}
    assert no_cdev(snap) == [("warning", "host", (
        "1 device on a VFIO driver without a VFIO cdev node (/dev/vfio/devices/vfio<N>): pci_0000_00_19_0; "
        "the kernel predates 6.6 or lacks CONFIG_VFIO_DEVICE_CDEV, so iommufd users cannot open them"))]


def test_no_device_on_vfio_leaves_cdev_absent(tree):
    """Nothing on a VFIO driver: nothing tells whether the kernel makes cdev nodes. No group node
    either; iommufd is there (class/misc/iommu)."""
    desktop(tree)
    tree.iommufd()
    snap = judge_tree(tree)
    assert dict(snap.facts.backends) == {"group": None, "cdev": None, "iommufd": True}
    assert samples(snap) == {IOMMUFD: 1.0}
    assert no_cdev(snap) == []


def test_pci_stub_never_counts(tree):
    """A GPU parked on pci-stub (VFIO-safe for group viability) never gets a VFIO device: it tells
    nothing about cdev nodes, and is not named as lacking one."""
    hosts.base(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, driver="pci-stub", group=2, reset_method="flr")
    tree.misc("vfio", "10:196")
    snap = judge_tree(tree)
    assert snap.facts.groups[2].vfio == ("pci_0000_01_00_0",)  # still VFIO-safe where viability is judged
    assert dict(snap.facts.backends) == {"group": None, "cdev": None, "iommufd": False}
    assert samples(snap) == {IOMMUFD: 0.0}
    assert no_cdev(snap) == []


def before_6_1(tree) -> None:
    """vfio-pci without a vfio-dev/ directory (a kernel before 6.1), a pci-stub device beside it."""
    hosts.base(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, driver="vfio-pci", group=2, reset_method="flr")
    tree.pci("0000:02:00.0", INTEL, 0x15BC, 0x020000, driver="pci-stub", group=3, reset_method="flr")


def test_a_kernel_before_6_1_has_no_vfio_dev_at_all(tree):
    """No cdev for the vfio-pci GPU; the pci-stub NIC is not named. class/misc without `iommu`."""
    before_6_1(tree)
    tree.misc("vfio", "10:196")
    snap = judge_tree(tree)
    assert dict(snap.facts.backends) == {"group": None, "cdev": False, "iommufd": False}
    assert snap.facts.cdev_missing == ("pci_0000_01_00_0",)
    assert samples(snap) == {CDEV: 0.0, IOMMUFD: 0.0}


def test_a_tree_without_class_misc_proves_no_device_lacks_a_cdev(tree):
    """The same devices in a tree without class/misc (a partial capture, or a source without sysfs):
    not a host's whole sysfs, so a vfio-dev/ missing there proves nothing. Both metrics absent, no
    finding."""
    before_6_1(tree)
    snap = judge_tree(tree)
    assert dict(snap.facts.backends) == {"group": None, "cdev": None, "iommufd": None}
    assert snap.facts.cdev_missing == () and samples(snap) == {} and no_cdev(snap) == []
    # ... but the GPU is on vfio-pci: whether it has a cdev cannot be told, and a warning says so.
    assert snap.facts.backends_unknown == {"group": "no VFIO group node", "cdev": "no <sysfs>/class/misc",
                                           "iommufd": "no <sysfs>/class/misc"}
    assert snap.facts.cdev_unknown == ("pci_0000_01_00_0",)
    assert [f.message for f in snap.findings if f.code == "vfio_cdev_unknown"] == [
        "whether 1 device on a VFIO driver has a VFIO cdev node (/dev/vfio/devices/vfio<N>) cannot be told "
        "(no <sysfs>/class/misc): pci_0000_01_00_0"]


def test_the_kernels_vfio_dev_counts_whatever_the_driver_is_called(tree):
    """A variant driver's VF with its cdev, and a function under a driver name no list knows whose
    vfio-dev/vfio1 has no `dev`: the second is VFIO's (vfio-dev/ says so) and lacks a node. iommufd is
    there (it needs the cdev nodes to be of use)."""
    hosts.base(tree)
    tree.pci("0000:3b:00.2", 0x15B3, 0x101E, 0x020000, driver="mlx5_vfio_pci", group=21, vfio_dev="vfio0",
             cdev="237:0")
    tree.pci("0000:5e:00.0", 0x1DD8, 0x0008, 0x020000, driver="newvendor_accel", group=30, vfio_dev="vfio1")
    tree.iommufd()
    snap = judge_tree(tree)
    assert snap.facts.backends["cdev"] is False and snap.facts.cdev_missing == ("pci_0000_5e_00_0",)
    assert samples(snap) == {CDEV: 0.0, IOMMUFD: 1.0}


def test_many_devices_without_cdev_are_counted_and_the_first_five_named(tree):
    """Nine NICs on vfio-pci (20:00.0 to 28:00.0), none with vfio-dev/; class/misc without iommu."""
    hosts.resetless_nics(tree)
    tree.misc("vfio", "10:196")
    (finding,) = no_cdev(judge_tree(tree))
    assert finding[2] == (
        "9 devices on a VFIO driver without a VFIO cdev node (/dev/vfio/devices/vfio<N>): pci_0000_20_00_0, "
        "pci_0000_21_00_0, pci_0000_22_00_0, pci_0000_23_00_0, pci_0000_24_00_0 and 4 more; the kernel "
        "predates 6.6 or lacks CONFIG_VFIO_DEVICE_CDEV, so iommufd users cannot open them")


# --- a VFIO device node that cannot be read ----------------------------------------------------


def vfio_dev(tree):
    """The NIC 00:19.0's vfio-dev/ directory."""
    return tree.pci_path("0000:00:19.0") / "vfio-dev"


def unknown_cdev(snap) -> list[tuple[str, str, str]]:
    return [(f.severity, f.subject, f.message) for f in snap.findings if f.code == "vfio_cdev_unknown"]


def test_a_garbage_dev_still_says_the_cdev_exists(tree):
    """iommufd_host with vfio-dev/vfio0/dev holding "garbage": the kernel listed `dev`, so the NIC has
    a cdev; only its number is unknown (one bad_attribute), so the holder scan cannot match it."""
    hosts.iommufd_host(tree)
    (vfio_dev(tree) / "vfio0" / "dev").write_text("garbage")
    snap = judge_tree(tree)
    nic = snap.inventory.devices["pci_0000_00_19_0"]
    assert (nic.vfio_dev, nic.vfio_cdev, nic.char_dev) == ("vfio0", True, None)
    assert dict(snap.inventory.errors) == {"bad_attribute": 1}
    assert dict(snap.facts.backends) == {"group": True, "cdev": True, "iommufd": True}
    assert samples(snap) == {CDEV: 1.0, IOMMUFD: 1.0}
    assert no_cdev(snap) == [] and unknown_cdev(snap) == []


def test_a_stray_entry_is_not_the_node(tree):
    """A file vfio-dev/vfio (no number) sorts before vfio0: the node is vfio0, with its `dev` 237:0."""
    hosts.iommufd_host(tree)
    (vfio_dev(tree) / "vfio").write_text("x")
    snap = judge_tree(tree)
    nic = snap.inventory.devices["pci_0000_00_19_0"]
    assert (nic.vfio_dev, nic.vfio_cdev, nic.char_dev) == ("vfio0", True, (237, 0))
    assert dict(snap.facts.backends) == {"group": True, "cdev": True, "iommufd": True}
    assert no_cdev(snap) == [] and not snap.inventory.errors


def test_a_no_iommu_devices_node_is_its_cdev(tree):
    """In VFIO's no-IOMMU mode a 6.6+ kernel names the node noiommu-vfio<N> ("%svfio%d" with
    "noiommu-"): it is the NIC's node, its `dev` 237:0 the cdev."""
    hosts.iommufd_host(tree)
    (vfio_dev(tree) / "vfio0").rename(vfio_dev(tree) / "noiommu-vfio0")
    snap = judge_tree(tree)
    nic = snap.inventory.devices["pci_0000_00_19_0"]
    assert (nic.vfio_dev, nic.vfio_cdev, nic.char_dev) == ("noiommu-vfio0", True, (237, 0))
    assert dict(snap.facts.backends) == {"group": True, "cdev": True, "iommufd": True}
    assert no_cdev(snap) == [] and unknown_cdev(snap) == [] and not snap.inventory.errors


UNREAD = ("whether 1 device on a VFIO driver has a VFIO cdev node (/dev/vfio/devices/vfio<N>) cannot be told "
          "(a VFIO device node cannot be read): pci_0000_00_19_0")


def node_is_a_file(tree) -> None:
    """vfio-dev/vfio0 is a file, not a directory: whether it lists `dev` is unknown."""
    shutil.rmtree(vfio_dev(tree) / "vfio0")
    (vfio_dev(tree) / "vfio0").write_text("")


def vfio_dev_is_a_file(tree) -> None:
    """vfio-dev itself is a file: it cannot be listed, so no node is named; the NIC is still on vfio-pci."""
    shutil.rmtree(vfio_dev(tree))
    vfio_dev(tree).write_text("")


def only_a_stray_entry(tree) -> None:
    """vfio-dev/ lists `vfio` only, no vfio<N>: no node to ask."""
    shutil.rmtree(vfio_dev(tree) / "vfio0")
    (vfio_dev(tree) / "vfio").write_text("x")


@pytest.mark.parametrize("spoil, errors", [
    (node_is_a_file, {"vanished": 1}),  # ENOTDIR
    (vfio_dev_is_a_file, {"vanished": 1}),
    (only_a_stray_entry, {}),
], ids=["node-a-file", "vfio-dev-a-file", "stray-only"])
def test_a_node_that_cannot_be_read_leaves_cdev_unknown(tree, spoil, errors):
    """iommufd_host, then the NIC's node spoiled: its cdev cannot be told. Not absent (no
    vfio_no_cdev, no 0 sample): unknown, and `vfio_cdev_unknown` says so."""
    hosts.iommufd_host(tree)
    spoil(tree)
    snap = judge_tree(tree)
    assert snap.inventory.devices["pci_0000_00_19_0"].vfio_cdev is None
    assert dict(snap.inventory.errors) == errors
    assert dict(snap.facts.backends) == {"group": True, "cdev": None, "iommufd": True}
    assert snap.facts.backends_unknown == {"cdev": "a VFIO device node cannot be read"}
    assert snap.facts.cdev_missing == () and snap.facts.cdev_unknown == ("pci_0000_00_19_0",)
    assert samples(snap) == {IOMMUFD: 1.0}
    assert no_cdev(snap) == [] and unknown_cdev(snap) == [("warning", "host", UNREAD)]


def test_an_unreadable_node_does_not_hide_a_missing_one(tree):
    """The NIC's node is a file (unknown) and a GPU on vfio-pci has vfio-dev/vfio1 without `dev`
    (missing): one is missing, so cdev is absent (0) and only vfio_no_cdev is said."""
    hosts.iommufd_host(tree)
    node_is_a_file(tree)
    tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, driver="vfio-pci", group=2, vfio_dev="vfio1")
    snap = judge_tree(tree)
    assert snap.facts.backends["cdev"] is False and snap.facts.cdev_missing == ("pci_0000_01_00_0",)
    assert samples(snap) == {CDEV: 0.0, IOMMUFD: 1.0}
    assert [s for s, _, _ in no_cdev(snap)] == ["warning"] and unknown_cdev(snap) == []


def test_cdev_is_true_only_when_every_vfio_function_says_so(tree):
    """The NIC has its cdev; a GPU on vfio-pci whose vfio-dev/ cannot be listed: cdev unknown, not 1."""
    hosts.iommufd_host(tree)
    gpu = tree.pci("0000:01:00.0", NVIDIA, 0x2484, 0x030000, driver="vfio-pci", group=2)
    (gpu / "vfio-dev").write_text("")
    snap = judge_tree(tree)
    assert snap.facts.backends["cdev"] is None and snap.facts.cdev_unknown == ("pci_0000_01_00_0",)
    assert samples(snap) == {IOMMUFD: 1.0}


def test_a_source_without_sysfs_cannot_tell_a_vfio_devices_cdev():
    """What libvirt without sysfs gives: a GPU whose driver is vfio-pci, nothing read from sysfs (no
    vfio-dev/, no class/misc: HostFacts' defaults). Its cdev is unknown and a warning says so."""
    gpu = Device(name="pci_0000_05_00_0", type="pci", address="0000:05:00.0", pci_class="0x030000", header_type=0,
                 iommu_group=5, driver="vfio-pci")
    snap = Inspector().judge(Inventory([gpu], HostFacts()))
    assert gpu.vfio_cdev is None and dict(snap.facts.backends)["cdev"] is None
    assert snap.facts.backends_unknown["cdev"] == "no <sysfs>/class/misc"
    assert unknown_cdev(snap) == [("warning", "host", (
        "whether 1 device on a VFIO driver has a VFIO cdev node (/dev/vfio/devices/vfio<N>) cannot be told "
        "(no <sysfs>/class/misc): pci_0000_05_00_0"))]


# --- check ------------------------------------------------------------------------------------


def test_check_on_a_host_with_every_backend(tree):
    hosts.iommufd_host(tree)
    out = check(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "VFIO devices have cdev nodes (iommufd)         : PASS\n" in out.stdout
    assert out.stdout.splitlines()[-1] == "note: VFIO backends: group, cdev, iommufd"


def cdev_warned(tree) -> tuple[list[str], int]:
    """`check`'s lines, having exited 1, and where the cdev check's line says WARN."""
    out = check(tree)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    return lines, lines.index("VFIO devices have cdev nodes (iommufd)         : WARN")


def test_check_on_a_host_with_the_group_interface_only(tree):
    hosts.group_only_host(tree)
    lines, at = cdev_warned(tree)
    assert lines[at + 1:at + 3] == [
        "    warning vfio_no_cdev [host]: 1 device on a VFIO driver without a VFIO cdev node "
        "(/dev/vfio/devices/vfio<N>): pci_0000_00_19_0; the kernel predates 6.6 or lacks CONFIG_VFIO_DEVICE_CDEV, "
        "so iommufd users cannot open them",
        "    " + NO_CDEV_FIX,
    ]
    assert lines[at + 3].endswith(": PASS")  # the next check line: nothing else under it
    assert lines[-1] == "note: VFIO backends: group; absent: cdev, iommufd"


def test_check_says_what_it_cannot_tell(tree):
    """No VFIO device, no group node, no class/misc: nothing is offered for sure, nothing absent."""
    desktop(tree)
    out = check(tree)
    assert out.stdout.splitlines()[-1] == (
        "note: VFIO backends: none known; unknown: group (no VFIO group node), cdev (no VFIO-driven device), "
        "iommufd (no <sysfs>/class/misc)")
    assert "vfio_no_cdev" not in out.stdout and "vfio_cdev_unknown" not in out.stdout
    assert "VFIO devices have cdev nodes (iommufd)         : PASS\n" in out.stdout  # nothing to open


UNKNOWN_FIX = ("fix: read the host's own /sys (mount it whole into the container: -v /sys:/host/sys:ro; with a "
               "remote libvirt URI, run the check on the host itself), or check "
               "`ls /sys/bus/pci/devices/ADDR/vfio-dev/*/dev` by hand for each device named")


def test_check_never_passes_cdev_without_evidence(tree):
    """A NIC on vfio-pci without vfio-dev/ in a tree without class/misc (a partial capture): whether it
    has a cdev cannot be told. The line warns (exit 1) and the note says why, not "no VFIO device"."""
    hosts.clean_host(tree, cdev=None)
    shutil.rmtree(vfio_dev(tree))
    shutil.rmtree(tree.sys / "class" / "misc")
    lines, at = cdev_warned(tree)
    assert lines[at + 1:at + 3] == [
        "    warning vfio_cdev_unknown [host]: whether 1 device on a VFIO driver has a VFIO cdev node "
        "(/dev/vfio/devices/vfio<N>) cannot be told (no <sysfs>/class/misc): pci_0000_00_19_0",
        "    " + UNKNOWN_FIX,
    ]
    assert lines[-1] == ("note: VFIO backends: none known; unknown: group (no VFIO group node), "
                         "cdev (no <sysfs>/class/misc), iommufd (no <sysfs>/class/misc)")


def test_check_names_an_unreadable_node_as_the_cause(tree):
    hosts.iommufd_host(tree)
    node_is_a_file(tree)
    out = check(tree)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "    warning vfio_cdev_unknown [host]: " + UNREAD + "\n" in out.stdout
    assert out.stdout.splitlines()[-1] == (
        "note: VFIO backends: group, iommufd; unknown: cdev (a VFIO device node cannot be read)")


@pytest.mark.parametrize("host, backends", [
    (hosts.iommufd_host, {"group": True, "cdev": True, "iommufd": True}),
    (hosts.group_only_host, {"group": True, "cdev": False, "iommufd": False}),
    (desktop, {"group": None, "cdev": None, "iommufd": None}),
], ids=["every-backend", "group-only", "unknown"])
def test_check_json_gives_the_backends(tree, host, backends):
    host(tree)
    report = json.loads(check(tree, "--json").stdout)
    assert report["vfio_backends"] == backends
    (line,) = [c for c in report["checks"] if c["check"] == "VFIO devices have cdev nodes (iommufd)"]
    if backends["cdev"] is False:
        assert line["status"] == "WARN" and [f["code"] for f in line["findings"]] == ["vfio_no_cdev"]
        assert line["findings"][0]["fix"] == NO_CDEV_FIX.removeprefix("fix: ")
        assert report["status"] == "WARN"
    else:
        assert line == {"check": "VFIO devices have cdev nodes (iommufd)", "status": "PASS", "findings": []}


# --- holders ------------------------------------------------------------------------------------


def test_qemu_on_iommufd_holds_the_device_by_its_cdev_and_dev_iommu_holds_nothing(tree):
    """QEMU with iommufd opens /dev/iommu and the device's cdev (/dev/vfio/devices/vfio0), not the
    group node. The fake procfs cannot hold those nodes: the NIC's cdev number is /dev/full's, and
    /dev/null stands for /dev/iommu (class/misc/iommu's `dev` is /dev/null's number). Process 81
    holding only "/dev/iommu" holds nothing; process 80 holding both holds the NIC."""
    hosts.clean_host(tree, cdev=char_number("/dev/full"))
    tree.misc("iommu", char_number("/dev/null"))
    nic = "pci_0000_00_19_0"
    tree.process(81, "qemu-kvm", ["qemu-kvm", "-name", "guest=idle"], {20: "/dev/null"})
    snap = judge_tree(tree)
    assert snap.inventory.host.iommufd is True
    assert snap.inventory.host.holders == {} and snap.facts.in_use == {}
    assert device_object(snap, nic)["held_by"] is None and snap.states[nic] == "available"
    tree.process(80, "qemu-kvm", ["qemu-kvm", "-name", "guest=db1"], {20: "/dev/null", 21: "/dev/full"})
    snap = judge_tree(tree)
    assert device_object(snap, nic)["held_by"] == {"vm": "db1", "pid": 80, "process": "qemu-kvm"}
    assert set(snap.facts.in_use) == {nic} and snap.states[nic] == "in_use"


# --- capture ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host, iommufd", [
    (hosts.iommufd_host, True), (hosts.group_only_host, False), (desktop, None),
], ids=["iommu", "misc-without-iommu", "no-misc"])
def test_a_capture_keeps_what_tells_iommufd(tree, tmp_path, host, iommufd):
    """The copy reads the same: class/misc travels as a directory, `iommu` when it is there; the other
    misc devices (`vfio` here) are not read, so they do not travel."""
    host(tree)
    archive, copy = round_trip(tmp_path, tree.sys, tree.proc)
    assert SysfsSource(str(copy / "sys"), str(copy / "proc")).read().host.iommufd is iommufd
    names = set(members(archive))
    assert ("sys/class/misc" in names) is (iommufd is not None)
    assert ("sys/class/misc/iommu" in names) is (iommufd is True)
    assert "sys/class/misc/vfio" not in names


@pytest.mark.parametrize("host, cdev", [
    (hosts.iommufd_host, True), (hosts.group_only_host, False), (lambda t: (hosts.iommufd_host(t), node_is_a_file(t)), None),
], ids=["dev", "no-dev", "node-a-file"])
def test_a_capture_keeps_what_tells_the_cdev(tree, tmp_path, host, cdev):
    """The NIC's vfio-dev/vfio0 travels with `dev` when it lists one; a node that could not be listed
    reads as unknown from the copy too."""
    host(tree)
    _, copy = round_trip(tmp_path, tree.sys, tree.proc)
    inv = SysfsSource(str(copy / "sys"), str(copy / "proc")).read()
    assert inv.devices["pci_0000_00_19_0"].vfio_cdev is cdev

