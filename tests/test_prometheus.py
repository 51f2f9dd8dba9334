"""A real Prometheus on 127.0.0.1 scrapes real exporters; every dashboard query returns data and the
expected alerts are pending or firing."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import hosts
import pytest
import yaml
from sysfs_builder import SysfsTree
from helpers import EXE
from helpers import free_port

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian package prometheus) is not installed")


def http_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


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
    tree.process(4242, "qemu-system-x86", ["qemu-system-x86_64", "-name", "guest=win11"], {4: "/dev/vfio/2"})
    tree.pci("0000:02:00.0", 0x10DE, 0x2204, 0x030000, driver="nvidia", group=9, unreachable=True)


def safe_host(tree: SysfsTree) -> None:
    hosts.workstation(tree)
    tree.interrupts("IR-IO-APIC", "IR-PCI-MSI")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    procs = []
    targets = {}
    try:
        for name, build in (("safe", safe_host), ("unsafe", unsafe_host), ("libvirt", hosts.workstation)):
            tree = SysfsTree(base / name)
            build(tree)
            source = ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)]
            if name == "libvirt":  # libvirt's test driver, with a VM holding the GPU: assignments have data
                pytest.importorskip("libvirt", reason="the [libvirt] extra is not installed")
                from libvirt_host import domain, pci_hostdev, write_host

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
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        wait_for(lambda: http_json(f"http://127.0.0.1:{prom_port}/-/ready".replace("/-/ready", "/api/v1/status/buildinfo")),
                 60, "prometheus to start")

        def scraped_twice():
            q = urllib.parse.quote("count_over_time(passthrough_exporter_build_info[1m]) >= 2")
            return len(http_json(f"{api}/query?query={q}")["data"]["result"]) == len(targets)

        wait_for(scraped_twice, 60, "two scrapes of each exporter")
        yield api, targets
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


def query(api: str, expr: str) -> list:
    body = http_json(f"{api}/query?query={urllib.parse.quote(expr)}")
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
    api, _ = stack
    empty = [title for title, expr in dashboard_queries() if not query(api, expr)]
    assert empty == []


def test_live_state_queries_return_the_hand_counted_numbers(stack):
    api, targets = stack

    def by_instance(expr: str) -> dict[str, str]:
        return {r["metric"].get("instance", ""): r["value"][1] for r in query(api, expr)}

    assert by_instance("passthrough_interrupt_remapping_enabled") == {targets["safe"]: "1", targets["unsafe"]: "0"}
    assert by_instance('count by (instance) (passthrough_finding{code="no_interrupt_remapping"})') == {
        targets["unsafe"]: "1"}
    in_use = query(api, "passthrough_device_in_use == 1")
    # The QEMU process holds /dev/vfio/2, which stands for every function of group 2.
    assert sorted((r["metric"]["device"], r["metric"]["vm"]) for r in in_use) == [
        ("pci_0000_01_00_0", "win11"), ("pci_0000_01_00_1", "win11")]
    assert by_instance('count by (instance) (passthrough_finding{code="device_unreachable"})') == {
        targets["unsafe"]: "1"}
    assert by_instance('count by (instance) (passthrough_finding{code="group_split"})') == {targets["libvirt"]: "1"}
    assert by_instance('count by (instance) (passthrough_finding{code="assignment_conflict",severity="critical"})') \
        == {targets["libvirt"]: "1"}
    assert by_instance('count by (instance) (passthrough_finding{code="hostdev_missing"})') == {targets["libvirt"]: "1"}
    running = query(api, 'passthrough_device_assigned{device="pci_0000_04_00_0"}')
    assert sorted((r["metric"]["domain"], r["metric"]["running"]) for r in running) == [
        ("compute", "true"), ("render", "true")]
    # Free PCI devices: the safe workstation's 11 eligible ones (nothing in use). The libvirt twin:
    # 01:00.0, 01:00.1, 04:00.0 and 05:00.0 are assigned, 06:00.0 and 06:00.1 blocked (group 5 with
    # the assigned ones); left are 00:14.0, 00:17.0 and the SR-IOV PF 81:00.0 with its two VFs.
    free = by_instance('sum by (instance) (passthrough_device_available{type="pci"})')
    assert free == {targets["safe"]: "11", targets["unsafe"]: "0", targets["libvirt"]: "5"}


def test_unsafe_host_alerts_and_safe_host_does_not(stack):
    api, targets = stack

    def alerts():
        found = http_json(f"{api}/alerts")["data"]["alerts"]
        by = {}
        for a in found:
            by.setdefault(a["labels"].get("host"), set()).add(a["labels"]["alertname"])
        return by if {"PassthroughMixedIommuGroup", "PassthroughIsolationWeakened"} <= by.get("unsafe", set()) else None

    by_host = wait_for(alerts, 30, "the unsafe host's alerts")
    # Well within a minute of the first evaluation: alerts with a `for` wait (pending), others fire.
    rules = yaml.safe_load((GRAFANA / "alerts.yml").read_text())
    waits = {r["alert"]: "for" in r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for a in http_json(f"{api}/alerts")["data"]["alerts"]:
        assert a["state"] == ("pending" if waits[a["labels"]["alertname"]] else "firing"), a
    assert "PassthroughMixedIommuGroup" not in by_host.get("safe", set())
    assert "PassthroughIsolationWeakened" not in by_host.get("safe", set())
    assert "PassthroughMixedIommuGroup" not in by_host.get("libvirt", set())
    held = query(api, 'passthrough_device_assigned{domain="gaming"}')
    assert sorted(r["metric"]["device"] for r in held) == ["pci_0000_01_00_0", "pci_0000_01_00_1"]
    mixed = query(api, 'instance:passthrough_mixed_groups:count')
    assert [(r["metric"]["instance"], r["value"][1]) for r in mixed] == [(targets["unsafe"], "1")]
