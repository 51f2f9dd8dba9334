"""The libvirt source against libvirt's own test driver, on the same fixture hosts as the sysfs tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="the [libvirt] extra (libvirt-python) is not installed")

from passthrough_exporter.commands import cli  # noqa: E402
from passthrough_exporter.judging.inspector import Inspector  # noqa: E402
from passthrough_exporter.rendering.metrics import render  # noqa: E402
from passthrough_exporter.model import KNOWN_TYPES, Holder  # noqa: E402
from passthrough_exporter.judging.snapshot import Snapshot  # noqa: E402
from passthrough_exporter.reading.sources import SourceError  # noqa: E402
from passthrough_exporter.reading.sources.libvirt import LibvirtSource  # noqa: E402
from passthrough_exporter.reading.sources.sysfs import SysfsSource  # noqa: E402
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts  # noqa: E402
from tests.support.libvirt_host import (  # noqa: E402
    domain, pci_hostdev, scsi_hostdev, usb_hostdev, vf_interface, write_host)
from tests.support.sysfs_builder import SysfsTree, char_number  # noqa: E402


def number_of(device: str) -> tuple[int, int]:
    rdev = os.stat(device).st_rdev
    return os.major(rdev), os.minor(rdev)


def _no_groups(t: SysfsTree) -> None:
    hosts.base(t)
    hosts.desktop_gpu(t, groups=False)


def _orphan(t: SysfsTree) -> None:
    hosts.base(t)
    hosts.orphan_vf(t)


HOSTS = {"workstation": hosts.workstation, "no_groups": _no_groups, "orphan_vf": _orphan, "serials": hosts.serials,
         "two_roots": hosts.two_roots, "h200_vgpu": hosts.h200_vgpu}


def _both(tree: SysfsTree, tmp_path: Path, fill: bool = True, domains: tuple[str, ...] = ()) -> tuple[Snapshot, Snapshot]:
    uri = write_host(tree, tmp_path / "host.xml", domains)
    inspector = Inspector()
    by_sysfs = inspector.judge(SysfsSource(str(tree.sys), str(tree.proc)).read())
    source = LibvirtSource(uri, sysfs_path=str(tree.sys) if fill else None, procfs_path=str(tree.proc))
    try:
        by_libvirt = inspector.judge(source.read(), source="libvirt")
    finally:
        source.close()
    return by_sysfs, by_libvirt


def _shared(snap: Snapshot) -> dict[str, dict]:
    """Device objects of the kinds both sources list; notes say where a value came from, not what it is."""
    out = {}
    for dev in snap.inventory:
        if dev.type in KNOWN_TYPES:
            obj = device_object(snap, dev.name, full=True)
            obj.pop("notes", None)
            out[dev.name] = obj
    return out


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_parity_with_sysfs(tree, tmp_path, host):
    HOSTS[host](tree)
    by_sysfs, by_libvirt = _both(tree, tmp_path)
    assert _shared(by_libvirt) == _shared(by_sysfs)
    assert by_libvirt.findings == by_sysfs.findings
    assert by_libvirt.inventory.host == by_sysfs.inventory.host
    assert dict(by_libvirt.errors) == dict(by_sysfs.errors)


def test_libvirt_only_kinds_stay_in_the_tree_but_out_of_affected_sets(tree, tmp_path):
    hosts.workstation(tree)
    _, snap = _both(tree, tmp_path)
    inv = snap.inventory
    extra = sorted(d.name for d in inv if d.type not in KNOWN_TYPES)
    assert extra == ["block_sda", "block_sdb", "block_sdc", "block_sr0", "net_enp129s0f0", "net_enp129s2f0",
                     "net_enp129s2f1", "net_enp6s0f0", "net_enp6s0f1"]
    assert inv.devices["block_sda"].parent == "scsi_0_0_0_0"
    assert "block_sda" in inv.descendants("pci_0000_00_17_0")  # the tree is whole ...
    assert "net_enp6s0f0" in inv.children["pci_0000_06_00_0"]
    for name in extra:  # ... but the answers count devices, not their host-side views
        assert not snap.verdicts[name].eligible
        assert all(name not in affected for affected in snap.affected.values())
    scsi = inv.devices["scsi_0_0_0_1"]
    assert (scsi.block_devices, scsi.vendor, scsi.product, scsi.scsi_type) == (("sr0",), "ATA", "DVD-RW", 5)


def test_parity_through_the_cli(tree, tmp_path, capsys):
    hosts.workstation(tree)
    uri = write_host(tree, tmp_path / "host.xml")
    common = ["devices", "--json", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)]

    def run(*extra: str) -> dict[str, dict]:
        assert cli.main([*common, *extra]) == 0
        objs = json.loads(capsys.readouterr().out)
        return {o["name"]: {k: v for k, v in o.items() if k != "notes"} for o in objs if o["type"] in KNOWN_TYPES}

    by_sysfs = run("--source", "sysfs", "--path.pci-ids", "none")
    by_libvirt = run("--source", "libvirt", "--libvirt.uri", uri)
    assert by_libvirt == by_sysfs
    assert len(by_sysfs) == 43


def test_without_sysfs_the_answers_still_match(tree, tmp_path):
    """No readable sysfs (a remote URI): fewer details, the same names, tree, groups, verdicts and affected sets."""
    hosts.workstation(tree)
    by_sysfs, by_libvirt = _both(tree, tmp_path, fill=False)
    a, b = _shared(by_sysfs), _shared(by_libvirt)
    keys = ("name", "type", "parent", "address", "vendor_id", "product_id", "class", "iommu_group",
            "eligible", "reasons", "affected", "physfn", "virtfns")
    assert {n: {k: o.get(k) for k in keys} for n, o in b.items()} == {n: {k: o.get(k) for k in keys} for n, o in a.items()}
    gpu = by_libvirt.inventory.devices["pci_0000_01_00_0"]
    assert gpu.driver is None and gpu.reset_methods is None and not gpu.boot_vga and not gpu.notes
    hub = by_libvirt.inventory.devices["usb_1_1"]
    assert hub.usb_class == "09" and hub.notes == ("usb_class 09 inferred from its hub interface",)
    assert by_libvirt.inventory.host.iommu_groups_present


def test_pcie_root_from_libvirts_path(tree, tmp_path):
    """Without a sysfs to fill from, the root complex comes from the node device's <path>."""
    hosts.two_roots(tree)
    _, by_libvirt = _both(tree, tmp_path, fill=False)
    devices = by_libvirt.inventory.devices
    assert (devices["pci_0000_41_00_0"].pcie_root, devices["pci_0000_01_00_0"].pcie_root) == ("pci0000:40", "pci0000:00")
    assert devices["usb_1_1_2"].pcie_root is None


def test_serials_through_libvirt(tree, tmp_path):
    """libvirt's XML carries the VPD's serial (libvirtd reads `vpd` as root), not an NVMe controller's or a
    USB device's: those come from sysfs where it can be read, and are noted as filled."""
    hosts.serials(tree)
    by_sysfs, by_libvirt = _both(tree, tmp_path)
    _, remote = _both(tree, tmp_path, fill=False)
    want = {"pci_0000_3b_00_0": "MT1234X00001", "pci_0000_3d_00_0": "S4EWNX0R123456",
            "usb_1_4": "4C530001230117115290", "usb_usb1": "0000:00:14.0"}
    for snap in (by_sysfs, by_libvirt):
        assert {d.name: d.serial for d in snap.inventory if d.serial is not None} == want
    assert {d.name: d.serial for d in remote.inventory if d.serial is not None} == {"pci_0000_3b_00_0": "MT1234X00001"}
    assert "serial" not in by_libvirt.inventory.devices["pci_0000_3b_00_0"].notes[0]
    assert "serial" in by_libvirt.inventory.devices["pci_0000_3d_00_0"].notes[0]


def test_sysfs_decides_the_serial_when_it_has_one(tree, tmp_path):
    """An NVMe drive with a VPD: libvirt says the VPD's SN, sysfs the controller's serial, which anyone
    can read; sysfs' wins, so both sources give one identity."""
    hosts.base(tree)
    tree.pci("0000:3d:00.0", hosts.SAMSUNG, 0xA808, 0x010802, driver="nvme", group=22)
    tree.nvme_controller("0000:3d:00.0", "S4EWNX0R123456")
    tree.vpd("0000:3d:00.0", hosts.NIC_VPD, name="Example NIC", serial_number="MT1234X00001")
    by_sysfs, by_libvirt = _both(tree, tmp_path)
    _, remote = _both(tree, tmp_path, fill=False)
    # Remote, libvirt gives only the VPD's SN: another number space than the controller's, so an NVMe
    # controller's serial is unknown there rather than a second identity (see attrs.nvme_class).
    for snap, serial in ((by_sysfs, "S4EWNX0R123456"), (by_libvirt, "S4EWNX0R123456"), (remote, None)):
        assert snap.inventory.devices["pci_0000_3d_00_0"].serial == serial


def test_filled_fields_are_noted(tree, tmp_path):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    _, snap = _both(tree, tmp_path)
    obj = device_object(snap, "pci_0000_01_00_0")
    # The test driver, like some libvirt versions, gives no <driver>: it comes from sysfs.
    assert obj["driver"] == "nvidia" and obj["boot_vga"] is True and obj["reset_methods"] == ["bus"]
    # vfio_cdev: False, the GPU's directory has no vfio-dev/ (Device.vfio_cdev).
    assert obj["notes"] == ["filled from sysfs: boot_vga, driver, header_type, reset_methods, "
                            "subsystem_product_id, subsystem_vendor_id, vfio_cdev"]


def test_sysfs_of_another_machine_is_not_used(tree, tmp_path):
    """Same addresses, other devices (a container's /sys, another host): nothing is filled."""
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    uri = write_host(tree, tmp_path / "host.xml")
    other = SysfsTree(tmp_path / "other")
    other.pci("0000:01:00.0", 0x1002, 0x73BF, 0x030000, driver="amdgpu", group=7)
    inv = LibvirtSource(uri, sysfs_path=str(other.sys), procfs_path=str(other.proc)).read()
    assert inv.devices["pci_0000_01_00_0"].driver is None
    assert inv.devices["pci_0000_01_00_0"].notes == ()
    assert inv.host.cmdline == ""  # host facts not taken from a sysfs that matched nothing


def test_holders_by_device_number_in_both_sources(tree, tmp_path):
    """The libvirt source's fill scans holders by the same rule as the sysfs source: the QEMU that
    holds group 2's node (/dev/zero's number in this fixture) holds the GPU and its audio, the one
    holding the mouse's node (/dev/random's) the mouse; a process holding the storage stick's node
    (/dev/full's) read-only, and a name /dev/vfio/8 that is no device, hold nothing."""
    hosts.busy_host(tree)
    tree.write(tree.sys / "bus" / "usb" / "devices" / "1-1.4" / "dev", char_number("/dev/full"))
    tree.write(tree.sys / "bus" / "usb" / "devices" / "1-1.2" / "dev", char_number("/dev/random"))
    tree.process(4100, "spoof", ["spoof", "-name", "guest=prod-db-01"], {3: "/dev/full", 4: "/dev/vfio/8"},
                 flags={3: 0o2100000})
    tree.process(4243, "qemu-kvm", ["qemu-kvm", "-name", "desk"], {3: "/dev/random"})
    by_sysfs, by_libvirt = _both(tree, tmp_path)
    win11 = {"vm": "win11", "pid": 4242, "process": "qemu-system-x86"}
    for snap in (by_sysfs, by_libvirt):
        assert snap.inventory.host.holders == {number_of("/dev/zero"): Holder(4242, "qemu-system-x86", "win11"),
                                               number_of("/dev/random"): Holder(4243, "qemu-kvm", "desk")}
        assert device_object(snap, "pci_0000_01_00_0")["held_by"] == win11
        assert device_object(snap, "pci_0000_01_00_1")["held_by"] == win11
        assert device_object(snap, "usb_1_1_2")["held_by"] == {"vm": "desk", "pid": 4243, "process": "qemu-kvm"}
        assert device_object(snap, "usb_1_1_4")["in_use"] is False
        assert snap.inventory.devices["usb_1_1_4"].char_dev == number_of("/dev/full")
    assert by_libvirt.inventory.host == by_sysfs.inventory.host
    assert dict(by_libvirt.facts.in_use) == dict(by_sysfs.facts.in_use)


def test_remote_uri_never_reads_local_sysfs():
    assert LibvirtSource("qemu+ssh://root@hv1/system")._filler is None
    assert LibvirtSource("qemu:///system")._filler is not None


# --- VM assignments ------------------------------------------------------------------------


def test_assignments(tree, tmp_path):
    hosts.workstation(tree)
    domains = (
        domain("gaming", pci_hostdev("0000:01:00.0"), pci_hostdev("0000:01:00.1"),
               usb_hostdev(vendor=0x046D, product=0xC077)),
        domain("backup", usb_hostdev(bus=1, device=4), scsi_hostdev("scsi_host0", 0, 0, 0), running=False),
        domain("router", vf_interface("0000:81:02.1"), scsi_hostdev("scsi_host2", 0, 0, 0)),
        # Defined elsewhere too: the running domain keeps it.
        domain("spare", pci_hostdev("0000:01:00.0"), running=False),
        # Gone from the host, and one that is not a host device at all.
        domain("stale", pci_hostdev("0000:0a:00.0"), usb_hostdev(vendor=0x1234, product=0x5678)),
    )
    _, snap = _both(tree, tmp_path, domains=domains)
    assigned = {d.name: d.assigned_to for d in snap.inventory if d.assigned_to}
    assert assigned == {
        "pci_0000_01_00_0": "gaming",
        "pci_0000_01_00_1": "gaming",
        "usb_1_1_2": "gaming",  # by vendor/product
        "usb_1_1_4": "backup",  # by bus/device, in a domain that is defined but not running
        "scsi_0_0_0_0": "backup",  # adapter scsi_host0, bus 0 target 0 unit 0
        "scsi_2_0_0_0": "router",
        "pci_0000_81_02_1": "router",  # an SR-IOV VF handed over as <interface type='hostdev'>
    }
    gpu = snap.inventory.devices["pci_0000_01_00_0"]
    assert gpu.assignments == (("gaming", True), ("spare", False))  # the running domain first
    assert gpu.assigned_running is True and snap.inventory.devices["usb_1_1_4"].assigned_running is False
    assert device_object(snap, "usb_1_1_2")["assigned_to"] == "gaming"
    assert snap.inventory.errors["hostdev_unmatched"] == 2


def test_ambiguous_usb_reference_is_not_guessed(tree, tmp_path):
    hosts.usb_tree(tree)
    two_sticks = ("<device><name>usb_1_1_5</name><parent>usb_1_1</parent><capability type='usb_device'>"
                  "<bus>1</bus><device>9</device><product id='0x5567'/><vendor id='0x0781'/></capability></device>")
    uri = write_host(tree, tmp_path / "host.xml", (domain("vm", usb_hostdev(vendor=0x0781, product=0x5567)),),
                     extra=(two_sticks,))
    inv = LibvirtSource(uri, sysfs_path=None).read()
    assert not any(d.assigned_to for d in inv)
    assert inv.errors["hostdev_ambiguous"] == 1


# --- stale links ---------------------------------------------------------------------------


def test_scsi_target_without_its_host_is_kept_unlinked(tree, tmp_path, caplog):
    hosts.sata_disks(tree)
    stale = ("<device><name>scsi_target9_0_0</name><parent>scsi_host9</parent>"
             "<capability type='scsi_target'><target>target9:0:0</target></capability></device>")
    uri = write_host(tree, tmp_path / "host.xml", extra=(stale,))
    snap = Inspector().judge(LibvirtSource(uri, sysfs_path=None).read())
    inv = snap.inventory
    assert inv.devices["scsi_target9_0_0"].parent == "scsi_host9"
    assert all("scsi_target9_0_0" not in kids for kids in inv.children.values())
    assert inv.errors == {"missing_parent": 1}
    assert "parent scsi_host9 of device scsi_target9_0_0 does not exist" in caplog.text
    assert not snap.verdicts["scsi_target9_0_0"].eligible


def test_libvirts_own_stale_target_sample(tree, tmp_path, realdata):
    """libvirt's scsi_target0_0_0.xml names scsi_host0, which that host does not have."""
    sample = (realdata / "libvirt-nodedev" / "nodedevschemadata" / "scsi_target0_0_0.xml").read_text()
    hosts.base(tree)
    uri = write_host(tree, tmp_path / "host.xml", extra=(sample,))
    inv = LibvirtSource(uri, sysfs_path=None).read()
    assert inv.devices["scsi_target0_0_0"].type == "scsi_target"
    assert inv.errors == {"missing_parent": 1}


# --- the connection ------------------------------------------------------------------------


@pytest.fixture
def opens(monkeypatch):
    """Counts libvirt.openReadOnly calls; each one still opens a real connection."""
    calls: list[str] = []
    real = libvirt.openReadOnly

    def counting(uri):
        calls.append(uri)
        return real(uri)

    monkeypatch.setattr(libvirt, "openReadOnly", counting)
    return calls


def test_one_connection_for_many_reads_and_a_new_one_after_a_drop(tree, tmp_path, opens):
    hosts.base(tree)
    uri = write_host(tree, tmp_path / "host.xml")
    source = LibvirtSource(uri, sysfs_path=None)
    for _ in range(10):
        assert "pci_0000_00_00_0" in source.read()
    assert len(opens) == 1
    source._conn.close()  # the real connection goes away, as when libvirtd restarts
    assert "pci_0000_00_00_0" in source.read()
    assert len(opens) == 2
    source.read()
    assert len(opens) == 2
    source.close()
    source.read()  # closing is not final: the next refresh connects again
    assert len(opens) == 3
    source.close()


def test_unreachable_libvirt_backs_off(tmp_path, opens):
    now = [100.0]
    source = LibvirtSource(f"test://{tmp_path}/missing.xml", sysfs_path=None, clock=lambda: now[0])
    with pytest.raises(SourceError, match="cannot open libvirt"):
        source.read()
    with pytest.raises(SourceError, match="next attempt in 1s"):
        source.read()  # within the backoff: no new attempt
    assert len(opens) == 1
    now[0] += 1.5
    with pytest.raises(SourceError, match="cannot open libvirt"):
        source.read()
    assert len(opens) == 2
    now[0] += 1.5  # the backoff doubled to 2s
    with pytest.raises(SourceError, match="next attempt"):
        source.read()
    assert len(opens) == 2
    host = tmp_path / "missing.xml"
    host.write_text("<node/>")
    now[0] += 1
    assert list(source.read().devices) == ["computer"]
    assert len(opens) == 3 and source._backoff == 0


def test_cli_reports_an_unreachable_libvirt(tmp_path, capsys):
    assert cli.main(["devices", "--source", "libvirt", "--libvirt.uri", f"test://{tmp_path}/none.xml"]) == 1
    assert "cannot open libvirt" in capsys.readouterr().err


def test_mdev_assignment_by_uuid(tree, tmp_path):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    uuid = "c2177883-f1bb-47f0-914d-32a22e3a8804"
    mdev = (f"<device><name>mdev_{uuid.replace('-', '_')}_0000_01_00_0</name><parent>pci_0000_01_00_0</parent>"
            "<capability type='mdev'><type id='nvidia-63'/><iommuGroup number='50'/></capability></device>")
    hostdev = (f"<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='{uuid}'/>"
               "</source></hostdev>")
    uri = write_host(tree, tmp_path / "host.xml", (domain("vdi", hostdev),), extra=(mdev,))
    inv = LibvirtSource(uri, sysfs_path=None).read()
    assert inv.devices[f"mdev_{uuid.replace('-', '_')}_0000_01_00_0"].assigned_to == "vdi"
    assert inv.groups[2] == ("pci_0000_01_00_0", "pci_0000_01_00_1")  # an mdev's group holds no PCI function


def test_root_filesystem_device_is_held_back_by_both_sources(tree, tmp_path):
    """The devices behind / come from this host's mountinfo and sysfs whichever source names them."""
    hosts.sata_disks(tree)
    lun = tree.pci_path("0000:00:17.0") / "ata1" / "host0" / "target0:0:0" / "0:0:0:0"
    tree.partition(tree.block("sda", parent=lun, dev="8:0"), "sda2", dev="8:2", number=2)
    tree.root_mount("8:2", "/dev/sda2")
    by_sysfs, by_libvirt = _both(tree, tmp_path)
    assert by_libvirt.inventory.host.root_devices == by_sysfs.inventory.host.root_devices == (
        "pci_0000_00_17_0", "scsi_0_0_0_0", "scsi_host0", "scsi_target0_0_0")
    assert not by_libvirt.verdicts["pci_0000_00_17_0"].eligible
    assert not by_libvirt.verdicts["scsi_0_0_0_0"].eligible
    assert _shared(by_libvirt) == _shared(by_sysfs)


def test_libvirt_going_away_keeps_the_last_snapshot_served(tree, tmp_path):
    """libvirtd stops under a running exporter: the previous devices stay served, the source is
    reported down, and everything comes back when libvirt does."""
    from tests.support.client import request

    from tests.support.local import local_refresher
    from passthrough_exporter.serving.server import serve
    from passthrough_exporter.serving.webconfig import WebConfig

    hosts.base(tree)
    hosts.desktop_gpu(tree)
    xml = tmp_path / "host.xml"
    uri = write_host(tree, xml, (domain("gaming", pci_hostdev("0000:01:00.0")),))
    now = [1000.0]
    source = LibvirtSource(uri, sysfs_path=str(tree.sys), procfs_path=str(tree.proc), clock=lambda: now[0])
    refresher = local_refresher(source, Inspector(), interval=3600)
    assert refresher.refresh()
    httpd = serve(("127.0.0.1", 0), refresher, WebConfig())
    try:
        before = request(httpd, "/metrics").body
        assert b'passthrough_source_up{source="libvirt"} 1.0' in before
        xml.rename(tmp_path / "gone.xml")  # libvirtd is gone: connecting fails from now on
        source._conn.close()  # and the connection in hand dies under the exporter
        refresher.refresh()
        resp = request(httpd, "/metrics")
        down = resp.body
        assert resp.status == 200
        assert b'passthrough_source_up{source="libvirt"} 0.0' in down
        assert b'passthrough_device_assigned{device="pci_0000_01_00_0",domain="gaming",running="true"} 1.0' in down
        assert b'passthrough_collect_errors_total{kind="source_error"} 1.0' in down
        resp = request(httpd, "/api/devices/pci_0000_01_00_0")
        assert resp.status == 200 and json.loads(resp.body)["assigned_to"] == "gaming"
        refresher.refresh()  # within the backoff: no new connection attempt, still down
        assert b'source="libvirt"} 0.0' in request(httpd, "/metrics").body
        (tmp_path / "gone.xml").rename(xml)  # libvirtd is back
        now[0] += 120  # past the longest backoff
        refresher.refresh()
        back = request(httpd, "/metrics").body
        assert b'passthrough_source_up{source="libvirt"} 1.0' in back
    finally:
        httpd.shutdown()
        httpd.server_close()
        source.close()


# --- findings about assignments (libvirt's test driver) --------------------------------------


def _judge(tree, tmp_path, *domains):
    uri = write_host(tree, tmp_path / "host.xml", domains)
    return Inspector().judge(LibvirtSource(uri, sysfs_path=None).read())


def _codes(snap):
    return {(f.code, f.severity, f.subject) for f in snap.findings if f.code in
            ("assignment_conflict", "group_split", "hostdev_missing")}


def test_one_device_in_two_domains(tree, tmp_path):
    hosts.workstation(tree)
    snap = _judge(tree, tmp_path, domain("gaming", pci_hostdev("0000:04:00.0")),
                  domain("spare", pci_hostdev("0000:04:00.0"), running=False))
    assert _codes(snap) == {("assignment_conflict", "warning", "pci_0000_04_00_0")}
    finding = next(f for f in snap.findings if f.code == "assignment_conflict")
    assert "gaming (running), spare (shut off)" in finding.message and "virsh edit" in finding.fix
    text = render(snap).decode()
    assert 'passthrough_device_assigned{device="pci_0000_04_00_0",domain="gaming",running="true"} 1.0' in text
    assert 'passthrough_device_assigned{device="pci_0000_04_00_0",domain="spare",running="false"} 1.0' in text
    both = _judge(tree, tmp_path, domain("gaming", pci_hostdev("0000:04:00.0")),
                  domain("render", pci_hostdev("0000:04:00.0")))
    assert _codes(both) == {("assignment_conflict", "critical", "pci_0000_04_00_0")}
    assert both.states["pci_0000_04_00_0"] == "assigned"


def test_a_group_split_between_two_domains(tree, tmp_path):
    hosts.workstation(tree)  # GPU 01:00.0 and its audio 01:00.1 share group 2
    snap = _judge(tree, tmp_path, domain("gaming", pci_hostdev("0000:01:00.0")),
                  domain("music", pci_hostdev("0000:01:00.1"), running=False))
    assert _codes(snap) == {("group_split", "critical", "group:2")}
    finding = next(f for f in snap.findings if f.code == "group_split")
    assert "gaming: pci_0000_01_00_0; music: pci_0000_01_00_1" in finding.message
    # Both in one domain: no split.
    one = _judge(tree, tmp_path, domain("gaming", pci_hostdev("0000:01:00.0"), pci_hostdev("0000:01:00.1")))
    assert _codes(one) == set()


def test_a_hostdev_naming_a_device_this_host_lacks(tree, tmp_path):
    hosts.workstation(tree)
    snap = _judge(tree, tmp_path, domain("old", pci_hostdev("0000:0a:00.0"), running=False))
    assert _codes(snap) == {("hostdev_missing", "warning", "domain:old")}
    finding = next(f for f in snap.findings if f.code == "hostdev_missing")
    assert "pci address=0000:0a:00.0" in finding.message
    assert 'passthrough_finding{code="hostdev_missing",severity="warning",subject="domain:old"} 1.0' in \
        render(snap).decode()


def _judge_since(tree, tmp_path, state, *domains):
    """The host through libvirt, with its sysfs and the state file of the previous boot."""
    from passthrough_exporter.reading.state import BootState

    uri = write_host(tree, tmp_path / "host.xml", domains)
    source = LibvirtSource(uri, sysfs_path=str(tree.sys), procfs_path=str(tree.proc),
                           state=BootState(str(state), str(tree.proc)))
    try:
        return Inspector().judge(source.read(), source="libvirt")
    finally:
        source.close()


def test_a_domain_on_a_device_gone_since_the_previous_boot(tree, tmp_path):
    """At the previous boot the workstation also had a NIC at 0a:00.0 (8086:1533, group 40); now it is
    gone, and the shut-off domain `old` is still configured with it. By hand: device_gone on 0a:00.0,
    critical and naming `old` (only a domain's configuration can still name what is not there), and
    hostdev_changed for domain:old."""
    from passthrough_exporter.commands.statefile import StateWriter
    from passthrough_exporter.reading.state import BootState

    state = tmp_path / "state.json"
    before = SysfsTree(tmp_path / "before")
    hosts.workstation(before)
    before.pci("0000:0a:00.0", 0x8086, 0x1533, 0x020000, driver="igb", group=40)
    before.boot_id("aaaaaaaa-0000-4000-8000-00000000000a")
    assert StateWriter(str(state)).after_refresh(
        SysfsSource(str(before.sys), str(before.proc), state=BootState(str(state), str(before.proc))).read())
    hosts.workstation(tree)
    tree.boot_id("bbbbbbbb-0000-4000-8000-00000000000b")
    snap = _judge_since(tree, tmp_path, state, domain("old", pci_hostdev("0000:0a:00.0"), running=False))
    changed = [(f.code, f.severity, f.subject, f.message) for f in snap.findings
               if f.code in ("device_gone", "hostdev_changed")]
    assert changed == [
        ("device_gone", "critical", "pci_0000_0a_00_0", "pci_0000_0a_00_0 (8086:1533 at 0000:0a:00.0) was there at "
         "the previous boot and is missing now; domain(s) old are configured with it"),
        ("hostdev_changed", "critical", "domain:old", "domain old is configured with pci_0000_0a_00_0 (gone), "
         "changed since the previous boot: it will not start, or will start with another device"),
    ]


def test_a_domain_on_a_replaced_device_and_one_on_an_untouched_device(tree, tmp_path):
    """libvirt's test driver: at the previous boot 01:00.0 was a 10de:2482; now it is a 10de:2484. The
    domain `gaming` is configured with it, `compute` with the NIC at 04:00.0, which did not change. By
    hand: device_replaced on 01:00.0, critical (a domain is configured with it), and hostdev_changed
    for domain:gaming alone; nothing about 04:00.0 or compute."""
    from passthrough_exporter.commands.statefile import StateWriter
    from passthrough_exporter.reading.state import BootState

    hosts.workstation(tree)
    state = tmp_path / "state.json"
    device = tree.pci_path("0000:01:00.0") / "device"
    now = device.read_text()
    tree.boot_id("aaaaaaaa-0000-4000-8000-00000000000a")
    device.write_text("0x2482\n")
    assert StateWriter(str(state)).after_refresh(
        SysfsSource(str(tree.sys), str(tree.proc), state=BootState(str(state), str(tree.proc))).read())
    device.write_text(now)
    tree.boot_id("bbbbbbbb-0000-4000-8000-00000000000b")
    snap = _judge_since(tree, tmp_path, state, domain("gaming", pci_hostdev("0000:01:00.0"), running=False),
                        domain("compute", pci_hostdev("0000:04:00.0")))
    changed = [(f.code, f.severity, f.subject) for f in snap.findings
               if f.code in ("device_replaced", "group_changed", "device_gone", "hostdev_changed")]
    assert changed == [("device_replaced", "critical", "pci_0000_01_00_0"),
                       ("hostdev_changed", "critical", "domain:gaming")]

