"""The site policy: each selector, deny beats allow, the allow-list mode, and bad files refused with a line."""

from __future__ import annotations

import os
import tempfile
import textwrap

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.model import Device, Inventory
from passthrough_exporter.plugins.policy.rules import PolicyError, load, parse

GPU = Device(name="pci_0000_0a_00_0", type="pci", address="0000:0a:00.0", vendor_id="0x10de",
             product_id="0x2484", pci_class="0x030000", driver="vfio-pci", numa_node=1, iommu_group=7)
AUDIO = Device(name="pci_0000_0a_00_1", type="pci", address="0000:0a:00.1", vendor_id="0x10de",
               product_id="0x228b", pci_class="0x040300", driver="snd_hda_intel", numa_node=1, iommu_group=7)
NIC = Device(name="pci_0000_00_19_0", type="pci", address="0000:00:19.0", vendor_id="0x8086",
             product_id="0x1533", pci_class="0x020000", driver="igb", numa_node=0, iommu_group=3)
PF = Device(name="pci_0000_81_00_0", type="pci", address="0000:81:00.0", vendor_id="0x8086",
            product_id="0x1572", pci_class="0x020000", driver="i40e", iommu_group=30,
            virtfns=("pci_0000_81_02_0",))
VF = Device(name="pci_0000_81_02_0", type="pci", address="0000:81:02.0", vendor_id="0x8086",
            product_id="0x154c", pci_class="0x020000", driver=None, iommu_group=31, physfn=PF.name)
MOUSE = Device(name="usb_1_1_2", type="usb_device", address="1-1.2", vendor_id="0x046d",
               product_id="0xc077", driver="usb")
INVENTORY = Inventory([GPU, AUDIO, NIC, PF, VF, MOUSE])


def rule(action: str = "deny", reason: str = "picked", **selectors: object) -> str:
    lines = ["[[rule]]", f'action = "{action}"', f'reason = "{reason}"']
    for key, value in selectors.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value) if isinstance(value, int) else f'"{value}"'


def with_policy(text: str, disabled_plugins: tuple[str, ...] = ()) -> Inspector:
    """An inspector whose policy plugin read `text` from a file, as `--policy FILE` does."""
    fd, path = tempfile.mkstemp(suffix=".toml")
    try:
        os.write(fd, text.encode())
        os.close(fd)
        return Inspector({"policy": path}, disabled_plugins=disabled_plugins)
    finally:
        os.unlink(path)


def matched(text: str) -> list[str]:
    """The devices a one-rule policy's rule picks (each gets the rule's reason)."""
    snap = with_policy(text).judge(INVENTORY)
    return sorted(n for n, v in snap.verdicts.items() if "site policy: picked" in v.reasons)


@pytest.mark.parametrize("selectors, expected", [
    ({"vendor_id": "0x10DE"}, [AUDIO.name, GPU.name]),
    ({"vendor_id": "10de", "product_id": "2484"}, [GPU.name]),  # without 0x, any case
    ({"vendor_id": ["0x10de", "0x046d"], "product_id": ["0x2484", "0xc077"]}, [GPU.name, MOUSE.name]),
    ({"vendor_id": "*", "type": "usb_device"}, [MOUSE.name]),  # Nova's wildcard
    ({"class": "0x03"}, [GPU.name]),  # base class prefix
    ({"class": "0x0403"}, [AUDIO.name]),  # base class + subclass
    ({"class": "0x020000"}, [NIC.name, PF.name, VF.name]),  # the full code
    ({"class": "0x040000/0xff0000"}, [AUDIO.name]),  # value/mask
    ({"class": ["0x03", "0x0403"]}, [AUDIO.name, GPU.name]),
    ({"address": "0000:0a:00.*"}, [AUDIO.name, GPU.name]),
    ({"address": "0000:0A:00.0"}, [GPU.name]),  # addresses compare lower-case
    ({"address": "1-1.*"}, [MOUSE.name]),
    ({"driver": "vfio-*"}, [GPU.name]),
    ({"driver": "", "type": "pci"}, [VF.name]),  # driverless
    ({"type": "usb_device"}, [MOUSE.name]),
    ({"type": ["usb_device", "pci"], "numa_node": 0}, [NIC.name]),
    ({"numa_node": [1]}, [AUDIO.name, GPU.name]),
    ({"name": "pci_0000_81_*"}, [PF.name, VF.name]),
    ({"physfn": "0000:81:00.0"}, [VF.name]),  # the VFs of one PF
    ({"vendor_id": "0x10de", "driver": "igb"}, []),  # selectors AND together
])
def test_each_selector(selectors, expected):
    assert matched(rule("deny", **selectors)) == sorted(expected)


def test_deny_beats_allow_within_the_policy():
    text = rule("allow", "approved GPU", vendor_id="0x10de") + rule("deny", "NUMA node 1 is reserved", numa_node=1)
    v = with_policy(text).judge(INVENTORY).verdicts[GPU.name]
    assert not v.eligible
    assert v.reasons == ("site policy: NUMA node 1 is reserved",)


def test_policy_deny_beats_built_in_allow_and_built_in_deny_beats_policy_allow():
    bridge = Device(name="pci_0000_00_01_0", type="pci", address="0000:00:01.0", pci_class="0x060400")
    inv = Inventory([NIC, bridge])
    text = rule("deny", "carries the management network", address="0000:00:19.0") + rule("allow", "all PCI", type="pci")
    snap = with_policy(text).judge(inv)
    nic, br = snap.verdicts[NIC.name], snap.verdicts[bridge.name]
    assert not nic.eligible and nic.reasons == ("site policy: carries the management network",)
    assert not br.eligible and "site policy: all PCI" not in br.reasons
    assert any("not an endpoint" in r for r in br.reasons)


def test_allow_reason_joins_the_built_in_reason():
    snap = with_policy(rule("allow", "approved GPU", product_id="0x2484")).judge(INVENTORY)
    assert snap.verdicts[GPU.name].reasons == ("PCI endpoint (display controller)", "site policy: approved GPU")


def test_policy_alone_can_make_a_device_eligible():
    inspector = with_policy(rule("allow", "approved GPU", product_id="0x2484"), disabled_plugins=("pci",))
    snap = inspector.judge(INVENTORY)
    assert snap.verdicts[GPU.name].eligible and snap.verdicts[GPU.name].reasons == ("site policy: approved GPU",)
    assert snap.verdicts[NIC.name].reasons == ("no rule",)


def test_unmatched_deny_is_an_allow_list():
    text = 'unmatched = "deny"\n' + rule("allow", "approved GPU", vendor_id="0x10de")
    snap = with_policy(text).judge(INVENTORY)
    assert snap.verdicts[GPU.name].eligible
    assert not snap.verdicts[NIC.name].eligible
    assert "no allow rule matches" in snap.verdicts[NIC.name].reasons[-1]
    assert snap.verdicts["computer"].reasons == ("no rule",)  # structure is left to the built-ins


def test_without_a_policy_the_plugin_abstains():
    snap = Inspector().judge(INVENTORY)
    assert not any(r.startswith("site policy") for v in snap.verdicts.values() for r in v.reasons)


BAD = [
    ('[[rule]]\naction = "deny"\nreason = \n', 3, "Invalid value"),  # tomllib's own error
    ('[[rule]]\naction = "allow"\nreason = "r"\nname = "*"\n\n[[rule]]\naction = "permit"\nreason = "r"\nname = "*"\n',
     7, 'rule 2: action must be "allow" or "deny"'),
    ('[[rule]]\naction = "deny"\nname = "*"\n', 1, "every rule needs a reason"),
    ('[[rule]]\naction = "deny"\nreason = "r"\n', 1, "rule 1: no selector"),
    ('[[rule]]\naction = "deny"\nreason = "r"\n\nvendor = "0x10de"\n', 5, "unknown key 'vendor'"),
    ('[[rule]]\naction = "deny"\nreason = "r"\nvendor_id = "nvidia"\n', 4, "not a 4-digit hex id"),
    ('[[rule]]\naction = "deny"\nreason = "r"\nclass = "0x3"\n', 4, "not a class prefix"),
    ('[[rule]]\naction = "deny"\nreason = "r"\nclass = "0x03/zz"\n', 4, "not a value/mask pair"),
    ('[[rule]]\naction = "deny"\nreason = "r"\ntype = "gpu"\n', 4, "'gpu' is not a device type"),
    ('[[rule]]\naction = "deny"\nreason = "r"\nnuma_node = "1"\n', 4, "'1' is not a NUMA node number"),
    ('[[rule]]\naction = "deny"\nreason = "r"\nnuma_node = true\n', 4, "True is not a NUMA node number"),
    ('[[rule]]\naction = "deny"\nreason = "r"\naddress = []\n', 4, "an empty list matches nothing"),
    ('unmatched = "allow"\n', 1, "unmatched must be one of"),
    ('# site\n[rules]\nx = 1\n', 2, "unknown top-level key 'rules'"),
    ('rule = "deny everything"\n', 1, "rules are written as [[rule]] tables"),
]


@pytest.mark.parametrize("text, line, message", BAD)
def test_bad_policy_is_refused_with_line_and_reason(tmp_path, text, line, message):
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as exc:
        load(path)
    assert str(exc.value).startswith(f"{path}:{line}:")
    assert message in str(exc.value)


def test_unreadable_policy(tmp_path):
    with pytest.raises(PolicyError, match=r"site.toml: cannot read policy file: No such file"):
        load(tmp_path / "site.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load(tmp_path / "bin.toml")


def test_rule_lines_are_kept_for_display():
    pol = parse("# comment\n\n" + rule(name="*") + "\n" + rule(name="x"))
    assert [r.line for r in pol.rules] == [3, 8]
    assert pol.rules[1].selectors == (("name", ("x",)),)


def test_example_policy_in_docs_parses():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    start = doc.index("```toml\n") + len("```toml\n")
    text = textwrap.dedent(doc[start:doc.index("```", start)])
    pol = parse(text)
    assert pol.rules and all(r.reason for r in pol.rules)


def test_docs_example_is_the_tested_package():
    from pathlib import Path

    root = Path(__file__).parents[1]
    doc = (root / "docs" / "plugins.md").read_text()
    start = doc.index("```python\n") + len("```python\n")
    code = doc[start:doc.index("```", start)]
    assert (root / "tests" / "example_plugin" / "passthrough_example_rules.py").read_text().endswith(code)
