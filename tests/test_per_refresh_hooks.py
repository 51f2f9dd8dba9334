"""The per-refresh hooks (`passthrough_verdicts`, `passthrough_affected_sets`): a third party's rule
written that way judges as the same rule written per device, the answers of both forms are taken in
the documented order, and a per-refresh implementation that fails or answers garbage is contained."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from passthrough_exporter import hookimpl
from passthrough_exporter.judging.inspector import Inspector, make_plugin_manager
from passthrough_exporter.model import Verdict
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.settings import ConfigError
from tests.support import hosts
from tests.support.sysfs_builder import SysfsTree

GPU, AUDIO, XHCI = "pci_0000_01_00_0", "pci_0000_01_00_1", "pci_0000_00_14_0"
MOUSE, STICK = "usb_1_1_2", "usb_1_1_4"
FAILED = "plugin site failed on this device; its rule was skipped"
NVIDIA_DENY = "site: NVIDIA cards are kept for CUDA"
LOGITECH = "site: Logitech receivers pair with any keyboard nearby"
STICK_OK = "site: the stick may go to VMs"


@pytest.fixture
def inventory(tree: SysfsTree):
    """Host bridge, root port, GPU + HDMI audio (both NVIDIA, group 2), xHCI with a hub, a
    Logitech mouse and a storage stick (its SCSI LUN below it)."""
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    hosts.usb_tree(tree)
    return SysfsSource(str(tree.sys), str(tree.proc)).read()


def judge(inventory, *plugins, disabled=(), names=None):
    pm = make_plugin_manager(disabled=disabled)
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=names[i] if names else ("site" if i == 0 else f"site{i}"))
    return Inspector(plugin_manager=pm).judge(inventory)


# --- one rule, two forms ---------------------------------------------------------------------


def site_rule(device) -> Verdict | None:
    if device.vendor_id == "0x10de":
        return Verdict.deny(NVIDIA_DENY)
    if device.type == "usb_device" and device.vendor_id == "0x046d":
        return Verdict.warn(LOGITECH)
    if device.name == STICK:
        return Verdict.allow(STICK_OK)
    return None


def site_affected(name: str) -> list[str] | None:
    return [MOUSE] if name == GPU else None  # a KVM switch: the mouse follows the GPU's display


class PerDevice:
    @hookimpl
    def passthrough_verdict(self, device):
        return site_rule(device)

    @hookimpl
    def passthrough_affected(self, device):
        return site_affected(device.name)


class PerRefresh:
    @hookimpl
    def passthrough_verdicts(self, inventory):
        return {d.name: v for d in inventory if (v := site_rule(d)) is not None}

    @hookimpl
    def passthrough_affected_sets(self, inventory):
        return {d.name: site_affected(d.name) for d in inventory}


def test_a_third_party_rule_judges_the_same_in_either_form(inventory):
    plain = judge(inventory)
    per_device = judge(inventory, PerDevice())
    per_refresh = judge(inventory, PerRefresh())
    # Worked out from the rules: a deny drops the allows' reasons and the caveats but keeps the
    # allow's warnings (the PCI rule's boot VGA one); the base rule's reason leads; a caveat shows
    # on an eligible device.
    expected = {
        GPU: Verdict(False, (NVIDIA_DENY,), ("boot VGA device: the host console and firmware use it",)),
        AUDIO: Verdict(False, (NVIDIA_DENY,), ()),
        MOUSE: Verdict(True, ("USB device",), (LOGITECH,)),
        STICK: Verdict(True, ("USB device", STICK_OK), ()),
    }
    for snap in (per_device, per_refresh):
        assert {n: snap.verdicts[n] for n in expected} == expected
        assert snap.affected[GPU].names() == (AUDIO, MOUSE)  # its IOMMU group, and the mouse
        assert snap.affected[AUDIO].names() == (GPU,)
        untouched = set(inventory.devices) - set(expected)
        assert {n: snap.verdicts[n] for n in untouched} == {n: plain.verdicts[n] for n in untouched}
        assert {n: snap.affected[n] for n in untouched} == {n: plain.affected[n] for n in untouched}
        assert snap.errors == {}
    assert per_refresh.verdicts == per_device.verdicts and per_refresh.affected == per_device.affected


def test_the_built_in_rules_implement_the_per_refresh_form_only():
    pm = make_plugin_manager()
    for name in ("pci", "usb", "scsi", "safety", "policy"):
        hooks = {h.name for h in pm.get_hookcallers(pm.get_plugin(name))}
        assert "passthrough_verdicts" in hooks and "passthrough_verdict" not in hooks, name
        assert "passthrough_affected" not in hooks, name
    for name in ("pci", "usb", "scsi"):
        assert "passthrough_affected_sets" in {h.name for h in pm.get_hookcallers(pm.get_plugin(name))}


# --- the order of answers ----------------------------------------------------------------------


def _allows(tag: str, hook: str, **order: bool):
    class Rule:
        if hook == "passthrough_verdict":
            @hookimpl(**order)
            def passthrough_verdict(self, device):
                return Verdict.allow(tag)
        else:
            @hookimpl(**order)
            def passthrough_verdicts(self, inventory):
                return {d.name: Verdict.allow(tag) for d in inventory}
    return Rule()


def test_answers_are_taken_band_by_band_per_refresh_before_per_device(inventory):
    """tryfirst, plain, trylast; in a band the per-refresh implementations first, each form in
    pluggy's order. So the PCI rule's reason leads (tryfirst, per refresh) and the site policy
    (trylast, per refresh) comes after every plain rule of either form."""
    rules = [("dev_plain", "passthrough_verdict", {}), ("all_plain", "passthrough_verdicts", {}),
             ("dev_first", "passthrough_verdict", {"tryfirst": True}),
             ("all_last", "passthrough_verdicts", {"trylast": True}),
             ("dev_last", "passthrough_verdict", {"trylast": True}),
             ("all_plain2", "passthrough_verdicts", {})]
    snap = judge(inventory, *[_allows(tag, hook, **order) for tag, hook, order in rules],
                 names=[tag for tag, _, _ in rules])
    assert snap.verdicts[XHCI].reasons == (
        "PCI endpoint (serial bus controller)", "dev_first",  # tryfirst: per refresh, then per device
        "all_plain2", "all_plain", "dev_plain",  # plain: the one registered last first, in each form
        "all_last", "dev_last",  # trylast (the policy abstains: no --policy file)
    )


def test_per_refresh_implementations_alone_run_in_pluggys_order(inventory):
    pm = make_plugin_manager(disabled=("pci", "usb", "scsi", "safety", "policy"))
    for name, order in [("late", {"trylast": True}), ("a", {}), ("early", {"tryfirst": True}), ("b", {}),
                        ("late2", {"trylast": True}), ("early2", {"tryfirst": True})]:
        pm.register(_allows(name, "passthrough_verdicts", **order), name=name)
    inspector = Inspector(plugin_manager=pm)
    snap = inspector.judge(inventory)
    by_pluggy = pm.hook.passthrough_verdicts(inventory=inventory, settings=inspector.settings, facts=snap.facts)
    assert [answers[XHCI].reasons[0] for answers in by_pluggy] == ["early2", "early", "b", "a", "late", "late2"]
    assert snap.verdicts[XHCI].reasons == ("early2", "early", "b", "a", "late", "late2")


# --- containment -------------------------------------------------------------------------------


class Answers:
    """A per-refresh site rule answering whatever `verdicts` and `affected` make of the inventory."""

    def __init__(self, verdicts=None, affected=None):
        self.verdicts, self.affected = verdicts, affected

    @hookimpl
    def passthrough_verdicts(self, inventory):
        return self.verdicts(inventory) if self.verdicts else None

    @hookimpl
    def passthrough_affected_sets(self, inventory):
        return self.affected(inventory) if self.affected else None


class DeniesTheStick:
    """Another site rule, well behaved: it must rule whatever the broken one does."""

    @hookimpl
    def passthrough_verdict(self, device):
        return Verdict.deny("other: no sticks") if device.name == STICK else None


def _raise(inventory):
    raise RuntimeError("rule pack bug")


def _exit(inventory):
    raise SystemExit(3)


class BrokenMapping(Mapping):
    def __getitem__(self, name):
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("cannot list")

    def __len__(self) -> int:
        return 1


def _deny_gpu_by_address(inventory):
    return {"0000:01:00.0": Verdict.deny(NVIDIA_DENY)}  # keyed by address, not by name


WHOLE = {  # answers that fail on every device
    "raises": _raise,
    "exits": _exit,
    "a list": lambda inv: [Verdict.deny(NVIDIA_DENY) for _ in inv],
    "a str": lambda inv: GPU,
    "a Verdict": lambda inv: Verdict.deny(NVIDIA_DENY),
    "unknown name": _deny_gpu_by_address,
    "unknown name among good ones": lambda inv: {GPU: Verdict.deny(NVIDIA_DENY), "pci_0000_99_00_0": None},
    "a mapping that raises when read": lambda inv: BrokenMapping(),
}


def _check_failed_everywhere(snap, inventory, plain):
    for name, verdict in snap.verdicts.items():
        assert FAILED in verdict.warnings, name
        assert verdict.eligible == plain.verdicts[name].eligible or name == STICK, name  # another rule denies it
    assert snap.errors["plugin_error"] == 1  # one failure, counted once, not once per device


@pytest.mark.parametrize("answer", WHOLE.values(), ids=WHOLE.keys())
def test_a_per_refresh_verdict_that_fails_as_a_whole_is_contained(inventory, answer, caplog):
    plain = judge(inventory)
    snap = judge(inventory, Answers(verdicts=answer), DeniesTheStick())
    _check_failed_everywhere(snap, inventory, plain)
    # Nothing of its answer is used; the built-ins and the other plugin still rule.
    assert snap.verdicts[GPU].eligible and snap.verdicts[GPU].reasons == ("PCI endpoint (display controller)",)
    assert snap.verdicts[STICK] == Verdict(False, ("other: no sticks",), (FAILED,))
    assert snap.verdicts["computer"] == Verdict(False, ("no rule",), (FAILED,))
    assert snap.affected == plain.affected
    assert f"all {len(inventory)} devices at once (passthrough_verdicts)" in caplog.text


@pytest.mark.parametrize("answer", [_raise, lambda inv: "usb_1_1_2", _deny_gpu_by_address],
                         ids=["raises", "a str", "unknown name"])
def test_a_per_refresh_affected_set_that_fails_as_a_whole_is_contained(inventory, answer):
    plain = judge(inventory)
    snap = judge(inventory, Answers(affected=answer))
    _check_failed_everywhere(snap, inventory, plain)
    assert snap.affected == plain.affected


def test_a_bad_value_fails_on_its_device_alone(inventory, caplog):
    plain = judge(inventory)
    snap = judge(inventory, Answers(
        verdicts=lambda inv: {GPU: "deny", AUDIO: Verdict.deny(NVIDIA_DENY), MOUSE: Verdict(True, "not a tuple"),
                              XHCI: None},
        affected=lambda inv: {GPU: [MOUSE], STICK: "usb_1_1_4_1_0", AUDIO: 42},
    ), DeniesTheStick())
    # The refused values: their devices judged by the others, with the warning.
    gpu = snap.verdicts[GPU]
    assert gpu.eligible and gpu.reasons == ("PCI endpoint (display controller)",) and FAILED in gpu.warnings
    assert snap.verdicts[MOUSE] == Verdict(True, ("USB device",), (FAILED,))
    assert snap.verdicts[STICK] == Verdict(False, ("other: no sticks",), (FAILED,))
    assert snap.affected[STICK] == plain.affected[STICK]
    # The well-formed ones count: the audio function is denied (and its bad affected value warns).
    assert snap.verdicts[AUDIO] == Verdict(False, (NVIDIA_DENY,), (FAILED,))
    assert snap.affected[GPU].names() == (AUDIO, MOUSE)
    # Devices it answered well or not at all are untouched.
    for name in set(inventory.devices) - {GPU, AUDIO, MOUSE, STICK}:
        assert snap.verdicts[name] == plain.verdicts[name], name
    assert snap.errors["plugin_error"] == 2  # one per refused answer, each of several devices
    assert "plugin site answered 'deny' for pci_0000_01_00_0 and garbage for 1 other device(s)" in caplog.text


def test_unknown_names_inside_an_affected_set_are_dropped_and_counted(inventory):
    """As for the per-device hook: the set's known names are kept, the device is not warned."""
    snap = judge(inventory, Answers(affected=lambda inv: {GPU: {MOUSE, "usb_9_9"}}))
    assert snap.affected[GPU].names() == (AUDIO, MOUSE)
    assert FAILED not in snap.verdicts[GPU].warnings
    assert snap.errors["plugin_error"] == 1


def test_an_affected_iterator_that_raises_midway_keeps_what_it_named(inventory):
    def names_then_raise():
        yield MOUSE
        raise KeyError("halfway")

    snap = judge(inventory, Answers(affected=lambda inv: {GPU: names_then_raise()}))
    assert snap.affected[GPU].names() == (AUDIO, MOUSE)
    assert FAILED in snap.verdicts[GPU].warnings and FAILED not in snap.verdicts[AUDIO].warnings
    assert snap.errors["plugin_error"] == 1


def test_ctrl_c_in_a_per_refresh_hook_still_stops_the_command(inventory):
    def interrupt(inventory):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        judge(inventory, Answers(verdicts=interrupt))
    with pytest.raises(KeyboardInterrupt):
        judge(inventory, Answers(affected=interrupt))


# --- at start: a failure is a one-line ConfigError ----------------------------------------------


class BadOptions:
    @hookimpl
    def passthrough_addoption(self, parser):
        raise RuntimeError("no options today")


class ClashingOptions:
    @hookimpl(trylast=True)  # after the policy plugin has added its --policy
    def passthrough_addoption(self, parser):
        parser.addoption("--policy", dest="clash_policy")


class ExitsAtConfigure:
    @hookimpl
    def passthrough_configure(self, settings):
        raise SystemExit(2)


@pytest.mark.parametrize("plugin, message", [
    (BadOptions(), "plugin site failed to add its options: RuntimeError: no options today"),
    (ClashingOptions(), "plugin site failed to add its options: ArgumentError: argument --policy: "
                        "conflicting option string: --policy"),
    (ExitsAtConfigure(), "plugin site failed to configure: SystemExit: 2"),
])
def test_a_plugin_failing_at_start_is_a_config_error_naming_it(plugin, message):
    pm = make_plugin_manager()
    pm.register(plugin, name="site")
    with pytest.raises(ConfigError) as err:
        Inspector(plugin_manager=pm)
    assert str(err.value) == message


class Unprintable:
    def __repr__(self):
        raise RuntimeError("no repr")


def test_garbage_that_cannot_even_be_shown_is_contained(inventory, caplog):
    snap = judge(inventory, Answers(verdicts=lambda inv: {GPU: Unprintable()}))
    assert FAILED in snap.verdicts[GPU].warnings and snap.errors["plugin_error"] == 1
    assert "<Unprintable that cannot be shown>" in caplog.text


# --- a failed rule never leaves a device available ---------------------------------------------

CANNOT_TELL = "plugin site failed on this device: cannot tell whether it can be handed out"


class FailsOnTheGpu:
    @hookimpl
    def passthrough_verdict(self, device):
        if device.name == GPU:
            raise RuntimeError("rule pack bug")
        return None


def test_a_device_a_plugin_failed_on_is_blocked_not_available(inventory):
    """The skipped rule might have denied it, or named a device that goes with it and is in use:
    "available" is what a scheduler trusts, so it is not said where a rule could not be asked."""
    plain = judge(inventory)
    free = sorted(n for n, s in plain.states.items() if s == "available")
    # The fixture: IOMMU on, nothing in use, `/` unknown (no mountinfo), so the stick and the xHCI above
    # it may hold it; the GPU with its audio function and the mouse are free.
    assert free == sorted([GPU, AUDIO, MOUSE])
    one = judge(inventory, FailsOnTheGpu())
    assert one.states[GPU] == "blocked" and one.blocked_by[GPU] == CANNOT_TELL
    assert one.verdicts[GPU].eligible and FAILED in one.verdicts[GPU].warnings  # what the others said stays
    assert {n: s for n, s in one.states.items() if n != GPU} == {n: s for n, s in plain.states.items() if n != GPU}
    every = judge(inventory, Answers(verdicts=_raise))  # a per-refresh rule fails for every device at once
    assert sorted(n for n, s in every.states.items() if s == "available") == []
    assert {every.blocked_by[n] for n in free} == {CANNOT_TELL}


def test_a_failed_built_in_deny_leaves_the_root_disk_blocked(tree, monkeypatch):
    """The NVMe that holds `/` is denied by the safety rule; with that rule failing, the PCI rule alone
    calls it eligible, and it must still not read as free."""
    from passthrough_exporter.plugins import safety

    hosts.base(tree)
    hosts.nvme_lvm_root(tree)
    inventory = SysfsSource(str(tree.sys), str(tree.proc)).read()
    nvme = "pci_0000_3d_00_0"
    assert judge(inventory).states[nvme] == "ineligible"

    def broken(inventory):
        raise RuntimeError("rule pack bug")

    monkeypatch.setattr(safety, "passthrough_verdicts", hookimpl(broken))
    snap = Inspector().judge(inventory)
    assert snap.verdicts[nvme].eligible  # the PCI rule allows it, with the failed-plugin warning
    assert snap.states[nvme] == "blocked"
    assert snap.blocked_by[nvme] == ("plugin safety failed on this device: cannot tell whether it can be "
                                     "handed out")
    assert snap.errors["plugin_error"] == 1


# --- answers that would run plugin code after their check ---------------------------------------


class ChangesOnSecondRead(Mapping):
    """A deny for the GPU when checked, garbage when read again."""

    def __init__(self):
        self.reads = 0

    def __getitem__(self, name):
        self.reads += 1
        return Verdict.deny(NVIDIA_DENY) if self.reads == 1 else "garbage"

    def __iter__(self) -> Iterator[str]:
        return iter([GPU])

    def __len__(self) -> int:
        return 1


class RaisingKey:
    """Equal in hash to the GPU's name; comparing it raises."""

    def __hash__(self):
        return hash(GPU)

    def __eq__(self, other):
        raise RuntimeError("compared")


class ComputedVerdict(Verdict):
    """Eligible when checked, ineligible when combined."""

    __slots__ = ()


class Hiding(frozenset):
    """Holds the audio function, lists nothing: kept by reference, it would hide what goes along."""

    def __iter__(self):
        return iter(())


def test_a_mapping_is_read_once_inside_the_containment(inventory):
    snap = judge(inventory, Answers(verdicts=lambda inv: ChangesOnSecondRead()))
    assert not snap.verdicts[GPU].eligible and snap.verdicts[GPU].reasons == (NVIDIA_DENY,)
    assert FAILED not in snap.verdicts[GPU].warnings
    assert "plugin_error" not in snap.errors


def test_keys_that_are_not_plain_names_are_refused_whole(inventory, caplog):
    snap = judge(inventory, Answers(verdicts=lambda inv: {RaisingKey(): Verdict.deny(NVIDIA_DENY)}))
    assert FAILED in snap.verdicts[GPU].warnings and snap.verdicts[GPU].eligible  # refused, not crashed
    assert snap.errors["plugin_error"] == 1
    assert "its whole answer ignored" in caplog.text


def test_a_verdict_subclass_is_refused_for_its_device(inventory):
    snap = judge(inventory, Answers(verdicts=lambda inv: {GPU: ComputedVerdict(False, (NVIDIA_DENY,))}))
    assert FAILED in snap.verdicts[GPU].warnings and NVIDIA_DENY not in snap.verdicts[GPU].reasons
    assert snap.errors["plugin_error"] == 1


def test_a_frozenset_subclass_takes_no_shared_slot(inventory):
    """Per-refresh answers of a plain plugin come before the PCI rule's group set: a set of the
    plugin's own kind is iterated like any answer, never kept in its place."""
    snap = judge(inventory, Answers(affected=lambda inv: {GPU: Hiding({AUDIO})}))
    assert AUDIO in snap.affected[GPU].names()
    assert "plugin_error" not in snap.errors
