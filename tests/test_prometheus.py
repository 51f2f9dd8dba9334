"""A real Prometheus on 127.0.0.1 scrapes real exporters; every dashboard query returns data and the
expected alerts are pending or firing."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from tests.support import hosts
from tests.support.client import free_port, request
from tests.support.process import EXE
from tests.support.sysfs_builder import SysfsTree, char_number

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian package prometheus) is not installed")


def http_json(port: int, path: str) -> dict:
    """An answer of the Prometheus HTTP API on `port`, parsed; one other than 200 raises an OSError, which
    wait_for takes for "not yet"."""
    answer = request(port, "/api/v1" + path, timeout=5)
    if answer.status != 200:
        raise ConnectionError(f"/api/v1{path}: {answer.status} {answer.reason}")
    return json.loads(answer.body)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def unsafe_host(tree: SysfsTree) -> None:
    """GPU handed to vfio-pci while its audio function stays on the host driver, and ACS override on."""
    hosts.base(tree)
    tree.pci("0000:00:01.0", 0x8086, 0x1901, 0x060400, driver="pcieport", group=1, reset_method=None)
    tree.pci("0000:01:00.0", 0x10DE, 0x2484, 0x030000, parent="0000:00:01.0", driver="vfio-pci", group=2)
    tree.pci("0000:01:00.1", 0x10DE, 0x228B, 0x040300, parent="0000:00:01.0", driver="snd_hda_intel", group=2)
    tree.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on pcie_acs_override=downstream,multifunction")
    tree.interrupts("IO-APIC", "PCI-MSI")  # no remapping
    # A QEMU holds the GPU's group; a second GPU fell off the bus.
    tree.vfio_group(2, char_number("/dev/zero"))  # a fake procfs holds a real device: /dev/zero stands in
    tree.process(4242, "qemu-system-x86", ["qemu-system-x86_64", "-name", "guest=win11"], {4: "/dev/zero"})
    tree.pci("0000:02:00.0", 0x10DE, 0x2204, 0x030000, driver="nvidia", group=9, unreachable=True)
    # A vGPU card with one instance carved out: blocked, so the free counts stay as they were.
    tree.pci("0000:41:00.0", 0x10DE, 0x1EB8, 0x030200, driver="nvidia", group=10, reset_method="flr")
    tree.mdev_type("0000:41:00.0", "nvidia-222", "GRID T4-1Q", available=15, instances=1)


def previous_boot_with_another_gpu(tree: SysfsTree, state: Path) -> None:
    """The unsafe host's state file as its previous boot left it: another GPU model (10de:2482) at
    01:00.0, which a QEMU holds now, so `device_replaced` is critical."""
    from passthrough_exporter.commands.statefile import StateWriter
    from passthrough_exporter.reading.sources.sysfs import SysfsSource
    from passthrough_exporter.reading.state import BootState

    device = tree.pci_path("0000:01:00.0") / "device"
    now, boot = device.read_text(), "aaaaaaaa-0000-4000-8000-00000000000a"
    tree.boot_id(boot)
    device.write_text("0x2482\n")
    StateWriter(str(state)).after_refresh(SysfsSource(str(tree.sys), str(tree.proc),
                                                      state=BootState(str(state), str(tree.proc))).read())
    device.write_text(now)
    tree.boot_id("bbbbbbbb-0000-4000-8000-00000000000b")


def with_root_disk(tree: SysfsTree) -> None:
    """The workstation with `/` on an NVMe disk of its own: the root device is known, so nothing is held
    back for it but that disk."""
    hosts.workstation(tree)
    hosts.nvme_lvm_root(tree)


def safe_host(tree: SysfsTree) -> None:
    with_root_disk(tree)
    tree.interrupts("IR-IO-APIC", "IR-PCI-MSI")
    # The GPU's link trained x8 of x16 and saw a few correctable errors; it is awake.
    for name, value in {"current_link_speed": "16.0 GT/s PCIe", "max_link_speed": "16.0 GT/s PCIe",
                        "current_link_width": "8", "max_link_width": "16", "power_state": "D0",
                        "aer_dev_correctable": "Receiver Error 3\nBad TLP 0\nTOTAL_ERR_COR 3",
                        "aer_dev_nonfatal": "Undefined 0\nTOTAL_ERR_NONFATAL 0",
                        "aer_dev_fatal": "Undefined 0\nTOTAL_ERR_FATAL 0"}.items():
        tree.write(tree.pci_path("0000:01:00.0") / name, value)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    procs = []
    targets = {}
    try:
        for name, build in (("safe", safe_host), ("unsafe", unsafe_host), ("libvirt", with_root_disk),
                            ("vgpu", hosts.h200_vgpu)):
            tree = SysfsTree(base / name)
            build(tree)
            state = base / f"{name}-state.json"
            if name == "unsafe":
                previous_boot_with_another_gpu(tree, state)
            source = ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc), "--state.path", str(state)]
            if name == "libvirt":  # libvirt's test driver, with a VM holding the GPU: assignments have data
                pytest.importorskip("libvirt", reason="the [libvirt] extra is not installed")
                from tests.support.libvirt_host import domain, pci_hostdev, write_host

                uri = write_host(tree, base / "libvirt.xml", (
                    domain("gaming", pci_hostdev("0000:01:00.0"), pci_hostdev("0000:01:00.1")),
                    # 04:00.0 in two running domains; 05:00.0 of the same group 5 in a third: split.
                    domain("compute", pci_hostdev("0000:04:00.0")), domain("render", pci_hostdev("0000:04:00.0")),
                    domain("music", pci_hostdev("0000:05:00.0"), running=False),
                    domain("old", pci_hostdev("0000:0a:00.0"), running=False),  # not on this host
                ))
                source += ["--source", "libvirt", "--libvirt.uri", uri]
            port = free_port()
            procs.append(subprocess.Popen(
                [EXE, "serve", "--web.listen-address", f"127.0.0.1:{port}", *source,
                 "--refresh-interval", "5s", "--log.level", "warn"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            targets[name] = f"127.0.0.1:{port}"
        prom_port = free_port()
        config = base / "prometheus.yml"
        shutil.copy(GRAFANA / "alerts.yml", base / "alerts.yml")
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n  - job_name: passthrough\n    static_configs:\n"
            + "".join(f"      - targets: ['{t}']\n        labels: {{host: {n}}}\n" for n, t in targets.items()))
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={base / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=open(base / "prometheus.log", "w")))
        wait_for(lambda: http_json(prom_port, "/status/buildinfo"), 60, "prometheus to start")

        def scraped_twice():
            q = urllib.parse.quote("count_over_time(passthrough_exporter_build_info[1m]) >= 2")
            return len(http_json(prom_port, f"/query?query={q}")["data"]["result"]) == len(targets)

        wait_for(scraped_twice, 60, "two scrapes of each exporter")
        yield prom_port, targets
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


def query(prom: int, expr: str) -> list:
    body = http_json(prom, f"/query?query={urllib.parse.quote(expr)}")
    assert body["status"] == "success", body
    return body["data"]["result"]


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((GRAFANA / "passthrough-dashboard.json").read_text())
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$instance", ".*").replace("$__rate_interval", "1m")
            out.append((f"{panel['title']} / {t['refId']}", expr))
    return out


def test_dashboard_is_importable_shape():
    dash = json.loads((GRAFANA / "passthrough-dashboard.json").read_text())
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    assert names["instance"]["includeAll"] and names["instance"]["multi"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p.get("description")


def test_every_panel_query_returns_data(stack):
    prom, _ = stack
    empty = [title for title, expr in dashboard_queries() if not query(prom, expr)]
    assert empty == []


def test_live_state_queries_return_the_hand_counted_numbers(stack):
    prom, targets = stack

    def by_instance(expr: str) -> dict[str, str]:
        return {r["metric"].get("instance", ""): r["value"][1] for r in query(prom, expr)}

    assert by_instance("passthrough_interrupt_remapping_enabled") == {
        targets["safe"]: "1", targets["unsafe"]: "0", targets["libvirt"]: "1", targets["vgpu"]: "1"}
    assert by_instance('count by (instance) (passthrough_finding{code="no_interrupt_remapping"})') == {
        targets["unsafe"]: "1"}
    in_use = query(prom, "passthrough_device_in_use == 1")
    # The QEMU process holds group 2's VFIO node, which stands for every function of group 2; on the
    # vGPU host, another holds the cdev of the H200's VF 41:00.4.
    assert sorted((r["metric"]["device"], r["metric"]["vm"]) for r in in_use) == [
        ("pci_0000_01_00_0", "win11"), ("pci_0000_01_00_1", "win11"), ("pci_0000_41_00_4", "llm1")]
    assert by_instance('count by (instance) (passthrough_finding{code="device_unreachable"})') == {
        targets["unsafe"]: "1"}
    assert by_instance('count by (instance) (passthrough_finding{code="group_split"})') == {targets["libvirt"]: "1"}
    assert by_instance('count by (instance) (passthrough_finding{code="assignment_conflict",severity="critical"})') \
        == {targets["libvirt"]: "1"}
    assert by_instance('count by (instance) (passthrough_finding{code="hostdev_missing"})') == {targets["libvirt"]: "1"}
    running = query(prom, 'passthrough_device_assigned{device="pci_0000_04_00_0"}')
    assert sorted((r["metric"]["domain"], r["metric"]["running"]) for r in running) == [
        ("compute", "true"), ("render", "true")]
    # Free PCI devices: the safe workstation's 11 eligible ones (nothing in use). The libvirt twin:
    # 01:00.0, 01:00.1, 04:00.0 and 05:00.0 are assigned, 06:00.0 and 06:00.1 blocked (group 5 with
    # the assigned ones); left are 00:14.0, 00:17.0 and the SR-IOV PF 81:00.0 with its two VFs. The
    # vGPU host: the H200's VF 41:00.5 alone (it carries a type nobody holds).
    free = by_instance('sum by (instance) (passthrough_device_available{type="pci"})')
    assert free == {targets["safe"]: "11", targets["unsafe"]: "0", targets["libvirt"]: "5", targets["vgpu"]: "1"}
    assert by_instance('count by (instance) (passthrough_finding{code="link_downtrained"})') == {targets["safe"]: "1"}


def test_free_devices_by_model_across_the_fleet(stack):
    """The fleet panel's rule, against a hand count over the three hosts: the safe workstation's
    eligible devices all free, the unsafe host none, its libvirt twin what no domain holds or blocks."""
    prom, _ = stack
    rows = {(r["metric"]["type"], r["metric"].get("vendor_id", ""), r["metric"].get("product_id", ""),
             r["metric"].get("product", "") if r["metric"]["type"] == "scsi" else ""): r["value"][1]
            for r in query(prom, "product:passthrough_available_devices:sum")}
    assert rows == {
        # GPU, its audio, the ASMedia SATA and the chipset xHCI of group 5: free on the safe host only.
        ("pci", "0x10de", "0x2484", ""): "1", ("pci", "0x10de", "0x228b", ""): "1",
        ("pci", "0x1b21", "0x0612", ""): "1", ("pci", "0x8086", "0x15ec", ""): "1",
        ("pci", "0x8086", "0x1521", ""): "2",  # the two-port NIC of group 5: blocked on the libvirt twin
        ("pci", "0x10de", "0x1eb8", ""): "0",  # the vGPU card: carved up, so blocked; the model is known
        ("pci", "0x10de", "0x2335", ""): "1",  # the H200's VF 41:00.5; its PF and other VFs are blocked or held
        ("pci", "0x8086", "0x154c", ""): "4", ("pci", "0x8086", "0x1572", ""): "2",  # VFs and their PF
        ("pci", "0x8086", "0xa352", ""): "2", ("pci", "0x8086", "0xa36d", ""): "2",  # SATA, xHCI
        ("usb_device", "0x046d", "0xc077", ""): "2", ("usb_device", "0x046d", "0xc31c", ""): "2",
        ("usb_device", "0x0781", "0x5567", ""): "2",
        ("scsi", "", "", "Cruzer Blade"): "2", ("scsi", "", "", "DISK"): "2", ("scsi", "", "", "DVD-RW"): "2",
        ("scsi", "", "", "Samsung SSD 860"): "2",
    }


def test_the_vgpu_capacity_panel_shows_mdev_and_vendor_specific_vgpu(stack):
    """The unsafe host's mdev type and the vGPU host's vendor-specific types, in the panel's one table."""
    prom, targets = stack
    queries = dict(dashboard_queries())

    def rows(ref: str) -> dict[tuple[str, str], str]:
        return {(r["metric"]["instance"], r["metric"]["mdev_type"]): r["value"][1]
                for r in query(prom, queries[f"vGPU capacity / {ref}"])}

    unsafe, vgpu = targets["unsafe"], targets["vgpu"]
    assert rows("A") == {(unsafe, "nvidia-222"): "15", (vgpu, "1414"): "2", (vgpu, "1415"): "1"}
    assert rows("B") == {(unsafe, "nvidia-222"): "1", (vgpu, "1414"): "2", (vgpu, "1415"): "0"}
    assert query(prom, queries["vGPU instances / A"])[0]["value"][1] == "3"  # one mdev, two VFs carrying 1414


def test_unsafe_host_alerts_and_safe_host_does_not(stack):
    prom, targets = stack

    def alerts():
        found = http_json(prom, "/alerts")["data"]["alerts"]
        by = {}
        for a in found:
            by.setdefault(a["labels"].get("host"), set()).add(a["labels"]["alertname"])
        return by if {"PassthroughMixedIommuGroup", "PassthroughIsolationWeakened",
                      "PassthroughDeviceChangedSinceBoot"} <= by.get("unsafe", set()) else None

    by_host = wait_for(alerts, 30, "the unsafe host's alerts")
    # Well within a minute of the first evaluation: alerts with a `for` wait (pending), others fire.
    rules = yaml.safe_load((GRAFANA / "alerts.yml").read_text())
    waits = {r["alert"]: "for" in r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for a in http_json(prom, "/alerts")["data"]["alerts"]:
        assert a["state"] == ("pending" if waits[a["labels"]["alertname"]] else "firing"), a
    assert "PassthroughMixedIommuGroup" not in by_host.get("safe", set())
    assert "PassthroughIsolationWeakened" not in by_host.get("safe", set())
    assert "PassthroughMixedIommuGroup" not in by_host.get("libvirt", set())
    # The unsafe host's held GPU is another model than at its previous boot; the others have no previous boot.
    assert [h for h, names in by_host.items() if "PassthroughDeviceChangedSinceBoot" in names] == ["unsafe"]
    replaced = query(prom, 'passthrough_finding{code="device_replaced"}')
    assert [(r["metric"]["host"], r["metric"]["subject"], r["metric"]["severity"]) for r in replaced] == [
        ("unsafe", "pci_0000_01_00_0", "critical")]
    held = query(prom, 'passthrough_device_assigned{domain="gaming"}')
    assert sorted(r["metric"]["device"] for r in held) == ["pci_0000_01_00_0", "pci_0000_01_00_1"]
    mixed = query(prom, 'instance:passthrough_mixed_groups:count')
    assert [(r["metric"]["instance"], r["value"][1]) for r in mixed] == [(targets["unsafe"], "1")]
