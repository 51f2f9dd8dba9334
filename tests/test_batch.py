"""The built-in rules' batch forms answer exactly as their per-device hooks, and a failing batch
falls back to asking device by device."""

from __future__ import annotations

import pytest

from passthrough_exporter import hookimpl
from passthrough_exporter.judging.batch import BATCH, batched
from passthrough_exporter.judging.facts import Facts
from passthrough_exporter.judging.inspector import Inspector, make_plugin_manager
from passthrough_exporter.model import Verdict
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from tests.support import hosts
from tests.support.sysfs_builder import SysfsTree

POLICY = """\
[[rule]]
action = "deny"
reason = "kept for the host's own CUDA jobs"
vendor_id = "0x10de"

[[rule]]
action = "allow"
reason = "any USB device"
type = "usb_device"
"""


@pytest.fixture
def workstation(tree: SysfsTree, tmp_path):
    hosts.workstation(tree)
    hosts.orphan_vf(tree)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    inspector = Inspector({"policy": str(policy)})
    return SysfsSource(str(tree.sys), str(tree.proc)).read(), inspector


def _plain(answer):
    """An answer as a value: affected iterators read out."""
    if answer is None or isinstance(answer, Verdict):
        return answer
    return sorted(answer)


@pytest.mark.parametrize("hook", ["passthrough_verdict", "passthrough_affected"])
def test_batch_forms_answer_as_the_per_device_hooks(workstation, hook):
    inventory, inspector = workstation
    facts = Facts.of(inventory)
    kwargs = {"inventory": inventory, "settings": inspector.settings, "facts": facts}
    batched_impls = [impl for impl in getattr(inspector.pm.hook, hook).get_hookimpls()
                     if getattr(impl.function, BATCH, None) is not None]
    assert {inspector.pm.get_name(i.plugin) for i in batched_impls} >= (
        {"pci", "usb", "scsi", "safety", "policy"} if hook == "passthrough_verdict" else {"pci", "usb", "scsi"})
    for impl in batched_impls:
        answers = getattr(impl.function, BATCH)(inventory, inspector.settings, facts)
        assert set(answers) <= set(inventory.devices)
        for dev in inventory:
            one = impl.function(**{a: dev if a == "device" else kwargs[a] for a in impl.argnames})
            assert _plain(answers.get(dev.name)) == _plain(one), (inspector.pm.get_name(impl.plugin), dev.name)


class DeniesGpuInBatches:
    """A rule whose batch form is broken: the inspector must still get its answers."""

    @staticmethod
    def _broken(inventory, settings, facts):
        raise RuntimeError("batch bug")

    @hookimpl
    @batched(_broken)
    def passthrough_verdict(self, device):
        return Verdict.deny("site GPU") if device.name == "pci_0000_01_00_0" else None


def test_a_failing_batch_falls_back_to_device_by_device(workstation, caplog):
    inventory, _ = workstation
    pm = make_plugin_manager()
    pm.register(DeniesGpuInBatches(), name="site")
    snap = Inspector(plugin_manager=pm).judge(inventory)
    gpu = snap.verdicts["pci_0000_01_00_0"]
    assert not gpu.eligible and "site GPU" in gpu.reasons
    assert "plugin_error" not in snap.errors
    assert "plugin site failed answering for all devices at once" in caplog.text
    # Everything else as without the plugin.
    plain = Inspector().judge(inventory)
    assert {n: v for n, v in snap.verdicts.items() if n != "pci_0000_01_00_0"} == \
        {n: v for n, v in plain.verdicts.items() if n != "pci_0000_01_00_0"}
