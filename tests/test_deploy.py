"""deploy/: the unit verifies, the manifests parse and agree on port, paths and read-only /sys.
Checks needing a tool not installed here skip. The Dockerfile is tests/test_container.py's."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.process import EXE

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "passthrough-exporter.service"
K8S = DEPLOY / "kubernetes"
PORT = 9839


# --- systemd ---------------------------------------------------------------------------------

def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_is_hardened():
    s = unit_settings()
    for key, value in {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "ReadOnlyPaths": "/sys",
        "MemoryDenyWriteExecute": "yes", "RestrictNamespaces": "yes",
    }.items():
        assert s.get(key) == [value], key
    assert "@system-service" in s["SystemCallFilter"]
    assert "ProcSubset" not in s  # it would hide /proc/cmdline
    (exec_start,) = s["ExecStart"]
    assert " serve " in exec_start and f"--web.listen-address :{PORT}" in exec_start
    assert "SupplementaryGroups" not in s  # libvirt access is opt-in, documented in the comments
    text = UNIT.read_text()
    assert "#SupplementaryGroups=libvirt" in text and "unix_sock_ro_perms" in text
    assert "org.libvirt.unix.monitor" in text


def test_unit_reloads_with_sighup_and_has_a_memory_limit_above_the_measured_peak():
    s = unit_settings()
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    (limit,) = s["MemoryMax"]
    number, unit = re.fullmatch(r"(\d+)([KMG])", limit).groups()
    limit_mb = int(number) * {"K": 1 / 1024, "M": 1, "G": 1024}[unit]
    # The 20,000-device peaks docs/performance.md's table gives: server / worker / `devices --json`.
    row = next(line for line in (ROOT / "docs" / "performance.md").read_text().splitlines()
               if line.startswith("| peak RSS"))
    server, worker, _ = map(int, re.search(r"\| (\d+) / (\d+) / (\d+) MB", row).groups())
    # A reload starts a second worker before the first ends: room for both, and some.
    assert limit_mb >= 1.2 * (server + 2 * worker), (limit, row)


def _verified_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's installed console script (verify wants it to exist)."""
    exe = unit_settings()["ExecStart"][0].split()[0]
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(exe, EXE))
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    out = subprocess.run(["systemd-analyze", "verify", str(_verified_copy(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown or unparsable keys; it only warns, so warnings fail the test too.
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_security_exposure_is_low(tmp_path):
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(_verified_copy(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    if "--offline" in out.stderr and "unrecognized" in out.stderr:
        pytest.skip("systemd-analyze too old for --offline")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.0


def ptrace_drop_in() -> str:
    """The drop-in docs/deployment.md gives for naming VMs (its one ini block)."""
    (block,) = re.findall(r"^```ini\n(.*?)^```$", (ROOT / "docs" / "deployment.md").read_text(), re.M | re.S)
    return block


def test_unit_names_no_vm_and_the_docs_say_so():
    """ProtectProc=invisible without CAP_SYS_PTRACE: the holder scan cannot read QEMU's fd links."""
    s = unit_settings()
    assert s["ProtectProc"] == ["invisible"]
    assert "CAP_SYS_PTRACE" not in " ".join(s["CapabilityBoundingSet"] + s["AmbientCapabilities"])
    page = " ".join((ROOT / "docs" / "deployment.md").read_text().split())
    assert "**Under this unit no VM is named**: `held_by` is null" in page
    unit_comments = [line.removeprefix("#").strip() for line in UNIT.read_text().splitlines() if line.startswith("#")]
    for line in ptrace_drop_in().splitlines():  # the unit's comment gives the same drop-in
        assert line in unit_comments


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_with_the_ptrace_drop_in_passes_systemd_analyze_verify(tmp_path):
    copy = _verified_copy(tmp_path)
    copy.write_text(copy.read_text() + "\n" + ptrace_drop_in())
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


# --- Kubernetes ------------------------------------------------------------------------------

def k8s(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_daemonset():
    ds = k8s("daemonset.yaml")
    assert (ds["apiVersion"], ds["kind"]) == ("apps/v1", "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["args"][0] == "serve"
    assert f"--web.listen-address=:{PORT}" in c["args"] and "--path.sysfs=/host/sys" in c["args"]
    assert c["ports"] == [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc.get("privileged") is False
    assert {"cpu", "memory"} <= set(c["resources"]["limits"]) and {"cpu", "memory"} <= set(c["resources"]["requests"])
    # Above the peak measured at 20,000 devices under load (286 MiB, docs/reliability.md) plus 1,024
    # connections' send buffers (128 MiB).
    assert mebibytes(c["resources"]["limits"]["memory"]) >= 286 + 128
    # /sys comes from the host, read-only, where --path.sysfs looks.
    volumes = {v["name"]: v for v in pod["volumes"]}
    (sys_mount,) = [m for m in c["volumeMounts"] if volumes[m["name"]].get("hostPath", {}).get("path") == "/sys"]
    assert sys_mount["mountPath"] == "/host/sys" and sys_mount["readOnly"] is True
    # /proc too (PID 1's mount table names the root disk), where --path.procfs looks.
    (proc_mount,) = [m for m in c["volumeMounts"] if volumes[m["name"]].get("hostPath", {}).get("path") == "/proc"]
    assert proc_mount["mountPath"] == "/host/proc" and proc_mount["readOnly"] is True
    assert "--path.procfs=/host/proc" in c["args"]
    # Every other host path would be a leak: only /sys and /proc are mounted from the node.
    assert [v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v] == ["/sys", "/proc"]
    assert all(m.get("readOnly") for m in c["volumeMounts"] if "hostPath" in volumes[m["name"]])


def test_service_and_servicemonitor_reach_the_metrics_port():
    ds, svc, sm = k8s("daemonset.yaml"), k8s("service.yaml"), k8s("servicemonitor.yaml")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["kind"] == "Service" and svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": PORT, "targetPort": "metrics", "protocol": "TCP"}]
    assert (sm["apiVersion"], sm["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    assert {ds["metadata"]["namespace"], svc["metadata"]["namespace"], sm["metadata"]["namespace"]} == {"monitoring"}


def test_kustomization_lists_every_manifest():
    kust = k8s("kustomization.yaml")
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_offline():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
    assert kinds == ["DaemonSet", "Service", "ServiceMonitor"]


# --- plain Prometheus ------------------------------------------------------------------------

SCRAPE = DEPLOY / "prometheus" / "scrape-config.yml"


def test_scrape_config():
    (job,) = yaml.safe_load(SCRAPE.read_text())["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(f":{PORT}") for t in targets)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_scrape_config_passes_promtool():
    out = subprocess.run(["promtool", "check", "config", str(SCRAPE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
