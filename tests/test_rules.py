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
            assert set(re.findall(r"\b[a-z_]+:passthrough_\w+:\w+", expr)) <= recorded, p["title"]
            if not row.startswith("Fleet"):  # host rows narrow every selector to the chosen hosts
                for name, labels in re.findall(r"\b(passthrough_\w+)(\{[^}]*\})?", expr):
                    assert 'instance=~"$instance"' in labels, f"{p['title']}: {name} ignores $instance"


# One host (hv1) with a GPU (group 2) split between two VMs, an HBA (group 3) configured in two running
# domains, a NIC free to hand out, a device that fell off the bus, a claimed USB device with no named holder
# and a domain whose hostdev is gone; hv2 with remapping on, one free device and a group (8) split between
# two QEMU processes no libvirt knows of; hv3 whose interrupts could not be read; hv4 with no IOMMU at all.
LIVE_HOSTS = {
    'passthrough_exporter_build_info{instance="hv1",revision="3e5a9c1d7b2f4e6a8c0d1e2f3a4b5c6d7e8f9a0b",version="0.1.0"}': 1,
    'passthrough_exporter_build_info{instance="hv2",revision="3e5a9c1d7b2f4e6a8c0d1e2f3a4b5c6d7e8f9a0b",version="0.1.0"}': 1,
    'passthrough_exporter_build_info{instance="hv3",revision="3e5a9c1d7b2f4e6a8c0d1e2f3a4b5c6d7e8f9a0b",version="0.1.0"}': 1,
    'passthrough_exporter_build_info{instance="hv4",revision="3e5a9c1d7b2f4e6a8c0d1e2f3a4b5c6d7e8f9a0b",version="0.1.0"}': 1,
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


def check_panels(tmp_path: Path, series: dict[str, str], panels: dict, eval_time: str) -> None:
    """Evaluate each (panel id, refId) query with promtool over `series` (promtool value notation, one sample a
    minute) and compare with the hand-worked rows."""
    by_id = {p["id"]: p for p in dashboard()["panels"]}
    shutil.copy(GRAFANA / "alerts.yml", tmp_path / "alerts.yml")  # the fleet panels read recording rules
    exprs = []
    for (pid, ref), rows in panels.items():
        (target,) = [t for t in by_id[pid]["targets"] if t["refId"] == ref]
        exprs.append({
            "expr": target["expr"].replace("$instance", ".*"),
            "eval_time": eval_time,
            "exp_samples": [{"labels": labels, "value": value} for labels, value in rows.items()],
        })
    suite = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "promql_expr_test": exprs,
        }],
    }
    (tmp_path / "panels.test.yml").write_text(yaml.safe_dump(suite, sort_keys=False))
    out = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "panels.test.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_live_state_panels_show_the_expected_rows(tmp_path):
    check_panels(tmp_path, {s: f"{v}x5" for s, v in LIVE_HOSTS.items()}, LIVE_PANELS, "2m")


A100 = 'type="pci",vendor_id="0x10de",product_id="0x20b5",product="GA100 [A100 PCIe 80GB]"'
L4 = 'type="pci",vendor_id="0x10de",product_id="0x27b8",product="AD104GL [L4]"'
ROOT_PORT = 'type="pci",vendor_id="0x8086",product_id="0x1901",product="6th-10th Gen Core Processor PCIe Controller (x16)"'
MOUSE = 'type="usb_device",vendor_id="0x046d",product_id="0xc077",product="M105 Optical Mouse"'
GPU, GPU2, PF, VF, VGPU = "pci_0000_41_00_0", "pci_0000_42_00_0", "pci_0000_81_00_0", "pci_0000_81_02_0", "pci_0000_3b_00_0"
H200 = "pci_0000_61_00_0"  # a PF on NVIDIA's vendor-specific vGPU (no mdev): its VFs carry the types
N118, N235 = 'name="NVIDIA H200X-1-18C"', 'name="NVIDIA H200X-2-35C"'


def pools(instance: str, model: str, numa: str, **states: int) -> dict[str, str]:
    return {f'passthrough_pool_devices{{instance="{instance}",{model},numa_node="{numa}",state="{s}"}}': f"{n}x75"
            for s, n in states.items()}


def link(instance: str, device: str, speed: tuple, width: tuple) -> dict[str, str]:
    out = {}
    for kind, gts, lanes in zip(("current", "max"), speed, width):
        out[f'passthrough_pcie_link_speed_gts{{instance="{instance}",device="{device}",kind="{kind}"}}'] = f"{gts}x75"
        out[f'passthrough_pcie_link_width{{instance="{instance}",device="{device}",kind="{kind}"}}'] = f"{lanes}x75"
    return out


def aer(instance: str, device: str, correctable: str, nonfatal: str, fatal: str) -> dict[str, str]:
    return {f'passthrough_pcie_aer_errors_total{{instance="{instance}",device="{device}",severity="{sev}"}}': values
            for sev, values in (("correctable", correctable), ("nonfatal", nonfatal), ("fatal", fatal))}


# hv1: four A100s (two free on NUMA node 0, one free and one in use on node 1), two L4s (one assigned, one
# blocked), two root ports; the first A100 trained at x8 of x16, logs a correctable error a minute and two
# non-fatal errors at minute 40; the second L4-class GPU idles at 8 GT/s (full width) in D3hot and had a
# fatal error before the exporter started; an i40e PF with 8 of 64 VFs enabled; an A100 split into two
# 4C vGPUs (18 more can be made, none of type 8C now). hv2: two A100s (one free), a free USB mouse, a PF
# with all 16 VFs enabled, a fatal error on its A100 at minute 68, and an H200 on the vendor-specific vGPU
# whose VFs carry two of type 1414 and could take 1414 on two more, 1415 on one. Evaluated at minute 70.
CAPACITY_HOSTS = {
    **pools("hv1", A100, "0", available=2),
    **pools("hv1", A100, "1", available=1, in_use=1),
    **pools("hv1", L4, "0", assigned=1, blocked=1, available=0),
    **pools("hv1", ROOT_PORT, "0", ineligible=2),
    **pools("hv2", A100, "0", available=1, in_use=1),
    **pools("hv2", MOUSE, "-1", available=1),
    **link("hv1", GPU, (16, 16), (8, 16)),
    **link("hv1", GPU2, (8, 16), (16, 16)),
    **link("hv2", GPU, (16, 16), (16, 16)),
    **aer("hv1", GPU, "0+1x75", "0x39 2x35", "0x75"),
    **aer("hv1", GPU2, "0x75", "0x75", "1x75"),
    **aer("hv2", GPU, "0x75", "0x75", "0x67 1x7"),
    f'passthrough_device_power_state{{instance="hv1",device="{GPU}",state="D0"}}': "1x75",
    f'passthrough_device_power_state{{instance="hv1",device="{GPU}",state="D3hot"}}': "0x75",
    f'passthrough_device_power_state{{instance="hv1",device="{GPU2}",state="D0"}}': "0x75",
    f'passthrough_device_power_state{{instance="hv1",device="{GPU2}",state="D3hot"}}': "1x75",
    f'passthrough_device_power_state{{instance="hv1",device="{VF}",state="D0"}}': "1x75",
    f'passthrough_device_power_state{{instance="hv2",device="{GPU}",state="D0"}}': "1x75",
    f'passthrough_sriov_vfs{{instance="hv1",device="{PF}",kind="total"}}': "64x75",
    f'passthrough_sriov_vfs{{instance="hv1",device="{PF}",kind="enabled"}}': "8x75",
    f'passthrough_sriov_vfs{{instance="hv2",device="{PF}",kind="total"}}': "16x75",
    f'passthrough_sriov_vfs{{instance="hv2",device="{PF}",kind="enabled"}}': "16x75",
    f'passthrough_device_info{{instance="hv1",device="{PF}",type="pci",vendor_id="0x8086",product_id="0x1572",numa_node="0"}}': "1x75",
    f'passthrough_device_info{{instance="hv1",device="{GPU}",type="pci",vendor_id="0x10de",product_id="0x20b5",numa_node="0"}}': "1x75",
    f'passthrough_device_info{{instance="hv2",device="{PF}",type="pci",vendor_id="0x8086",product_id="0x1572",numa_node="1"}}': "1x75",
    f'passthrough_mdev_available_instances{{instance="hv1",device="{VGPU}",mdev_type="nvidia-558",name="GRID A100-4C"}}': "18x75",
    f'passthrough_mdev_available_instances{{instance="hv1",device="{VGPU}",mdev_type="nvidia-559",name="GRID A100-8C"}}': "0x75",
    f'passthrough_mdev_instances{{instance="hv1",device="{VGPU}",mdev_type="nvidia-558"}}': "2x75",
    f'passthrough_mdev_instances{{instance="hv1",device="{VGPU}",mdev_type="nvidia-559"}}': "0x75",
    f'passthrough_vgpu_available{{instance="hv2",device="{H200}",vgpu_type="1414",{N118}}}': "2x75",
    f'passthrough_vgpu_available{{instance="hv2",device="{H200}",vgpu_type="1415",{N235}}}': "1x75",
    f'passthrough_vgpu_instances{{instance="hv2",device="{H200}",vgpu_type="1414",{N118}}}': "2x75",
    f'passthrough_vgpu_instances{{instance="hv2",device="{H200}",vgpu_type="1415",{N235}}}': "0x75",
    f'passthrough_finding{{instance="hv1",code="link_downtrained",severity="warning",subject="{GPU}"}}': "1x75",
    f'passthrough_finding{{instance="hv1",code="pcie_fatal_errors",severity="critical",subject="{GPU2}"}}': "1x75",
    f'passthrough_finding{{instance="hv2",code="pcie_fatal_errors",severity="critical",subject="{GPU}"}}': "_x68 1x7",
    'passthrough_finding{instance="hv1",code="expected_missing",severity="critical",subject="pci_0000_c1_00_0"}': "1x75",
    f'passthrough_finding{{instance="hv2",code="expected_mismatch",severity="critical",subject="{VGPU}"}}': "1x75",
    'passthrough_finding{instance="hv1",code="hostdev_missing",severity="warning",subject="domain:old"}': "1x75",
}


def rows(labels: str, *pairs) -> dict[str, float]:
    """{'{instance="hv1",<labels>}': n, ...} from (instance, n) pairs."""
    return {f'{{instance="{i}",{labels}}}': n for i, n in pairs}


FREE = "instance_product:passthrough_available_devices:sum"
PER_DEVICE = lambda *pairs: {f'{{instance="{i}",device="{d}"}}': n for i, d, n in pairs}  # noqa: E731
CAPACITY_PANELS = {
    (33, "A"): {"{}": 1},  # hv1's first A100
    (34, "A"): {"{}": 2},  # hv1's second GPU (since before the exporter started), hv2's A100
    (35, "A"): {"{}": 1},  # hv1's first A100; the fatal error on hv2 is not non-fatal
    (36, "A"): {"{}": 2},  # the missing card on hv1, the changed one on hv2; not hostdev_missing
    (37, "A"): {"{}": 24},
    (37, "B"): {"{}": 80},
    (38, "A"): {"{}": 4},  # hv1's two mdev instances, hv2's two VFs carrying a vendor-specific type
    (39, "A"): {"product:passthrough_available_devices:sum{" + m + "}": n  # no root ports: never eligible
                for m, n in ((A100, 4), (L4, 0), (MOUSE, 1))},
    (40, "A"): {FREE + k: v for k, v in {**rows(A100, ("hv1", 3), ("hv2", 1)), **rows(L4, ("hv1", 0)),
                                          **rows(MOUSE, ("hv2", 1))}.items()},
    (40, "B"): {**rows(A100, ("hv1", 1), ("hv2", 1)), **rows(L4, ("hv1", 0)), **rows(MOUSE, ("hv2", 0))},
    (40, "C"): {**rows(A100, ("hv1", 0), ("hv2", 0)), **rows(L4, ("hv1", 1)), **rows(MOUSE, ("hv2", 0))},
    (40, "D"): {**rows(A100, ("hv1", 0), ("hv2", 0)), **rows(L4, ("hv1", 1)), **rows(MOUSE, ("hv2", 0))},
    (42, "A"): PER_DEVICE(("hv1", GPU, 16), ("hv1", GPU2, 8), ("hv2", GPU, 16)),
    (42, "B"): PER_DEVICE(("hv1", GPU, 16), ("hv1", GPU2, 16), ("hv2", GPU, 16)),
    (42, "C"): PER_DEVICE(("hv1", GPU, 8), ("hv1", GPU2, 16), ("hv2", GPU, 16)),
    (42, "D"): PER_DEVICE(("hv1", GPU, 16), ("hv1", GPU2, 16), ("hv2", GPU, 16)),
    (42, "E"): PER_DEVICE(("hv1", GPU, 1), ("hv1", GPU2, 0), ("hv2", GPU, 0)),  # 8 GT/s at full width is not
    (42, "F"): PER_DEVICE(("hv1", GPU, 5), ("hv1", GPU2, 0), ("hv2", GPU, 0)),
    (42, "G"): PER_DEVICE(("hv1", GPU, 60), ("hv1", GPU2, 0), ("hv2", GPU, 0)),
    (42, "H"): PER_DEVICE(("hv1", GPU, 0), ("hv1", GPU2, 0), ("hv2", GPU, 0)),
    (42, "I"): PER_DEVICE(("hv1", GPU, 2), ("hv1", GPU2, 0), ("hv2", GPU, 0)),
    (42, "J"): PER_DEVICE(("hv1", GPU, 0), ("hv1", GPU2, 0), ("hv2", GPU, 1)),
    (42, "K"): PER_DEVICE(("hv1", GPU, 0), ("hv1", GPU2, 0), ("hv2", GPU, 1)),  # GPU2's error is older
    (42, "L"): {f'{{instance="hv1",device="{GPU}",state="D0"}}': 1, f'{{instance="hv1",device="{GPU2}",state="D3hot"}}': 1,
                f'{{instance="hv1",device="{VF}",state="D0"}}': 1, f'{{instance="hv2",device="{GPU}",state="D0"}}': 1},
    (43, "A"): {f'{{instance="hv1",{A100},numa_node="0"}}': 2, f'{{instance="hv1",{A100},numa_node="1"}}': 1,
                f'{{instance="hv1",{L4},numa_node="0"}}': 0, f'{{instance="hv1",{ROOT_PORT},numa_node="0"}}': 0,
                f'{{instance="hv2",{A100},numa_node="0"}}': 1, f'{{instance="hv2",{MOUSE},numa_node="-1"}}': 1},
    (43, "B"): {f'{{instance="hv1",{A100},numa_node="0"}}': 0, f'{{instance="hv1",{A100},numa_node="1"}}': 1,
                f'{{instance="hv1",{L4},numa_node="0"}}': 0, f'{{instance="hv1",{ROOT_PORT},numa_node="0"}}': 0,
                f'{{instance="hv2",{A100},numa_node="0"}}': 1, f'{{instance="hv2",{MOUSE},numa_node="-1"}}': 0},
    (43, "E"): {f'{{instance="hv1",{A100},numa_node="0"}}': 0, f'{{instance="hv1",{A100},numa_node="1"}}': 0,
                f'{{instance="hv1",{L4},numa_node="0"}}': 0, f'{{instance="hv1",{ROOT_PORT},numa_node="0"}}': 2,
                f'{{instance="hv2",{A100},numa_node="0"}}': 0, f'{{instance="hv2",{MOUSE},numa_node="-1"}}': 0},
    (43, "C"): {f'{{instance="hv1",{A100},numa_node="0"}}': 0, f'{{instance="hv1",{A100},numa_node="1"}}': 0,
                f'{{instance="hv1",{L4},numa_node="0"}}': 1, f'{{instance="hv1",{ROOT_PORT},numa_node="0"}}': 0,
                f'{{instance="hv2",{A100},numa_node="0"}}': 0, f'{{instance="hv2",{MOUSE},numa_node="-1"}}': 0},
    (43, "D"): {f'{{instance="hv1",{A100},numa_node="0"}}': 0, f'{{instance="hv1",{A100},numa_node="1"}}': 0,
                f'{{instance="hv1",{L4},numa_node="0"}}': 1, f'{{instance="hv1",{ROOT_PORT},numa_node="0"}}': 0,
                f'{{instance="hv2",{A100},numa_node="0"}}': 0, f'{{instance="hv2",{MOUSE},numa_node="-1"}}': 0},
    (44, "A"): PER_DEVICE(("hv1", PF, 8), ("hv2", PF, 16)),
    (44, "B"): PER_DEVICE(("hv1", PF, 64), ("hv2", PF, 16)),
    (44, "C"): PER_DEVICE(("hv1", PF, 56), ("hv2", PF, 0)),
    (44, "D"): {  # the PF's ids and NUMA node; not the A100, which has no VFs
        f'{{instance="hv1",device="{PF}",vendor_id="0x8086",product_id="0x1572",numa_node="0"}}': 1,
        f'{{instance="hv2",device="{PF}",vendor_id="0x8086",product_id="0x1572",numa_node="1"}}': 1},
    (45, "A"): {f'{{instance="hv1",device="{VGPU}",mdev_type="nvidia-558",name="GRID A100-4C"}}': 18,
                f'{{instance="hv1",device="{VGPU}",mdev_type="nvidia-559",name="GRID A100-8C"}}': 0,
                f'{{instance="hv2",device="{H200}",mdev_type="1414",{N118}}}': 2,  # VFs without a type
                f'{{instance="hv2",device="{H200}",mdev_type="1415",{N235}}}': 1},
    (45, "B"): {f'{{instance="hv1",device="{VGPU}",mdev_type="nvidia-558"}}': 2,
                f'{{instance="hv1",device="{VGPU}",mdev_type="nvidia-559"}}': 0,
                f'{{instance="hv2",device="{H200}",mdev_type="1414"}}': 2,  # VFs carrying it
                f'{{instance="hv2",device="{H200}",mdev_type="1415"}}': 0},
}


@needs_promtool
def test_capacity_and_health_panels_show_the_expected_rows(tmp_path):
    check_panels(tmp_path, CAPACITY_HOSTS, CAPACITY_PANELS, "70m")


def test_every_capacity_and_health_query_has_hand_worked_rows():
    row, queries = None, set()
    for p in sorted(dashboard()["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if p["type"] == "row":
            row = p["title"]
        elif "apacity and health" in row:
            queries |= {(p["id"], t["refId"]) for t in p["targets"]}
    assert queries == set(CAPACITY_PANELS)


def test_the_docs_list_every_panel_alert_and_recording_rule():
    page = (GRAFANA.parent / "docs" / "metrics.md").read_text()
    section = page[page.index("## Grafana dashboard and alerts"):]
    end = section.find("\n## ", 1)
    section = section if end < 0 else section[:end]  # to the next section, or the page's end
    for p in dashboard()["panels"]:
        if p["type"] != "row":
            assert f"| {p['title']} |" in section or f"| {p['title']} (table) |" in section, p["title"]
    rules = yaml.safe_load((GRAFANA / "alerts.yml").read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            assert f"| `{r.get('alert') or r.get('record')}` |" in section, r
