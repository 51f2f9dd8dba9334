"""Fault injection on real fixture trees: every bad entry is skipped and counted, the rest stays intact.

Each case corrupts one thing in a desktop host, then checks what a scraper sees over HTTP:
/metrics answers 200, passthrough_collect_errors_total counts the fault under the expected kind,
the bad device is gone (or kept without the bad field) and every other device reads as before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from passthrough_exporter.model import Device, Inventory
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.serving.server import ExporterServer
from tests.support import hosts
from tests.support.client import request
from tests.support.local import exposition, inspector, local_refresher, scrape_tree
from tests.support.parse import collect_errors, strict_json
from tests.support.process import EXE
from tests.support.sysfs_builder import SysfsTree

GPU, AUDIO = "0000:01:00.0", "0000:01:00.1"
MEGABYTE = b"0x8086" + b"0" * (1 << 20)


def desktop(t: SysfsTree) -> SysfsTree:
    hosts.base(t)
    hosts.desktop_gpu(t)
    hosts.usb_tree(t)
    hosts.sata_disks(t)
    return t


def read(t: SysfsTree) -> Inventory:
    return SysfsSource(str(t.sys), str(t.proc)).read()


@pytest.fixture
def host(tree: SysfsTree) -> SysfsTree:
    return desktop(tree)


def assert_intact(before: Inventory, after: Inventory, gone: set[str], changed: dict[str, dict] | None = None) -> None:
    """`gone` vanished; `changed` lost exactly the given fields; everything else is as before.

    A device whose parent is gone is re-linked to the next listed ancestor, so its parent may differ.
    """
    changed = changed or {}
    assert set(before.devices) - set(after.devices) == gone
    assert set(after.devices) <= set(before.devices)
    for name, dev in after.devices.items():
        expected = dataclasses.replace(before.devices[name], **changed.get(name, {}))
        if expected.parent in gone:
            expected = dataclasses.replace(expected, parent=dev.parent)
        assert dev == expected, name


def test_bytes_that_are_not_utf8_are_escaped_never_dropped(host: SysfsTree) -> None:
    """A product string or a driver link name that is not UTF-8 is shown with `\\xNN` escapes:
    the device keeps every other field, nothing is counted as an error, and a refresh that serves
    it renders /metrics and the JSON (where such a name once failed every refresh)."""
    usb_attr("1-1.2", "product")(host).write_bytes(b"Mouse \xc3\x28\n")
    drivers = host.sys / "bus" / "pci" / "drivers"
    os.rename(drivers / "snd_hda_intel", drivers / os.fsdecode(b"snd\xff"))
    link = host.pci_path(AUDIO) / "driver"
    link.unlink()
    os.symlink(os.path.join(os.path.dirname(os.readlink(host.pci_path("0000:01:00.0") / "driver")),
                            os.fsdecode(b"snd\xff")), link)
    after = read(host)
    assert dict(after.errors) == {}
    assert after.devices["usb_1_1_2"].product == "Mouse \\xc3("
    assert after.devices["pci_0000_01_00_1"].driver == "snd\\xff"
    s = scrape_tree(host)
    assert s.metrics_status == 200 and s.devices_status == 200 and s.errors == {}
    assert 'driver="snd\\\\xff"' in s.metrics  # the exposition escapes the backslash once more


def check_served(t: SysfsTree, kinds: dict[str, int], gone: set[str]) -> None:
    s = scrape_tree(t)
    assert s.metrics_status == 200 and s.devices_status == 200
    assert s.errors == kinds
    assert not gone & set(s.names)


# --- garbage, missing and oversized attribute files ---------------------------------------------

def pci_attr(addr: str, attr: str) -> Callable[[SysfsTree], Path]:
    return lambda t: t.pci_path(addr) / attr


def usb_attr(sysname: str, attr: str) -> Callable[[SysfsTree], Path]:
    return lambda t: (t.sys / "bus" / "usb" / "devices" / sysname).resolve() / attr


def scsi_attr(sysname: str, attr: str) -> Callable[[SysfsTree], Path]:
    return lambda t: (t.sys / "bus" / "scsi" / "devices" / sysname).resolve() / attr


# (where, content or None to delete, kind counted, device skipped?, field left empty when kept)
GARBAGE = {
    "pci vendor empty": (pci_attr(AUDIO, "vendor"), b"", "bad_attribute", True, None),
    "pci vendor non-hex": (pci_attr(AUDIO, "vendor"), b"0xzzzz\n", "bad_attribute", True, None),
    "pci vendor too wide": (pci_attr(AUDIO, "vendor"), b"0x123456789\n", "bad_attribute", True, None),
    "pci vendor binary": (pci_attr(AUDIO, "vendor"), b"\xff\xfe\x00\x01\x80", "bad_attribute", True, None),
    "pci vendor NUL": (pci_attr(AUDIO, "vendor"), b"0x10de\x00", "bad_attribute", True, None),
    "pci vendor 1 MB": (pci_attr(AUDIO, "vendor"), MEGABYTE, "bad_attribute", True, None),
    "pci class 1 MB": (pci_attr(AUDIO, "class"), MEGABYTE, "bad_attribute", True, None),
    "pci vendor missing": (pci_attr(AUDIO, "vendor"), None, "vanished", True, None),
    "pci device missing": (pci_attr(AUDIO, "device"), None, "vanished", True, None),
    "pci numa_node non-number": (pci_attr(AUDIO, "numa_node"), b"minus one\n", "bad_attribute", False, "numa_node"),
    "pci subsystem binary": (pci_attr(AUDIO, "subsystem_vendor"), b"\x80\x81", "bad_attribute", False,
                             "subsystem_vendor_id"),
    "pci subsystem 1 MB": (pci_attr(AUDIO, "subsystem_device"), MEGABYTE, "bad_attribute", False,
                           "subsystem_product_id"),
    "pci config truncated": (pci_attr(AUDIO, "config"), b"\xde\x10", "bad_attribute", False, "header_type"),
    "usb idVendor empty": (usb_attr("1-1.2", "idVendor"), b"", "bad_attribute", True, None),
    "usb idProduct binary": (usb_attr("1-1.2", "idProduct"), b"\xc3\x28", "bad_attribute", True, None),
    "usb idVendor missing": (usb_attr("1-1.2", "idVendor"), None, "vanished", True, None),
    "usb busnum garbage": (usb_attr("1-1.2", "busnum"), b"one", "bad_attribute", False, "busnum"),
    "usb class non-hex": (usb_attr("1-1.2", "bDeviceClass"), b"xx", "bad_attribute", False, "usb_class"),
    "scsi type garbage": (scsi_attr("0:0:0:0", "type"), b"disk", "bad_attribute", False, "scsi_type"),
    "scsi model 1 MB": (scsi_attr("0:0:0:0", "model"), MEGABYTE, "bad_attribute", False, "product"),
}
DEVICE_OF = {pci_attr: "pci", usb_attr: "usb", scsi_attr: "scsi"}


def name_of(case: str) -> str:
    return {"pci": "pci_0000_01_00_1", "usb": "usb_1_1_2", "scs": "scsi_0_0_0_0"}[case[:3]]


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_attribute_is_skipped_and_counted(host: SysfsTree, case: str) -> None:
    where, content, kind, skipped, field = GARBAGE[case]
    before = read(host)
    path = where(host)
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    after = read(host)
    name = name_of(case)
    assert dict(after.errors) == {kind: 1}
    if skipped:
        assert_intact(before, after, gone={name})
        if name == "usb_1_1_2":  # its interface hangs on under the hub, the next listed ancestor
            assert after.devices["usb_1_1_2_1_0"].parent == "usb_1_1"
    else:
        assert_intact(before, after, gone=set(), changed={name: {field: None}})
    check_served(host, {kind: 1}, {name} if skipped else set())


# --- numbers out of range: NaN, the infinities, 400 digits ------------------------------------------

NIC = "0000:00:19.0"
HUGE = "1" * 400  # a "count" no int64 holds and no float converts: it once failed every refresh
# attribute -> (its text with {} for the number, the Device field it fills, the index in a tuple field)
NUMERIC = {
    "current_link_speed": ("{} GT/s PCIe", "link_speed", 0),
    "aer_dev_fatal": ("Data Link Protocol 0\nTOTAL_ERR_FATAL {}", "aer_errors", 2),
    "current_link_width": ("{}", "link_width", 0),
    "numa_node": ("{}", "numa_node", None),
    "sriov_numvfs": ("{}", "sriov_numvfs", None),
}


def nic_host(t: SysfsTree) -> SysfsTree:
    """The desktop and an SR-IOV NIC with every numeric attribute at a good value."""
    desktop(t)
    t.pci(NIC, 0x8086, 0x1572, 0x020000, driver="i40e", group=7, numa_node=0, sriov_totalvfs=8, link_width=(8, 8),
          power_state="D0", attrs={"current_link_speed": "8.0 GT/s PCIe", "max_link_speed": "8.0 GT/s PCIe",
                                   "aer_dev_fatal": NUMERIC["aer_dev_fatal"][0].format(0)})
    return t


@pytest.mark.parametrize("number", ["nan", "inf", HUGE], ids=["nan", "inf", "400 digits"])
@pytest.mark.parametrize("attr", list(NUMERIC))
def test_a_number_out_of_range_empties_its_field_only(tree: SysfsTree, attr: str, number: str) -> None:
    """The field is empty and counted as bad_attribute; every other field and device reads as
    before; a refresh through the real server succeeds and /api/devices is strict JSON."""
    host = nic_host(tree)
    before = read(host)
    nic = before.devices["pci_0000_00_19_0"]
    assert (nic.link_speed, nic.link_width, nic.aer_errors) == ((8.0, 8.0), (8, 8), (None, None, 0))
    assert (nic.numa_node, nic.sriov_totalvfs, nic.sriov_numvfs, nic.power_state) == (0, 8, 0, "D0")
    text, field, index = NUMERIC[attr]
    SysfsTree.write(host.pci_path(NIC) / attr, text.format(number))
    after = read(host)
    assert dict(after.errors) == {"bad_attribute": 1}
    value = getattr(nic, field)
    emptied = None if index is None else (*value[:index], None, *value[index + 1:])
    assert_intact(before, after, gone=set(), changed={nic.name: {field: emptied}})
    s = scrape_tree(host)  # /api/devices parsed strictly
    assert s.metrics_status == 200 and s.devices_status == 200 and s.errors == {"bad_attribute": 1}
    assert 'passthrough_source_up{source="sysfs"} 1.0' in s.metrics
    assert set(s.names) == set(before.devices)


def test_numbers_out_of_range_through_the_commands(tree: SysfsTree, tmp_path: Path) -> None:
    """All five at once: `devices --json` prints strict JSON, `textfile` writes its file and exits 0
    without a traceback, each bad number counted once."""
    host = nic_host(tree)
    for (attr, (text, _, _)), number in zip(NUMERIC.items(), ["nan", "inf", HUGE, "-inf", HUGE]):
        SysfsTree.write(host.pci_path(NIC) / attr, text.format(number))
    paths = ["--path.sysfs", str(host.sys), "--path.procfs", str(host.proc)]
    out = subprocess.run([EXE, "devices", "--json", *paths], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    devices = {d["name"]: d for d in strict_json(out.stdout)}
    nic = devices["pci_0000_00_19_0"]
    assert nic["health"]["link_speed_gts"] == {"current": None, "max": 8.0}
    assert nic["health"]["link_width"] == {"current": None, "max": 8}
    assert nic["health"]["aer_errors"] == {"correctable": None, "nonfatal": None, "fatal": None}
    assert (nic["numa_node"], nic["sriov_totalvfs"], nic["sriov_numvfs"]) == (None, 8, None)
    assert nic["health"]["power_state"] == "D0" and nic["driver"] == "i40e"
    assert set(devices) == set(read(host).devices)
    prom = tmp_path / "passthrough.prom"
    out = subprocess.run([EXE, "textfile", str(prom), *paths], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert {k: v for k, v in collect_errors(prom.read_text()).items() if v} == {"bad_attribute": 5}
    assert 'passthrough_pcie_link_speed_gts{device="pci_0000_00_19_0",kind="max"} 8.0' in prom.read_text()


# --- symlinks: dangling, looping, pointing at the wrong thing -------------------------------------

def _dangling_bus_entry(t: SysfsTree) -> None:
    os.symlink("../../../devices/pci0000:00/0000:00:1f.7", t.sys / "bus" / "pci" / "devices" / "0000:00:1f.7")


def _looping_bus_entry(t: SysfsTree) -> None:
    bus = t.sys / "bus" / "pci" / "devices"
    os.symlink("0000:00:1f.6", bus / "0000:00:1f.5")
    os.symlink("0000:00:1f.5", bus / "0000:00:1f.6")


def _self_loop_usb_entry(t: SysfsTree) -> None:
    os.symlink("9-9", t.sys / "bus" / "usb" / "devices" / "9-9")


def _bus_entry_is_a_file(t: SysfsTree) -> None:
    (t.sys / "bus" / "scsi" / "devices" / "7:0:0:0").write_text("not a device\n")


def _device_dir_replaced_by_loop(t: SysfsTree) -> None:
    """The audio function's directory becomes a link to itself: its bus entry now loops."""
    path = t.pci_path(AUDIO)
    shutil.rmtree(path)
    os.symlink(path.name, path)


def _looping_driver_link(t: SysfsTree) -> None:
    d = t.pci_path(AUDIO) / "driver"
    d.unlink()
    os.symlink("driver", d)


def _dangling_driver_link(t: SysfsTree) -> None:
    shutil.rmtree(t.sys / "bus" / "pci" / "drivers" / "snd_hda_intel")


def _looping_group_link(t: SysfsTree) -> None:
    g = t.pci_path(AUDIO) / "iommu_group"
    g.unlink()
    os.symlink("iommu_group", g)


def _dangling_group_link(t: SysfsTree) -> None:
    g = t.pci_path(AUDIO) / "iommu_group"
    g.unlink()
    os.symlink("../../../../kernel/iommu_groups/77", g)


def _looping_bus_directory(t: SysfsTree) -> None:
    """/sys/bus/scsi/devices itself is a loop: the whole bus is unreadable, the others are not."""
    d = t.sys / "bus" / "scsi" / "devices"
    shutil.rmtree(d)
    os.symlink("devices", d)


# (fault, kinds counted, devices gone, fields changed on kept devices)
SYMLINKS = {
    "dangling bus entry": (_dangling_bus_entry, {"vanished": 1}, set(), {}),
    "looping bus entries": (_looping_bus_entry, {"symlink_loop": 2}, set(), {}),
    "usb entry linking to itself": (_self_loop_usb_entry, {"symlink_loop": 1}, set(), {}),
    "bus entry is a plain file": (_bus_entry_is_a_file, {"vanished": 1}, set(), {}),
    "device dir replaced by a loop": (_device_dir_replaced_by_loop, {"symlink_loop": 1}, {"pci_0000_01_00_1"}, {}),
    # A link is only read for its name: a loop or a missing target still names the driver/group.
    "looping driver link": (_looping_driver_link, {}, set(), {"pci_0000_01_00_1": {"driver": "driver"}}),
    "dangling driver link": (_dangling_driver_link, {}, set(), {}),
    "looping iommu_group link": (_looping_group_link, {"bad_attribute": 1}, set(),
                                 {"pci_0000_01_00_1": {"iommu_group": None}}),
    "dangling iommu_group link": (_dangling_group_link, {}, set(), {"pci_0000_01_00_1": {"iommu_group": 77}}),
    "looping bus directory": (_looping_bus_directory, {"symlink_loop": 1},
                              {"scsi_host0", "scsi_host1", "scsi_host6", "scsi_target0_0_0", "scsi_target6_0_0",
                               "scsi_0_0_0_0", "scsi_0_0_0_1", "scsi_6_0_0_0"}, {}),
}


@pytest.mark.parametrize("case", list(SYMLINKS))
def test_bad_symlinks(host: SysfsTree, case: str) -> None:
    fault, kinds, gone, changed = SYMLINKS[case]
    before = read(host)
    fault(host)
    after = read(host)
    assert dict(after.errors) == kinds
    assert_intact(before, after, gone, changed)
    check_served(host, kinds, gone)


def test_device_listed_twice(host: SysfsTree) -> None:
    """A second bus entry whose name maps to the same device name: kept once, counted as duplicate."""
    before = read(host)
    os.symlink(GPU, host.sys / "bus" / "pci" / "devices" / "0000_01_00_0")
    os.symlink("1-1.2", host.sys / "bus" / "usb" / "devices" / "1_1_2")
    after = read(host)
    assert dict(after.errors) == {"duplicate": 2}
    assert_intact(before, after, gone=set())
    check_served(host, {"duplicate": 2}, set())


def test_every_fault_at_once(host: SysfsTree) -> None:
    """All of the above in one tree: still one clean pass, every fault counted."""
    expected: dict[str, int] = {}
    for where, content, kind, _, _ in (GARBAGE["pci vendor 1 MB"], GARBAGE["usb busnum garbage"],
                                       GARBAGE["usb class non-hex"]):
        where(host).write_bytes(content)
        expected[kind] = expected.get(kind, 0) + 1
    for case in ("dangling bus entry", "looping bus entries", "dangling driver link", "looping bus directory"):
        fault, kinds, _, _ = SYMLINKS[case]
        fault(host)
        for k, n in kinds.items():
            expected[k] = expected.get(k, 0) + n
    s = scrape_tree(host)
    assert s.metrics_status == 200 and s.errors == expected
    assert "pci_0000_01_00_0" in s.names and "pci_0000_01_00_1" not in s.names
    assert "usb_1_1_2" in s.names and not any(n.startswith("scsi") for n in s.names)


# --- a device directory that comes and goes while refreshes run ----------------------------------

def test_device_removed_and_readded_while_refreshing(host: SysfsTree, tmp_path: Path,
                                                     start_server: Callable[..., ExporterServer]) -> None:
    """Hot-unplug in a loop: a USB stick subtree and a GPU function flip in and out during refreshes."""
    stick = usb_attr("1-1.4", "")(host)
    audio = host.pci_path(AUDIO)
    aside = tmp_path / "aside"
    aside.mkdir()
    flipping = {"usb_1_1_4", "usb_1_1_4_1_0", "scsi_host6", "scsi_target6_0_0", "scsi_6_0_0_0", "pci_0000_01_00_1"}
    stable = set(read(host).devices) - flipping
    refresher = local_refresher(SysfsSource(str(host.sys), str(host.proc)), inspector(), interval=3600)
    httpd = start_server(refresher)
    stop = threading.Event()
    flips = 0

    def unplug_replug() -> None:
        nonlocal flips
        while not stop.is_set() and flips < 100_000:
            for path in (stick, audio):
                os.rename(path, aside / path.name)
                os.rename(aside / path.name, path)
            flips += 1

    flipper = threading.Thread(target=unplug_replug)
    flipper.start()
    refreshes, seen_kinds, statuses, vanished = 0, set(), set(), 0
    deadline = time.monotonic() + 4
    try:
        while refreshes < 200 and time.monotonic() < deadline:
            assert refresher.refresh()
            published = refresher.current()
            assert published.status.source_up
            names = set(published.rendered.index.names)
            assert stable <= names, stable - names
            seen_kinds = {kind for kind, n in published.status.errors_total.items() if n}
            vanished = published.status.errors_total.get("vanished", 0)
            if refreshes % 10 == 0:
                resp = request(httpd, "/metrics")
                statuses.add(resp.status)
                assert b'passthrough_device_eligible{device="pci_0000_01_00_0",type="pci"} 1.0' in resp.body
            refreshes += 1
    finally:
        stop.set()
        flipper.join(10)
    assert refreshes >= 20 and flips > 0
    assert statuses == {200}
    # Losing the race shows up as a vanished entry or attribute, never as anything else.
    assert seen_kinds <= {"vanished"}, seen_kinds
    totals = collect_errors(exposition(refresher.current()).decode())
    assert totals["vanished"] == vanished  # every lost race is in the counter
    assert totals["source_error"] == 0
    # Back in place: the next read is clean and complete again.
    final = read(host)
    assert dict(final.errors) == {} and stable | flipping == set(final.devices)
    print(f"\nhot-unplug: {refreshes} refreshes, {flips} unplug/replug cycles, kinds seen {sorted(seen_kinds)}, "
          f"vanished counted {int(totals['vanished'])}")


# --- unreadable files, as a user who cannot read them ---------------------------------------------

def _as_nobody(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *args],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def nobody_exe() -> Iterator[tuple[list[str], dict[str, str]]]:
    """The exporter as uid 65534 can run it wherever the checkout is (under /root, mode 0700, too):
    this environment's site-packages and the package's own files copied to a directory every user
    can read, run by the base interpreter with only that copy on its path."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    import passthrough_exporter
    import passthrough_exporter.plugins

    root = Path(tempfile.mkdtemp(prefix="pt-public-"))
    try:
        site = root / "site"
        skip = shutil.ignore_patterns("__pycache__", "*.pth", "__editable__*")
        for lib in dict.fromkeys((sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])):
            shutil.copytree(lib, site, ignore=skip, dirs_exist_ok=True)
        package = Path(passthrough_exporter.__path__[0])
        if not (site / "passthrough_exporter").is_dir():  # an editable install: the files are in the checkout
            shutil.copytree(package, site / "passthrough_exporter", ignore=skip)
        plugins = Path(passthrough_exporter.plugins.__path__[0])
        if not (site / "passthrough_exporter" / "plugins").is_dir():
            shutil.copytree(plugins, site / "passthrough_exporter" / "plugins", ignore=skip)
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        python = os.path.realpath(sys.executable)  # the interpreter itself, not the venv's link to it
        cmd = [python, "-S", "-m", "passthrough_exporter"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(site), "LC_ALL": "C.UTF-8"}
        if _as_nobody(python, "-S", "-c", "pass", env=env).returncode != 0:
            pytest.skip(f"{python} cannot be run by uid 65534")
        out = _as_nobody(*cmd, "plugins", env=env)  # the copy is complete: every built-in plugin loads
        assert out.returncode == 0, out.stderr
        assert {line.split()[0] for line in out.stdout.splitlines()[1:]} >= {"pci", "usb", "scsi", "safety", "policy"}
        yield cmd, env
    finally:
        shutil.rmtree(root)


@pytest.fixture
def public_host() -> SysfsTree:
    """A desktop tree in a directory the unprivileged user can walk (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="pt-faults-"))
    try:
        t = desktop(SysfsTree(root / "host"))
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        yield t
    finally:
        shutil.rmtree(root)


def test_unreadable_vendor_as_unprivileged_user(public_host: SysfsTree, nobody_exe) -> None:
    t = public_host
    exe, env = nobody_exe
    before = _as_nobody(*exe, "devices", "--json", "--path.sysfs", str(t.sys), "--path.procfs", str(t.proc), env=env)
    assert before.returncode == 0, before.stderr
    (t.pci_path(AUDIO) / "vendor").chmod(0)
    (usb_attr("1-1.2", "product")(t)).chmod(0)  # optional: the mouse stays, without its name
    out = _as_nobody(*exe, "devices", "--json", "--path.sysfs", str(t.sys), "--path.procfs", str(t.proc), env=env)
    assert out.returncode == 0, out.stderr
    import json
    old = {d["name"]: d for d in json.loads(before.stdout)}
    new = {d["name"]: d for d in json.loads(out.stdout)}
    assert set(old) - set(new) == {"pci_0000_01_00_1"}
    assert new["usb_1_1_2"]["product"] is None and old["usb_1_1_2"]["product"] == "USB Optical Mouse"
    for name, obj in new.items():
        if name == "usb_1_1_2":
            continue
        # The skipped function no longer goes along with its group peer and its root port.
        lost = name in ("pci_0000_01_00_0", "pci_0000_00_01_0")
        expected = {**old[name], "affected_count": old[name]["affected_count"] - lost}
        assert obj == expected, name
    assert "unreadable" in out.stderr and "Traceback" not in out.stderr

    outdir = Path(tempfile.mkdtemp(prefix="pt-textfile-"))
    try:
        os.chown(outdir, 65534, 65534)
        prom = outdir / "passthrough.prom"
        out = _as_nobody(*exe, "textfile", str(prom), "--path.sysfs", str(t.sys), "--path.procfs", str(t.proc), env=env)
        assert out.returncode == 0, out.stderr
        errors = {k: v for k, v in collect_errors(prom.read_text()).items() if v}
        assert errors == {"unreadable": 2}
        assert 'device="pci_0000_01_00_1"' not in prom.read_text()
    finally:
        shutil.rmtree(outdir)


def test_vpd_is_root_only_and_unreadable_is_no_error(nobody_exe) -> None:
    """`vpd` is mode 0600: an unprivileged exporter reads no VPD serial, and counts nothing for it.
    The NVMe and USB serials, which anyone may read, are there."""
    exe, env = nobody_exe
    root = Path(tempfile.mkdtemp(prefix="pt-serials-"))
    try:
        t = SysfsTree(root / "host")
        hosts.serials(t)
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        for addr in ("0000:3b:00.0", "0000:3c:00.0"):
            (t.pci_path(addr) / "vpd").chmod(0o600)  # as the kernel makes it, owned by root
        paths = ["--path.sysfs", str(t.sys), "--path.procfs", str(t.proc)]
        out = _as_nobody(*exe, "devices", "--json", *paths, env=env)
        assert out.returncode == 0, out.stderr
        serials = {d["name"]: d["serial"] for d in json.loads(out.stdout) if "serial" in d}
        assert serials == {"pci_0000_00_00_0": None, "pci_0000_00_14_0": None, "pci_0000_3b_00_0": None,
                           "pci_0000_3c_00_0": None, "pci_0000_3d_00_0": "S4EWNX0R123456",
                           "usb_1_4": "4C530001230117115290", "usb_usb1": "0000:00:14.0"}
        assert "vpd skipped" not in out.stderr
        prom = root / "out" / "passthrough.prom"
        prom.parent.mkdir()
        os.chown(prom.parent, 65534, 65534)
        out = _as_nobody(*exe, "textfile", str(prom), *paths, env=env)
        assert out.returncode == 0, out.stderr
        assert {k: v for k, v in collect_errors(prom.read_text()).items() if v} == {}
        # Root reads both: one serial, one VPD that fails its checksum (counted).
        inv = read(t)
        assert inv.devices["pci_0000_3b_00_0"].serial == "MT1234X00001"
        assert dict(inv.errors) == {"bad_attribute": 1}
    finally:
        shutil.rmtree(root)


# --- broken trees handed straight to the Inventory -------------------------------------------------

def test_inventory_survives_duplicates_cycles_and_self_parents() -> None:
    devs = [
        Device("pci_a", "pci", iommu_group=1),
        Device("pci_a", "pci", iommu_group=2),  # listed twice: the first one wins
        Device("pci_b", "pci", parent="pci_b", iommu_group=1),  # its own parent
        Device("usb_c", "usb_device", parent="usb_d"),  # c -> d -> e -> c
        Device("usb_d", "usb_device", parent="usb_e"),
        Device("usb_e", "usb_device", parent="usb_c"),
        Device("usb_f", "usb_device", parent="usb_missing"),
        Device("usb_g", "usb", parent="usb_c"),
    ]
    inv = Inventory(devs)
    assert dict(inv.errors) == {"duplicate": 1, "parent_cycle": 2, "missing_parent": 1}
    assert inv.devices["pci_a"].iommu_group == 1
    for name in inv.devices:  # every walk terminates and never meets its start
        assert name not in set(inv.descendants(name))
    snap = inspector().judge(inv)
    assert snap.affected["pci_a"] == ("pci_b",) and snap.affected["pci_b"] == ("pci_a",)
    assert set(snap.verdicts) == set(inv.devices)


def test_fifo_in_place_of_an_attribute_cannot_stall_a_refresh(host: SysfsTree) -> None:
    """A named pipe where `vendor` should be (a broken capture): read without a writer, at once."""
    before = read(host)
    path = pci_attr(AUDIO, "vendor")(host)
    path.unlink()
    os.mkfifo(path)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(read(host)), daemon=True)
    worker.start()
    worker.join(10)
    assert done, "the refresh blocked on a FIFO"
    after = done[0]
    assert dict(after.errors) == {"bad_attribute": 1}
    assert_intact(before, after, gone={"pci_0000_01_00_1"})
