"""The alerting and recording rules load in Prometheus and pass their unit tests (promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")


def test_rules_are_valid():
    out = subprocess.run([PROMTOOL, "check", "rules", str(GRAFANA / "alerts.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test_and_they_pass():
    import yaml

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
