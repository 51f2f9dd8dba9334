"""Expected inventory: `[[expect]]` tables of the policy file, the findings they give, bad tables
refused with their line, and the check line through the real command."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.model import Device, Inventory
from passthrough_exporter.plugins.policy.rules import PolicyError, load, parse
from tests.support import hosts
from tests.support.process import EXE

GPU = Device(name="pci_0000_3b_00_0", type="pci", address="0000:3b:00.0", vendor_id="0x10de",
             product_id="0x2204", subsystem_vendor_id="0x1458", subsystem_product_id="0x403b",
             pci_class="0x030000", driver="vfio-pci", iommu_group=42)
PF = Device(name="pci_0000_81_00_0", type="pci", address="0000:81:00.0", vendor_id="0x8086",
            product_id="0x1572", subsystem_vendor_id="0x8086", subsystem_product_id="0x0001",
            pci_class="0x020000", driver="i40e", iommu_group=30, sriov_totalvfs=64, sriov_numvfs=0)
VF = Device(name="pci_0000_81_02_0", type="pci", address="0000:81:02.0", vendor_id="0x8086",
            product_id="0x154c", pci_class="0x020000", driver=None, iommu_group=31, physfn=PF.name)
INVENTORY = Inventory([GPU, PF, VF])

# GPU exactly as it is: every field an [[expect]] can name.
GPU_AS_IS = '''
[[expect]]
address = "0000:3b:00.0"
vendor_id = "0x10de"
product_id = "0x2204"
subsystem_vendor_id = "0x1458"
subsystem_product_id = "0x403b"
driver = "vfio-pci"
iommu_group = 42
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(textwrap.dedent(text))
    return path


def found(tmp_path: Path, text: str, inventory: Inventory = INVENTORY) -> list:
    """The expected_* findings of `inventory` under a policy file holding `text`."""
    snap = Inspector({"policy": str(write(tmp_path, text))}).judge(inventory)
    return [f for f in snap.findings if f.code.startswith("expected_")]


def test_a_device_as_expected_gives_no_finding(tmp_path):
    assert found(tmp_path, GPU_AS_IS) == []


def test_wrong_driver_is_a_mismatch_naming_the_driver(tmp_path):
    path = write(tmp_path, GPU_AS_IS)
    [f] = found(tmp_path, GPU_AS_IS, Inventory([replace(GPU, driver="nvidia")]))
    assert (f.code, f.severity, f.subject) == ("expected_mismatch", "critical", "pci_0000_3b_00_0")
    # the table starts on line 2 (the text opens with a blank line)
    assert f.message == (f"pci_0000_3b_00_0 (0000:3b:00.0) differs from {path}:2: "
                         "driver: expected vfio-pci, found nvidia")
    assert f.fix == ("bind it to vfio-pci (driverctl set-override 0000:3b:00.0 vfio-pci); or, if the change is "
                     f"intended, update its [[expect]] table in {path}")


def test_missing_device(tmp_path):
    path = write(tmp_path, GPU_AS_IS)
    [f] = found(tmp_path, GPU_AS_IS, Inventory([PF, VF]))
    assert (f.code, f.severity, f.subject) == ("expected_missing", "critical", "pci_0000_3b_00_0")
    assert f.message == f"PCI device 0000:3b:00.0 is expected by {path}:2 but is not on this host"
    assert f.fix.startswith("check that the card at 0000:3b:00.0 is seated, powered and enabled in the firmware setup")
    assert f.fix.endswith(f"update its [[expect]] table in {path}")


def test_several_fields_differ_at_once(tmp_path):
    text = '''
    [[expect]]
    address = "0000:81:00.0"
    vendor_id = "0x8086"
    product_id = "0x1583"
    subsystem_product_id = "0x0002"
    driver = "vfio-pci"
    iommu_group = 29
    sriov_numvfs = 8
    '''
    path = write(tmp_path, text)
    [f] = found(tmp_path, text)
    # vendor_id matches and is not named; the others in the documented order
    assert f.message == (f"pci_0000_81_00_0 (0000:81:00.0) differs from {path}:2: "
                         "product_id: expected 0x1583, found 0x1572; "
                         "subsystem_product_id: expected 0x0002, found 0x0001; "
                         "driver: expected vfio-pci, found i40e; "
                         "iommu_group: expected 29, found 30; "
                         "sriov_numvfs: expected 8, found 0")
    numvfs = "/sys/bus/pci/devices/0000:81:00.0/sriov_numvfs"
    assert f.fix == ("check which card answers at 0000:81:00.0 (lspci -nn -s 0000:81:00.0): other hardware or "
                     "firmware is there; bind it to vfio-pci (driverctl set-override 0000:81:00.0 vfio-pci); "
                     "see which devices share its new IOMMU group before passing it (a firmware update or slot "
                     f"change regrouped it); set its VF count (echo 8 > {numvfs}); or, if the change is "
                     f"intended, update its [[expect]] table in {path}")


def test_changing_a_vf_count_goes_through_zero(tmp_path):
    pf = replace(PF, sriov_numvfs=4)
    [f] = found(tmp_path, '[[expect]]\naddress = "0000:81:00.0"\nsriov_numvfs = 8\n', Inventory([pf]))
    assert "sriov_numvfs: expected 8, found 4" in f.message
    numvfs = "/sys/bus/pci/devices/0000:81:00.0/sriov_numvfs"
    assert f"set its VF count (echo 0 > {numvfs}, then echo 8 > {numvfs})" in f.fix


@pytest.mark.parametrize("vendor, product", [
    ("0x10de", "0x2204"), ("10de", "2204"), ("0X10DE", "0x2204"), ("10DE", "0X2204"), ("0x10De", "2204"),
])
def test_ids_compare_in_any_case_with_or_without_0x(tmp_path, vendor, product):
    text = f'[[expect]]\naddress = "0000:3b:00.0"\nvendor_id = "{vendor}"\nproduct_id = "{product}"\n'
    assert found(tmp_path, text) == []
    assert parse(text).expectations[0].fields == (("vendor_id", "0x10de"), ("product_id", "0x2204"))


def test_an_address_alone_expects_presence_and_is_case_insensitive(tmp_path):
    assert found(tmp_path, '[[expect]]\naddress = "0000:3B:00.0"\n') == []
    [f] = found(tmp_path, '[[expect]]\naddress = "0000:3B:00.0"\n', Inventory([PF]))
    assert f.code == "expected_missing" and f.subject == "pci_0000_3b_00_0"


def test_empty_driver_expects_no_driver(tmp_path):
    assert found(tmp_path, '[[expect]]\naddress = "0000:81:02.0"\ndriver = ""\n') == []
    [f] = found(tmp_path, '[[expect]]\naddress = "0000:81:00.0"\ndriver = ""\n')
    assert f.message.endswith("driver: expected none, found i40e")
    assert "unbind it from i40e (echo 0000:81:00.0 > /sys/bus/pci/devices/0000:81:00.0/driver/unbind)" in f.fix


def test_nothing_found_is_named_as_such(tmp_path):
    # No IOMMU group, no SR-IOV, no driver, and ids the source did not read: a mismatch each,
    # never a silent pass.
    bare = Device(name="pci_0000_3b_00_0", type="pci", address="0000:3b:00.0", vendor_id="0x10de",
                  product_id="0x2204")
    text = GPU_AS_IS + "sriov_numvfs = 0\n"
    [f] = found(tmp_path, text, Inventory([bare]))
    assert f.message.endswith("subsystem_vendor_id: expected 0x1458, found unknown (not read by this source); "
                              "subsystem_product_id: expected 0x403b, found unknown (not read by this source); "
                              "driver: expected vfio-pci, found none; iommu_group: expected 42, found none; "
                              "sriov_numvfs: expected 0, found none")
    assert "turn the IOMMU back on" in f.fix and "enable SR-IOV for it in the firmware setup" in f.fix


def test_a_file_of_expectations_only(tmp_path):
    text = GPU_AS_IS + '\n[[expect]]\naddress = "0000:81:00.0"\n'
    policy = parse(text)
    assert policy.rules == () and [e.address for e in policy.expectations] == ["0000:3b:00.0", "0000:81:00.0"]
    assert [e.line for e in policy.expectations] == [2, 11]
    inspector = Inspector({"policy": str(write(tmp_path, text))})
    snap = inspector.judge(INVENTORY)
    assert not any(r.startswith("site policy") for v in snap.verdicts.values() for r in v.reasons)
    assert inspector.report_header() == [f"policy {tmp_path / 'site.toml'}: 0 rules, unmatched = abstain, "
                                         "2 expected devices"]


def test_rules_and_expectations_together(tmp_path):
    text = ('[[rule]]\naction = "deny"\nreason = "kept"\naddress = "0000:81:*"\n\n'
            '[[expect]]\naddress = "0000:81:00.0"\ndriver = "ixgbe"\n')
    inspector = Inspector({"policy": str(write(tmp_path, text))})
    snap = inspector.judge(INVENTORY)
    assert snap.verdicts[PF.name].reasons == ("site policy: kept",)
    assert [(f.code, f.subject) for f in snap.findings if f.code.startswith("expected_")] == [
        ("expected_mismatch", PF.name)]
    assert "differs from" in snap.findings[0].message and "site.toml:6:" in snap.findings[0].message
    assert inspector.report_header()[0].endswith(": 1 rules, unmatched = abstain, 1 expected devices")


def test_check_line_only_with_expectations(tmp_path):
    titles = lambda inspector: [c.title for c in inspector.checks()]  # noqa: E731
    line = "Expected devices present and unchanged"
    assert line not in titles(Inspector())
    rules_only = write(tmp_path, '[[rule]]\naction = "deny"\nreason = "r"\nname = "x"\n')
    assert line not in titles(Inspector({"policy": str(rules_only)}))
    with_expect = write(tmp_path, '[[expect]]\naddress = "0000:3b:00.0"\n')
    [check] = [c for c in Inspector({"policy": str(with_expect)}).checks() if c.title == line]
    assert check.codes == ("expected_missing", "expected_mismatch")


E = '[[expect]]\naddress = "0000:3b:00.0"\n'
BAD = [
    (E + "vendor = \"0x10de\"\n", 3, "expect 1: unknown key 'vendor'; keys are address, vendor_id"),
    ('[[expect]]\nvendor_id = "0x10de"\n', 1, 'expect 1: no address; every [[expect]] names a PCI address'),
    ('[[expect]]\naddress = "3b:00.0"\n', 2, "expect 1: address: '3b:00.0' is not a PCI address"),
    ('[[expect]]\naddress = "1-1.2"\n', 2, "USB and SCSI addresses cannot be expected"),
    ('[[expect]]\naddress = "0:0:0:0"\n', 2, "'0:0:0:0' is not a PCI address"),
    ('[[expect]]\naddress = "0000:3b:20.0"\n', 2, "'0000:3b:20.0' is not a PCI address"),  # device > 0x1f
    ('[[expect]]\naddress = "0000:3b:00.8"\n', 2, "'0000:3b:00.8' is not a PCI address"),  # function > 7
    ('[[expect]]\naddress = 3\n', 2, "3 is not a PCI address"),
    (E + 'vendor_id = "nvidia"\n', 3, "expect 1: vendor_id: 'nvidia' is not a 4-digit hex id"),
    (E + 'product_id = "0x12345"\n', 3, "product_id: '0x12345' is not a 4-digit hex id"),
    (E + "vendor_id = 0x10de\n", 3, 'vendor_id: 4318 is not a hex id string like "0x10de" (write it in quotes)'),
    (E + 'subsystem_vendor_id = ["0x1458"]\n', 3, "subsystem_vendor_id: ['0x1458'] is not a hex id string"),
    (E + 'iommu_group = "42"\n', 3, "iommu_group: '42' is not a number"),
    (E + "iommu_group = true\n", 3, "iommu_group: True is not a number"),
    (E + "sriov_numvfs = -1\n", 3, "sriov_numvfs: -1 is not a number (0 or more)"),
    (E + "driver = 1\n", 3, "driver: 1 is not a driver name"),
    (E + 'driver = "vfio pci"\n', 3, "driver: 'vfio pci' is not a driver name"),
    (E + '\n[[expect]]\naddress = "0000:81:00.0"\n\n[[expect]]\niommu_group = 3\naddress = "0000:3B:00.0"\n', 9,
     "expect 3: address 0000:3b:00.0 is already expected by expect 1 (line 1)"),
    ('[[rule]]\naction = "deny"\nreason = "r"\nname = "*"\n\n[[expect]]\naddress = "0000:3b:00.0"\n'
     'sriov_numvfs = "8"\n', 8, "expect 1: sriov_numvfs: '8' is not a number"),  # rules before: counted apart
    ('expect = "0000:3b:00.0"\n', 1, "expected devices are written as [[expect]] tables"),
    ('[expects]\naddress = "0000:3b:00.0"\n', 1, "unknown top-level key 'expects'; expected 'unmatched', [[rule]] or"),
]


@pytest.mark.parametrize("text, line, message", BAD)
def test_bad_expectation_is_refused_with_line_and_reason(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as exc:
        load(path)
    assert str(exc.value).startswith(f"{path}:{line}: ")
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_docs_examples_parse():
    doc = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    policies = [parse(textwrap.dedent(b)) for b in blocks]
    expectations = [e for p in policies for e in p.expectations]
    assert expectations and all(e.address for e in expectations)


# --- through the real command --------------------------------------------------------------


def check(tree, policy: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EXE, "check", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc), "--policy", str(policy), *args],
        capture_output=True, text=True, timeout=60,
    )


def test_check_command_reports_expectations(tree, tmp_path):
    hosts.clean_host(tree)  # 00:19.0: 8086:15bc on vfio-pci in group 7; nothing else to report
    hosts.sriov_nic(tree)  # 81:00.0: 8086:1572 on i40e, 2 VFs
    # The VF 81:02.1 on vfio-pci gets its VFIO cdev, as 00:19.0 has on this (6.6+) host: no vfio_no_cdev.
    tree.write(tree.pci_path("0000:81:02.1") / "vfio-dev" / "vfio1" / "dev", "237:1")
    good = write(tmp_path, '''
        [[expect]]
        address = "0000:00:19.0"
        vendor_id = "8086"
        product_id = "0x15BC"
        driver = "vfio-pci"
        iommu_group = 7
    ''')
    out = check(tree, good)
    assert out.returncode == 0, out.stdout + out.stderr  # the rest of this host only has info findings
    assert re.search(r"^Expected devices present and unchanged\s+: PASS$", out.stdout, re.M)

    bad = write(tmp_path, '''
        [[expect]]
        address = "0000:00:19.0"
        driver = "igb"

        [[expect]]
        address = "0000:81:00.0"
        sriov_numvfs = 2

        [[expect]]
        address = "0000:3b:00.0"
    ''')
    out = check(tree, bad)
    assert out.returncode == 2, out.stdout + out.stderr
    assert re.search(r"^Expected devices present and unchanged\s+: FAIL$", out.stdout, re.M)
    assert (f"    critical expected_mismatch [pci_0000_00_19_0]: pci_0000_00_19_0 (0000:00:19.0) differs from "
            f"{bad}:2: driver: expected igb, found vfio-pci\n") in out.stdout
    assert (f"    critical expected_missing [pci_0000_3b_00_0]: PCI device 0000:3b:00.0 is expected by {bad}:10 "
            "but is not on this host\n") in out.stdout
    assert "[pci_0000_81_00_0]" not in out.stdout  # its 2 VFs are there, as expected
    assert (f"    fix: bind it to igb (driverctl set-override 0000:00:19.0 igb); or, if the change is intended, "
            f"update its [[expect]] table in {bad}\n") in out.stdout
    assert "    fix: check that the card at 0000:3b:00.0 is seated, powered and enabled" in out.stdout

    report = json.loads(check(tree, bad, "--json").stdout)
    [line] = [c for c in report["checks"] if c["check"] == "Expected devices present and unchanged"]
    assert line["status"] == "FAIL"
    assert [(f["code"], f["subject"]) for f in line["findings"]] == [
        ("expected_mismatch", "pci_0000_00_19_0"), ("expected_missing", "pci_0000_3b_00_0")]
    assert all(f["fix"] for f in line["findings"])


def test_bad_expectation_stops_the_command(tree, tmp_path):
    hosts.clean_host(tree)
    bad = write(tmp_path, '[[expect]]\naddress = "0000:00:19.0"\nvendor_id = "intel"\n')
    out = check(tree, bad)
    assert out.returncode == 3 and out.stdout == ""  # could not check
    assert out.stderr == (f"passthrough-exporter: {bad}:3: expect 1: vendor_id: 'intel' is not a 4-digit hex id "
                          'like "0x10de"\n')
