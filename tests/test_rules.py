"""The alerting and recording rules load in Prometheus and pass their unit tests (promtool); the dashboard's
layout holds together and its live-state queries give the rows an operator expects (promtool, no server)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")


@needs_promtool
def test_rules_are_valid():
    out = subprocess.run([PROMTOOL, "check", "rules", str(GRAFANA / "alerts.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_every_alert_has_a_unit_test_and_they_pass():
    rules = yaml.safe_load((GRAFANA / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for g in rules["groups"]:
        for r in g["rules"]:
            if "alert" in r:
                assert {"summary", "description", "runbook"} <= set(r["annotations"]), r["alert"]
    tests = yaml.safe_load((GRAFANA / "alerts.test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    assert alerts == tested
    out = subprocess.run([PROMTOOL, "test", "rules", str(GRAFANA / "alerts.test.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def dashboard() -> dict:
    return json.loads((GRAFANA / "passthrough-dashboard.json").read_text())


def test_dashboard_panels_do_not_overlap_and_host_rows_follow_the_host_variable():
    dash = dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    taken = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = p["title"]
    recorded = {r["record"] for g in yaml.safe_load((GRAFANA / "alerts.yml").read_text())["groups"]
                for r in g["rules"] if "record" in r}
    row = None
    for p in sorted(dash["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if p["type"] == "row":
            row = p["title"]
            continue
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            expr = t["expr"]
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert set(re.findall(r"\binstance(?:_type)?:passthrough_\w+:\w+", expr)) <= recorded, p["title"]
            if row != "Fleet":  # host rows narrow every selector to the chosen hosts
                for name, labels in re.findall(r"\b(passthrough_\w+)(\{[^}]*\})?", expr):
                    assert 'instance=~"$instance"' in labels, f"{p['title']}: {name} ignores $instance"


# One host (hv1) with a GPU (group 2) split between two VMs, an HBA (group 3) configured in two running
# domains, a NIC free to hand out, a device that fell off the bus, a claimed USB device with no named holder
# and a domain whose hostdev is gone; hv2 with remapping on, one free device and a group (8) split between
# two QEMU processes no libvirt knows of; hv3 whose interrupts could not be read; hv4 with no IOMMU at all.
LIVE_HOSTS = {
    'passthrough_exporter_build_info{instance="hv1",version="0.1.0"}': 1,
    'passthrough_exporter_build_info{instance="hv2",version="0.1.0"}': 1,
    'passthrough_exporter_build_info{instance="hv3",version="0.1.0"}': 1,
    'passthrough_exporter_build_info{instance="hv4",version="0.1.0"}': 1,
    'passthrough_iommu_enabled{instance="hv1"}': 1,
    'passthrough_iommu_enabled{instance="hv2"}': 1,
    'passthrough_iommu_enabled{instance="hv3"}': 1,
    'passthrough_iommu_enabled{instance="hv4"}': 0,
    'passthrough_interrupt_remapping_enabled{instance="hv1"}': 0,
    'passthrough_interrupt_remapping_enabled{instance="hv2"}': 1,
    'passthrough_interrupt_remapping_enabled{instance="hv4"}': 0,
    'passthrough_device_info{instance="hv1",device="pci_0000_01_00_0",type="pci",iommu_group="2"}': 1,
    'passthrough_device_info{instance="hv1",device="pci_0000_01_00_1",type="pci",iommu_group="2"}': 1,
    'passthrough_device_info{instance="hv1",device="pci_0000_02_00_0",type="pci",iommu_group="4"}': 1,
    'passthrough_device_info{instance="hv1",device="pci_0000_03_00_0",type="pci",iommu_group="3"}': 1,
    'passthrough_device_info{instance="hv1",device="pci_0000_05_00_0",type="pci",iommu_group="5"}': 1,
    'passthrough_device_info{instance="hv1",device="usb_1_1_2",type="usb_device",iommu_group=""}': 1,
    'passthrough_device_info{instance="hv2",device="pci_0000_07_00_0",type="pci",iommu_group="7"}': 1,
    'passthrough_device_info{instance="hv2",device="pci_0000_08_00_0",type="pci",iommu_group="8"}': 1,
    'passthrough_device_info{instance="hv2",device="pci_0000_08_00_1",type="pci",iommu_group="8"}': 1,
    'passthrough_device_eligible{instance="hv1",device="pci_0000_01_00_0",type="pci"}': 1,
    'passthrough_device_eligible{instance="hv1",device="pci_0000_01_00_1",type="pci"}': 1,
    'passthrough_device_eligible{instance="hv1",device="pci_0000_02_00_0",type="pci"}': 1,
    'passthrough_device_eligible{instance="hv1",device="pci_0000_03_00_0",type="pci"}': 1,
    'passthrough_device_eligible{instance="hv1",device="pci_0000_05_00_0",type="pci"}': 0,
    'passthrough_device_eligible{instance="hv1",device="usb_1_1_2",type="usb_device"}': 1,
    'passthrough_device_eligible{instance="hv2",device="pci_0000_07_00_0",type="pci"}': 1,
    'passthrough_device_eligible{instance="hv2",device="pci_0000_08_00_0",type="pci"}': 1,
    'passthrough_device_eligible{instance="hv2",device="pci_0000_08_00_1",type="pci"}': 1,
    'passthrough_device_available{instance="hv1",device="pci_0000_01_00_0",type="pci"}': 0,
    'passthrough_device_available{instance="hv1",device="pci_0000_01_00_1",type="pci"}': 0,
    'passthrough_device_available{instance="hv1",device="pci_0000_02_00_0",type="pci"}': 1,
    'passthrough_device_available{instance="hv1",device="pci_0000_03_00_0",type="pci"}': 0,
    'passthrough_device_available{instance="hv1",device="pci_0000_05_00_0",type="pci"}': 0,
    'passthrough_device_available{instance="hv1",device="usb_1_1_2",type="usb_device"}': 0,
    'passthrough_device_available{instance="hv2",device="pci_0000_07_00_0",type="pci"}': 1,
    'passthrough_device_available{instance="hv2",device="pci_0000_08_00_0",type="pci"}': 0,
    'passthrough_device_available{instance="hv2",device="pci_0000_08_00_1",type="pci"}': 0,
    'passthrough_device_assigned{instance="hv1",device="pci_0000_01_00_0",domain="win10",running="true"}': 1,
    'passthrough_device_assigned{instance="hv1",device="pci_0000_01_00_1",domain="linux",running="false"}': 1,
    'passthrough_device_assigned{instance="hv1",device="pci_0000_03_00_0",domain="a",running="true"}': 1,
    'passthrough_device_assigned{instance="hv1",device="pci_0000_03_00_0",domain="b",running="true"}': 1,
    'passthrough_device_in_use{instance="hv1",device="pci_0000_01_00_0",type="pci",vm="win10"}': 1,
    'passthrough_device_in_use{instance="hv1",device="pci_0000_01_00_1",type="pci",vm=""}': 0,
    'passthrough_device_in_use{instance="hv1",device="pci_0000_03_00_0",type="pci",vm="a"}': 1,
    'passthrough_device_in_use{instance="hv1",device="usb_1_1_2",type="usb_device",vm=""}': 1,
    'passthrough_device_in_use{instance="hv2",device="pci_0000_08_00_0",type="pci",vm="vm1"}': 1,
    'passthrough_device_in_use{instance="hv2",device="pci_0000_08_00_1",type="pci",vm="vm2"}': 1,
    'passthrough_finding{instance="hv1",code="group_split",severity="critical",subject="group:2"}': 1,
    'passthrough_finding{instance="hv2",code="group_split",severity="critical",subject="group:8"}': 1,
    'passthrough_finding{instance="hv1",code="group_multi_device",severity="info",subject="group:2"}': 1,
    'passthrough_finding{instance="hv1",code="device_unreachable",severity="critical",subject="pci_0000_05_00_0"}': 1,
    'passthrough_finding{instance="hv1",code="assignment_conflict",severity="critical",subject="pci_0000_03_00_0"}': 1,
    'passthrough_finding{instance="hv1",code="hostdev_missing",severity="warning",subject="domain:old"}': 1,
    'passthrough_finding{instance="hv1",code="no_flr",severity="warning",subject="pci_0000_01_00_0"}': 1,
}

# (panel id, refId) -> the rows the panel must show for LIVE_HOSTS, worked out by hand.
LIVE_PANELS = {
    (19, "A"): {"{}": 1},  # hv1 only: hv2 remaps, hv3 is unknown, hv4 has no IOMMU
    (20, "A"): {"{}": 1},
    (21, "A"): {"{}": 2},
    (22, "A"): {"{}": 2},  # the conflict and the missing hostdev; not group_split, not no_flr
    (23, "A"): {"{}": 5},  # GPU, HBA, USB device, hv2's two; the GPU's audio function reports 0
    (24, "A"): {"{}": 2},  # the NIC on hv1, the device on hv2
    (8, "E"): {'{instance="hv1"}': 0, '{instance="hv2"}': 1, '{instance="hv4"}': 0},
    (8, "F"): {'{instance="hv1"}': 3, '{instance="hv2"}': 2},
    (8, "G"): {'{instance="hv1"}': 1, '{instance="hv2"}': 1},
    (25, "A"): {'{instance="hv1"}': 0, '{instance="hv2"}': 1, '{instance="hv3"}': -1, '{instance="hv4"}': 0},
    (26, "A"): {'{instance="hv1",subject="pci_0000_05_00_0"}': 1},
    (28, "A"): {
        '{instance="hv1",device="pci_0000_01_00_0",type="pci",vm="win10"}': 1,
        '{instance="hv1",device="pci_0000_03_00_0",type="pci",vm="a"}': 1,
        '{instance="hv1",device="usb_1_1_2",type="usb_device",vm="(not known)"}': 1,
        '{instance="hv2",device="pci_0000_08_00_0",type="pci",vm="vm1"}': 1,
        '{instance="hv2",device="pci_0000_08_00_1",type="pci",vm="vm2"}': 1,
    },
    (29, "A"): {'{instance="hv1",type="pci"}': 4, '{instance="hv1",type="usb_device"}': 1,
                '{instance="hv2",type="pci"}': 3},
    (29, "B"): {'{instance="hv1",type="pci"}': 2, '{instance="hv1",type="usb_device"}': 1,
                '{instance="hv2",type="pci"}': 2},
    (29, "C"): {'{instance="hv1",type="pci"}': 1, '{instance="hv1",type="usb_device"}': 0,
                '{instance="hv2",type="pci"}': 1},
    (30, "A"): {  # group 2: the GPU goes to win10 (configured and holding it), its audio function to linux
        '{instance="hv1",iommu_group="2",device="pci_0000_01_00_0",vm="win10"}': 1,
        '{instance="hv1",iommu_group="2",device="pci_0000_01_00_1",vm="linux"}': 1,
        # group 8 on hv2 is split by the processes holding it, not by any configuration
        '{instance="hv2",iommu_group="8",device="pci_0000_08_00_0",vm="vm1"}': 1,
        '{instance="hv2",iommu_group="8",device="pci_0000_08_00_1",vm="vm2"}': 1,
    },
    (31, "A"): {
        '{instance="hv1",code="assignment_conflict",severity="critical",device="pci_0000_03_00_0",domain="a",running="true"}': 1,
        '{instance="hv1",code="assignment_conflict",severity="critical",device="pci_0000_03_00_0",domain="b",running="true"}': 1,
        '{instance="hv1",code="hostdev_missing",severity="warning",domain="old"}': 1,
    },
}


@needs_promtool
def test_live_state_panels_show_the_expected_rows(tmp_path):
    panels = {p["id"]: p for p in dashboard()["panels"]}
    shutil.copy(GRAFANA / "alerts.yml", tmp_path / "alerts.yml")  # the fleet panels read recording rules
    exprs = []
    for (pid, ref), rows in LIVE_PANELS.items():
        (target,) = [t for t in panels[pid]["targets"] if t["refId"] == ref]
        exprs.append({
            "expr": target["expr"].replace("$instance", ".*"),
            "eval_time": "2m",
            "exp_samples": [{"labels": labels, "value": value} for labels, value in rows.items()],
        })
    suite = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": f"{v}x5"} for s, v in LIVE_HOSTS.items()],
            "promql_expr_test": exprs,
        }],
    }
    (tmp_path / "panels.test.yml").write_text(yaml.safe_dump(suite, sort_keys=False))
    out = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "panels.test.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
