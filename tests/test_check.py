"""`passthrough-exporter check` through the installed console script: text, JSON, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.support import hosts
from tests.support.process import EXE


def check(tree, *args):
    return subprocess.run(
        [EXE, "check", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc), *args],
        capture_output=True, text=True, timeout=60,
    )


def status_lines(text):
    return dict(re.findall(r"^(\S.*?)\s+: (PASS|WARN|UNKNOWN|FAIL)$", text, re.M))


def test_clean_host_passes_with_exit_0(tree):
    hosts.clean_host(tree)
    out = check(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = status_lines(out.stdout)
    assert list(lines) == [  # safety's, then pci's, health's, assignments': in pluggy's call order
        "IOMMU enabled in firmware and kernel", "No ACS override on the kernel command line",
        "VFIO requires interrupt remapping", "VFIO no-IOMMU mode off", "VFIO devices have cdev nodes (iommufd)",
        "No IOMMU group split between VMs and host",
        "Eligible devices have a function-level reset", "Eligible devices alone in their IOMMU group",
        "No group needs a firmware 1:1 mapping (RMRR)", "Root filesystem devices kept on the host", "Boot VGA device", "PCI devices answer on the bus",
        "PCIe links at full width, no fatal PCIe errors", "Devices unchanged since the previous boot",
        "Each device and IOMMU group with one VM", "Domains' host devices present",
    ]
    assert set(lines.values()) == {"PASS"}
    assert "fix:" not in out.stdout
    assert "info root_device [pci_0000_3d_00_0]" in out.stdout
    assert re.search(r"^note: IOMMU group layout: 4 groups, hash [0-9a-f]{12}$", out.stdout, re.M)


def test_iommu_off_and_root_disk_warn_with_exit_1(tree):
    hosts.virtio_root(tree)
    out = check(tree)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = status_lines(out.stdout)
    assert lines["IOMMU enabled in firmware and kernel"] == "WARN"
    assert lines["Eligible devices have a function-level reset"] == "WARN"  # virtio NIC: no reset at all
    assert lines["Root filesystem devices kept on the host"] == "PASS"
    assert "warning iommu_off_firmware [host]" in out.stdout
    assert "fix: enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup" in out.stdout
    assert "info root_device [pci_0000_00_02_0]" in out.stdout
    assert "note: root filesystem (vda) is on pci_0000_00_02_0: not eligible" in out.stdout


def test_kernel_off_hint_names_the_command_line(tree):
    hosts.virtio_root(tree)
    tree.iommu_unit("ivhd0")
    out = check(tree)
    assert "warning iommu_off_kernel [host]" in out.stdout
    assert "fix: add intel_iommu=on (Intel) or amd_iommu=on (AMD) to the kernel command line" in out.stdout


def test_weakened_isolation_and_mixed_group_fail_with_exit_2(tree):
    hosts.clean_host(tree)
    tree.cmdline("root=/dev/sda1 pcie_acs_override=downstream")
    tree.pci("0000:02:00.0", 0x10DE, 0x2484, 0x030000, driver="vfio-pci", group=9)
    tree.pci("0000:02:00.1", 0x10DE, 0x228B, 0x040300, driver="snd_hda_intel", group=9)
    out = check(tree)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = status_lines(out.stdout)
    assert lines["No ACS override on the kernel command line"] == "FAIL"
    assert lines["No IOMMU group split between VMs and host"] == "FAIL"
    assert lines["VFIO requires interrupt remapping"] == "PASS"
    assert "fix: remove pcie_acs_override= from the kernel command line" in out.stdout
    assert "critical group_mixed [group:9]" in out.stdout
    assert "fix: bind the whole group to vfio-pci" in out.stdout


def test_json_report(tree):
    hosts.virtio_root(tree)
    out = check(tree, "--json")
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["status"] == "WARN"
    assert doc["root_devices"] == ["pci_0000_00_02_0"] and doc["root_disks"] == ["vda"]
    assert re.fullmatch(r"[0-9a-f]{12}", doc["group_layout_hash"])
    by_title = {c["check"]: c for c in doc["checks"]}
    iommu = by_title["IOMMU enabled in firmware and kernel"]
    assert iommu["status"] == "WARN"
    [f] = iommu["findings"]
    assert (f["code"], f["severity"], f["subject"]) == ("iommu_off_firmware", "warning", "host")
    assert "amd_iommu=on" in f["fix"]


def test_bad_source_is_a_clear_error(tmp_path):
    out = subprocess.run([EXE, "check", "--path.sysfs", str(tmp_path / "nope")], capture_output=True, text=True)
    assert out.returncode == 3 and "is not a sysfs: it does not exist" in out.stderr and "Traceback" not in out.stderr


# --- this machine ----------------------------------------------------------------------------

PCI_ADDR = re.compile(r"^[0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def _root_pci_function() -> str | None:
    """Derived here independently of the source: the PCI function under `/`, when simply traceable."""
    mounts = None
    for path in ("/proc/1/mountinfo", "/proc/self/mountinfo"):  # the source's order: PID 1's view first
        try:
            with open(path) as f:
                mounts = [line.split() for line in f]
            break
        except OSError:
            continue
    if mounts is None:
        return None
    roots = [m[2] for m in mounts if len(m) > 4 and m[4] == "/"]
    if not roots or roots[-1].startswith("0:"):
        return None
    block = os.path.realpath(f"/sys/dev/block/{roots[-1]}")
    slaves = os.path.join(block, "slaves")
    if not os.path.isdir(block) or (os.path.isdir(slaves) and os.listdir(slaves)):
        return None  # stacked devices: the fixture tests cover those
    for part in reversed(block.split("/")):
        if PCI_ADDR.match(part):
            return "pci_" + re.sub(r"[^A-Za-z0-9]", "_", part)
    return None


def test_check_on_this_machine():
    pci = "/sys/bus/pci/devices"
    if not os.path.isdir(pci) or not os.listdir(pci):
        pytest.skip("no PCI devices in /sys")
    out = subprocess.run([EXE, "check", "--json"], capture_output=True, text=True, timeout=120)
    doc = json.loads(out.stdout)
    severities = {f["severity"] for c in doc["checks"] for f in c["findings"]}
    assert out.returncode == (2 if "critical" in severities else 1 if "warning" in severities else 0), out.stderr
    codes = {(f["code"], f["subject"]) for c in doc["checks"] for f in c["findings"]}
    groups = "/sys/kernel/iommu_groups"
    if not (os.path.isdir(groups) and os.listdir(groups)):
        units = os.listdir("/sys/class/iommu") if os.path.isdir("/sys/class/iommu") else []
        tables = os.listdir("/sys/firmware/acpi/tables") if os.path.isdir("/sys/firmware/acpi/tables") else []
        expected = "iommu_off_kernel" if units or {"DMAR", "IVRS"} & set(tables) else "iommu_off_firmware"
        assert (expected, "host") in codes
        assert out.returncode >= 1
    # Interrupt remapping, read here from the interrupt chips: the line never passes without it.
    with open("/proc/interrupts") as f:
        chips = set(f.read().split())
    unsafe = "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
    allowed = os.path.exists(unsafe) and open(unsafe).read().strip() in ("Y", "1")
    if not any(c.startswith("IR-") for c in chips) and any(c.startswith(("IO-APIC", "PCI-MSI")) for c in chips):
        status = next(c["status"] for c in doc["checks"] if c["check"] == "VFIO requires interrupt remapping")
        assert (("unsafe_interrupts", "host") if allowed else ("no_interrupt_remapping", "host")) in codes
        assert status != "PASS"
    root = _root_pci_function()
    if root is not None:
        assert ("root_device", root) in codes
        assert root in doc["root_devices"]
        listed = subprocess.run([EXE, "devices", "--passthrough"], capture_output=True, text=True, timeout=120)
        assert root not in listed.stdout.split()
        text = subprocess.run([EXE, "check"], capture_output=True, text=True, timeout=120).stdout
        assert f"is on {root}: not eligible" in text


def test_findings_of_other_plugins_get_their_own_check_and_see_verdicts(tree):
    import pluggy

    from passthrough_exporter.rendering import check as chk
    from passthrough_exporter import hookimpl
    from passthrough_exporter.judging.inspector import Inspector, make_plugin_manager
    from passthrough_exporter.model import Finding
    from passthrough_exporter.reading.sources.sysfs import SysfsSource

    class Policy:
        @hookimpl
        def passthrough_findings(self, verdicts):
            eligible = sorted(n for n, v in verdicts.items() if v.eligible)
            yield Finding("policy_gpu_unassigned", "warning", eligible[0], f"{len(eligible)} eligible")

    hosts.clean_host(tree)
    pm: pluggy.PluginManager = make_plugin_manager()
    pm.register(Policy(), name="site_rules")
    inspector = Inspector(plugin_manager=pm)
    snap = inspector.judge(SysfsSource(str(tree.sys), str(tree.proc)).read())
    results = chk.run_checks(snap, inspector.checks())
    assert [r.title for r in results][-1] == chk.OTHER
    assert results[-1].status == "WARN" and chk.exit_code(results) == 1
    text = chk.render_text(snap, results)
    assert "warning policy_gpu_unassigned [pci_0000_00_19_0]: 1 eligible" in text
    assert "fix:" not in text  # no hint known for a foreign code


def test_a_plugin_that_failed_makes_the_report_unknown_not_pass(tree):
    """The safety plugin's findings hook failing on a host with the ACS override: its line would read
    PASS, as if nothing were wrong; the report says a rule is missing and exits 3 (UNKNOWN)."""
    from passthrough_exporter import hookimpl
    from passthrough_exporter.judging.inspector import Inspector
    from passthrough_exporter.plugins import safety
    from passthrough_exporter.reading.sources.sysfs import SysfsSource
    from passthrough_exporter.rendering import check as chk

    hosts.clean_host(tree)
    tree.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 intel_iommu=on pcie_acs_override=downstream")
    inventory = SysfsSource(str(tree.sys), str(tree.proc)).read()
    inspector = Inspector()
    found = chk.run_checks(inspector.judge(inventory), inspector.checks())
    assert dict((r.title, r.status) for r in found)["No ACS override on the kernel command line"] == "FAIL"

    def broken(inventory):
        raise RuntimeError("rule pack bug")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safety, "passthrough_findings", hookimpl(broken))
        inspector = Inspector()
        snap = inspector.judge(inventory)
    results = chk.run_checks(snap, inspector.checks())
    status = {r.title: r.status for r in results}
    assert status["No ACS override on the kernel command line"] == "PASS"  # nothing found: the rule did not run
    assert list(status)[-1] == chk.PLUGINS_RAN and status[chk.PLUGINS_RAN] == "UNKNOWN"
    assert chk.exit_code(results) == 3
    text = chk.render_text(snap, results)
    assert ("Every rule plugin ran" in text and "1 plugin failure(s) while judging (see the log): what a failed "
            "rule would have found is not in this report" in text)
    assert chk.render_json(snap, results)["status"] == "UNKNOWN"
    # A failure found outranks what could not be told: FAIL, exit 2.
    failing = [*results, chk.CheckResult("x", "FAIL", ())]
    assert chk.exit_code(failing) == 2


def test_a_firmware_1to1_mapping_warns_its_line(tree):
    """`hosts.rmrr_server`: the NIC's group 9 has a `direct` region (an RMRR), the iGPU's and the
    xHCI's only `direct-relaxable` ones: the RMRR line warns, naming group 9 alone, with its fix."""
    hosts.rmrr_server(tree)
    out = check(tree)
    assert status_lines(out.stdout)["No group needs a firmware 1:1 mapping (RMRR)"] == "WARN"
    assert re.findall(r"^    warning group_rmrr \[(\S+)\]", out.stdout, re.M) == ["group:9"]
    assert "fix: the kernel will refuse VFIO for its devices: move the card to another slot" in out.stdout
