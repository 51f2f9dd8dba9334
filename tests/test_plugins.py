"""Rule plugins: entry points, --plugin, --disable-plugin, the `plugins` listing, and broken plugins contained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from passthrough_exporter import hookimpl
from passthrough_exporter.judging.inspector import Inspector, make_plugin_manager
from passthrough_exporter.model import Device, Finding, Inventory, Verdict
from passthrough_exporter.settings import ConfigError
from tests.support import hosts
from tests.support.process import EXE

AMD = 0x1002
NAVI10 = "pci_0000_0b_00_0"
EXAMPLE = Path(__file__).parent / "example_plugin"


def run(tree, *args, command="devices", env=None):
    cmd = [EXE, command, *args]
    if tree is not None:
        cmd += ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def objects(out) -> dict[str, dict]:
    assert out.returncode == 0, out.stderr
    return {o["name"]: o for o in json.loads(out.stdout)}


@pytest.fixture
def host(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    hosts.usb_tree(tree)
    tree.pci("0000:0b:00.0", AMD, 0x731F, 0x030000, driver="amdgpu", group=8)  # a Navi 10 card
    return tree


# --- the example package, installed with pip, loaded through its entry point ---------------


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory):
    """The example package pip-installed into a directory of its own, found through PYTHONPATH.

    Its entry point is discovered exactly as in a real install, but the project's environment
    (which also runs the exporter on this host) is left without a test rule pack in it.
    """
    target = tmp_path_factory.mktemp("example-plugin")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return {**os.environ, "PYTHONPATH": str(target)}


def test_example_plugin_changes_a_verdict_through_its_entry_point(host, example_installed):
    env = example_installed
    navi = objects(run(host, "--json", "--cap", "pci", env=env))[NAVI10]
    assert navi["eligible"] is False
    assert navi["reasons"] == ["AMD Navi 10 (RX 5600/5700): reset bug, the GPU does not come back after the VM stops"]
    plain = objects(run(host, "--json", "--cap", "pci", "--disable-plugin", "amd_reset_bug", env=env))[NAVI10]
    assert plain["eligible"] is True and plain["reasons"] == ["PCI endpoint (display controller)"]
    # Other devices are untouched by it.
    assert objects(run(host, "--json", env=env))["pci_0000_01_00_0"]["eligible"] is True
    # Without it on the path, the card is judged by the built-ins alone.
    assert objects(run(host, "--json", "--cap", "pci"))[NAVI10]["eligible"] is True


def test_plugins_lists_name_distribution_and_version(example_installed):
    out = run(None, command="plugins", env=example_installed)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ["NAME", "DISTRIBUTION", "VERSION", "MODULE"]
    own = metadata.version("passthrough-exporter")
    assert ["pci", "passthrough-exporter", own, "passthrough_exporter.plugins.pci"] in rows
    assert ["policy", "passthrough-exporter", own, "passthrough_exporter.plugins.policy"] in rows
    assert ["amd_reset_bug", "passthrough-example-rules", "1.3.0", "passthrough_example_rules"] in rows
    listed = json.loads(run(None, "--json", "--disable-plugin", "usb", command="plugins").stdout)
    names = [r["name"] for r in listed]
    assert names == sorted(names) and "usb" not in names and {"pci", "scsi", "policy"} <= set(names)
    assert next(r for r in listed if r["name"] == "scsi")["hooks"] == "passthrough_affected_sets,passthrough_verdicts"


def test_example_plugin_adds_an_option_a_finding_with_its_fix_and_a_check(host, example_installed):
    """Everything a third-party pack needs, without a line of it in the core."""
    env = example_installed
    helptext = run(None, "--help", command="devices", env=env).stdout
    assert "amd_reset_bug plugin:" in helptext and "--amd-reset-bug.vendor-reset" in helptext
    out = run(host, command="check", env=env)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("AMD GPUs come back after a VM stops"))
    assert lines[at].endswith(": WARN")
    assert lines[at + 1] == (f"    warning gpu_reset_bug [{NAVI10}]: AMD Navi 10 (RX 5600/5700) needs vendor-reset "
                             "to be reused by a VM")
    assert lines[at + 2] == ("    fix: install and load the vendor-reset module (github.com/gnif/vendor-reset), "
                             "then run the exporter with --amd-reset-bug.vendor-reset")
    # Its option, read once at start by the pack itself: a warning instead of a denial, no finding.
    navi = objects(run(host, "--json", "--amd-reset-bug.vendor-reset", env=env))[NAVI10]
    assert navi["eligible"] is True
    assert navi["warnings"] == ["AMD Navi 10 (RX 5600/5700): reset bug, handled by vendor-reset"]
    fixed = run(host, "--amd-reset-bug.vendor-reset", command="check", env=env).stdout
    assert "AMD GPUs come back after a VM stops" in fixed and "gpu_reset_bug" not in fixed
    # Without the pack, its option does not exist.
    assert run(host, "--amd-reset-bug.vendor-reset").returncode == 2


# --- --disable-plugin and --plugin ---------------------------------------------------------


def test_disable_a_built_in_plugin(host):
    objs = objects(run(host, "--json", "--disable-plugin", "usb"))
    assert objs["usb_1_1_2"]["eligible"] is False and objs["usb_1_1_2"]["reasons"] == ["no rule"]
    assert objs["usb_1_1_2"]["affected_count"] == 0  # the usb plugin also answered what goes along
    assert objs["pci_0000_01_00_0"]["eligible"] is True  # the others still rule
    listing = run(host, "--passthrough", "--disable-plugin", "usb", "--disable-plugin", "scsi")
    assert [n for n in listing.stdout.splitlines() if not n.startswith("pci_")] == []


@pytest.mark.parametrize("command, code", [("devices", 1), ("check", 3), ("plugins", 1)])
def test_disable_unknown_plugin_is_an_error_naming_the_installed_ones(host, command, code):
    """A misspelled name would leave on the plugin the operator meant to switch off."""
    out = run(host if command != "plugins" else None, "--disable-plugin", "nosuch", command=command)
    assert out.returncode == code and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("passthrough-exporter: --disable-plugin nosuch: no plugin of that name is installed; "
                           "installed: ")
    installed = line.rpartition("installed: ")[2].split(", ")
    assert {"pci", "usb", "scsi", "safety", "policy"} <= set(installed) and installed == sorted(installed)


def test_disable_unknown_plugin_is_refused_by_the_library_too():
    with pytest.raises(ConfigError, match="--disable-plugin polcy: no plugin of that name is installed"):
        make_plugin_manager(disabled=("polcy",))


SITE_RULES = '''
from passthrough_exporter import hookimpl
from passthrough_exporter.model import Verdict

@hookimpl
def passthrough_verdict(device):
    if device.vendor_id == "0x046d":
        return Verdict.deny("Logitech input devices stay with the host console")
'''


@pytest.fixture
def pythonpath(tmp_path):
    mod_dir = tmp_path / "mods"
    (mod_dir / "mysite").mkdir(parents=True)
    (mod_dir / "mysite" / "__init__.py").write_text("")
    (mod_dir / "mysite" / "rules.py").write_text(SITE_RULES)
    (mod_dir / "mysite" / "broken.py").write_text(textwrap.dedent('''
        from passthrough_exporter import hookimpl

        @hookimpl
        def passthrough_verdict(device):
            if device.type == "usb_device":
                raise RuntimeError("rule pack bug")

        @hookimpl
        def passthrough_affected(device):
            if device.type == "pci":
                return "pci_0000_00_00_0"  # a string, not an iterable of names
    '''))
    return {**os.environ, "PYTHONPATH": str(mod_dir)}


def test_plugin_by_module_path(host, pythonpath):
    objs = objects(run(host, "--json", "--plugin", "mysite.rules", env=pythonpath))
    assert objs["usb_1_1_2"]["eligible"] is False
    assert objs["usb_1_1_2"]["reasons"] == ["Logitech input devices stay with the host console"]
    assert objs["usb_1_1_4"]["eligible"] is True
    out = run(None, "--plugin", "mysite.rules", command="plugins", env=pythonpath)
    assert ["mysite.rules", "-", "-", "mysite.rules"] in [line.split() for line in out.stdout.splitlines()]
    # A --plugin module can be switched off by its module path like any other plugin.
    objs = objects(run(host, "--json", "--plugin", "mysite.rules", "--disable-plugin", "mysite.rules", env=pythonpath))
    assert objs["usb_1_1_2"]["eligible"] is True


@pytest.mark.parametrize("module, message", [
    ("mysite.nope", "--plugin mysite.nope: cannot import module: ModuleNotFoundError: No module named 'mysite.nope'"),
    ("json", "--plugin json: the module has no @hookimpl passthrough_* functions"),
])
def test_bad_plugin_module_is_a_one_line_error(host, pythonpath, module, message):
    out = run(host, "--plugin", module, env=pythonpath)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == f"passthrough-exporter: {message}\n"


def test_broken_plugin_module_does_not_stop_the_listing(host, pythonpath):
    objs = objects(run(host, "--json", "--plugin", "mysite.broken", env=pythonpath))
    mouse = objs["usb_1_1_2"]
    assert mouse["eligible"] is True and mouse["reasons"] == ["USB device"]
    assert mouse["warnings"] == ["plugin mysite.broken failed on this device; its rule was skipped"]
    assert objs["pci_0000_01_00_0"]["affected_count"] == 1
    along = run(host, "--affected-by", "pci_0000_01_00_0", "--plugin", "mysite.broken", env=pythonpath)
    assert along.stdout == "pci_0000_01_00_1\n"


# --- containment, in process ---------------------------------------------------------------

GPU = Device(name="pci_0000_01_00_0", type="pci", address="0000:01:00.0", pci_class="0x030000", iommu_group=2)
AUDIO = Device(name="pci_0000_01_00_1", type="pci", address="0000:01:00.1", pci_class="0x040300", iommu_group=2)
INV = Inventory([GPU, AUDIO])


class Raises:
    @hookimpl
    def passthrough_verdict(self, device):
        raise ValueError("boom")


class Garbage:
    def __init__(self, answer):
        self.answer = answer

    @hookimpl
    def passthrough_verdict(self, device):
        return self.answer


def _names_then_raise():
    yield "pci_0000_01_00_1"
    raise KeyError("halfway")


class RaisesMidIteration:
    @hookimpl
    def passthrough_affected(self, device):
        return _names_then_raise()

    @hookimpl
    def passthrough_findings(self, inventory):
        yield Finding("first", "info", "host", "kept")
        raise RuntimeError("halfway")


class NotFindings:
    @hookimpl
    def passthrough_findings(self):
        return [Finding("ok", "info", "host", "kept"), "not a finding"]


def judge_with(*plugins, name="bad"):
    pm = make_plugin_manager()
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"{name}{i or ''}")
    return Inspector(plugin_manager=pm).judge(INV)


@pytest.mark.parametrize("plugin", [
    Raises(),
    Garbage("yes"),
    Garbage(42),
    Garbage(["allow"]),
    Garbage(Verdict(True, "not a tuple")),  # type: ignore[arg-type]
    Garbage(Verdict("yes", ("r",))),  # type: ignore[arg-type]
], ids=["raises", "str", "int", "list", "reasons-str", "eligible-str"])
def test_broken_verdict_is_contained(plugin, caplog):
    snap = judge_with(plugin)
    gpu = snap.verdicts[GPU.name]
    assert gpu.eligible and gpu.reasons == ("PCI endpoint (display controller)",)
    assert gpu.warnings == ("plugin bad failed on this device; its rule was skipped",)
    assert snap.errors["plugin_error"] == len(INV)  # once per device it was asked about
    assert "plugin bad" in caplog.text


def test_iterators_that_raise_midway_are_contained():
    snap = judge_with(RaisesMidIteration())
    # Both devices judged by the built-ins; what was read before the failure is kept.
    assert snap.verdicts[GPU.name].eligible
    assert snap.affected[GPU.name] == (AUDIO.name,)
    assert snap.verdicts[GPU.name].warnings == ("plugin bad failed on this device; its rule was skipped",)
    assert [f.code for f in snap.findings if f.code in ("first", "second")] == ["first"]
    assert snap.errors["plugin_error"] == len(INV) + 1


def test_non_findings_are_dropped_and_counted():
    snap = judge_with(NotFindings())
    builtin = {f.code for f in judge_with().findings}  # the safety plugin's own findings on this inventory
    assert [f.code for f in snap.findings if f.code not in builtin] == ["ok"] and snap.errors["plugin_error"] == 1


class Halt(BaseException):
    """Not an Exception: what a plugin's own control flow might raise."""


class Exits:
    """sys.exit() and other BaseExceptions from every hook, on the GPU only where asked per device."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    @hookimpl
    def passthrough_verdict(self, device):
        if device.name == GPU.name:
            raise self.exc

    @hookimpl
    def passthrough_affected(self, device):
        if device.name == GPU.name:
            raise self.exc

    @hookimpl
    def passthrough_findings(self):
        raise self.exc


@pytest.mark.parametrize("exc", [SystemExit(3), SystemExit("bye"), Halt()], ids=["exit-3", "exit-text", "base"])
def test_a_plugin_that_exits_is_contained(exc, caplog):
    snap = judge_with(Exits(exc))
    gpu, audio = snap.verdicts[GPU.name], snap.verdicts[AUDIO.name]
    assert gpu.eligible and gpu.reasons == ("PCI endpoint (display controller)",)
    assert gpu.warnings == ("plugin bad failed on this device; its rule was skipped",)
    assert audio.eligible and audio.warnings == ()  # the other device: judged, untouched
    assert snap.affected[GPU.name] == (AUDIO.name,)  # the built-in PCI rule still answered
    assert snap.errors["plugin_error"] == 3  # the GPU's verdict and affected set, the findings
    assert "plugin bad failed on pci_0000_01_00_0" in caplog.text


def test_ctrl_c_in_a_plugin_still_stops_the_command():
    with pytest.raises(KeyboardInterrupt):
        judge_with(Exits(KeyboardInterrupt()))


class Reassigns:
    """Tries to change what the plugins after it see."""

    @hookimpl(tryfirst=True)
    def passthrough_verdict(self, device, inventory):
        inventory.devices = {}

    @hookimpl
    def passthrough_findings(self, inventory):
        del inventory.groups


def test_a_plugin_cannot_reassign_the_inventory(caplog):
    snap = judge_with(Reassigns())
    assert snap.inventory is INV and set(INV.devices) == {"computer", GPU.name, AUDIO.name}
    assert INV.groups == {2: (GPU.name, AUDIO.name)}
    assert snap.verdicts[GPU.name].eligible and snap.verdicts[AUDIO.name].eligible  # judged all the same
    assert snap.errors["plugin_error"] == len(INV) + 1
    assert "AttributeError: Inventory.devices cannot be reassigned: an inventory is read-only" in caplog.text
    with pytest.raises(AttributeError, match="read-only"):
        INV.host = None
    with pytest.raises(AttributeError):
        INV.extra = 1  # no new attribute either


def test_a_plugin_that_exits_leaves_the_listing_whole(host, tmp_path):
    (tmp_path / "exiting.py").write_text(textwrap.dedent('''
        import sys
        from passthrough_exporter import hookimpl

        @hookimpl
        def passthrough_verdict(device):
            if device.type == "usb_device":
                sys.exit(0)
    '''))
    objs = objects(run(host, "--json", "--plugin", "exiting", env={**os.environ, "PYTHONPATH": str(tmp_path)}))
    assert objs["usb_1_1_2"]["eligible"] is True
    assert objs["usb_1_1_2"]["warnings"] == ["plugin exiting failed on this device; its rule was skipped"]
    assert not any("exiting" in w for o in objs.values() if o["type"] != "usb_device" for w in o["warnings"])


def test_entry_point_that_fails_to_import_names_itself(monkeypatch):
    class EP:
        name, value = "vendorpack", "vendorpack.rules"

        def load(self):
            raise ImportError("No module named 'vendorpack'")

    monkeypatch.setattr("passthrough_exporter.judging.inspector._entry_points", lambda: [EP()])
    with pytest.raises(ConfigError, match=r"plugin 'vendorpack' \(vendorpack.rules\) failed to load: ImportError"):
        make_plugin_manager()
    make_plugin_manager(disabled=("vendorpack",))  # the way out the message names


# --- the policy through the command line ---------------------------------------------------


def test_policy_file_changes_verdicts(host, tmp_path):
    policy = tmp_path / "site.toml"
    policy.write_text(textwrap.dedent('''
        [[rule]]
        action = "deny"
        reason = "the host console's GPU stays"
        address = "0000:01:00.*"
    '''))
    objs = objects(run(host, "--json", "--policy", str(policy)))
    assert objs["pci_0000_01_00_1"]["reasons"] == ["site policy: the host console's GPU stays"]
    assert objs["pci_0000_00_14_0"]["eligible"] is True
    # --policy is the policy plugin's own option: with the plugin disabled it does not exist, and
    # the command refuses it rather than run without the rules the operator asked for.
    off = run(host, "--json", "--policy", str(policy), "--disable-plugin", "policy")
    assert off.returncode == 2 and "unrecognized arguments: --policy" in off.stderr
    assert objects(run(host, "--json", "--disable-plugin", "policy"))["pci_0000_01_00_1"]["eligible"] is True


def test_bad_policy_file_is_refused_at_start(host, tmp_path):
    policy = tmp_path / "site.toml"
    policy.write_text('[[rule]]\naction = "deny"\nreason = "nics"\nclass = "network"\n')
    for command, args in (("devices", (host,)), ("plugins", (None,))):
        out = run(*args, "--policy", str(policy), command=command)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr == (f"passthrough-exporter: {policy}:4: rule 1: class: 'network' is not a class "
                              'prefix like "0x03", "0x0300" or "0x030000"\n')


def test_a_caveat_is_not_an_allow(tree):
    """`Verdict.warn` adds a warning to an eligible device and never makes one eligible by itself:
    with the PCI rules switched off, the safety plugin's reset caveat must not allow the GPU."""
    hosts.base(tree)
    hosts.desktop_gpu(tree)  # GPU and audio reset by bus only: the safety plugin warns
    with_pci = objects(run(tree, "--json", "--cap", "pci"))
    assert with_pci["pci_0000_01_00_1"]["eligible"] is True
    assert any("no function-level reset" in w for w in with_pci["pci_0000_01_00_1"]["warnings"])
    assert not any("no function-level reset" in w for w in with_pci["pci_0000_00_01_0"]["warnings"])  # bridge
    without = objects(run(tree, "--json", "--cap", "pci", "--disable-plugin", "pci"))
    for name in ("pci_0000_01_00_0", "pci_0000_01_00_1"):
        assert without[name]["eligible"] is False and without[name]["reasons"] == ["no rule"]
        assert without[name]["warnings"] == []
    listed = run(tree, "--passthrough", "--disable-plugin", "pci")
    assert listed.returncode == 0 and listed.stdout == ""


# --- call order: pluggy's ------------------------------------------------------------------


def _ruler(tag: str, **order: bool):
    class Ruler:
        @hookimpl(**order)
        def passthrough_verdict(self, device):
            return Verdict.allow(tag)
    return Ruler()


def test_hooks_run_in_pluggys_order():
    """The inspector calls each implementation itself (to contain failures), in exactly the order
    `pm.hook.passthrough_verdict(...)` calls them: tryfirst first, trylast last, else last registered first."""
    pm = make_plugin_manager(disabled=("pci", "usb", "scsi", "safety", "policy"))
    for name, order in [("late", {"trylast": True}), ("a", {}), ("early", {"tryfirst": True}), ("b", {}),
                        ("late2", {"trylast": True}), ("early2", {"tryfirst": True})]:
        pm.register(_ruler(name, **order), name=name)
    inspector = Inspector(plugin_manager=pm)
    snap = inspector.judge(INV)
    by_pluggy = pm.hook.passthrough_verdict(device=GPU, inventory=INV, settings=inspector.settings,
                                            facts=snap.facts)
    assert [v.reasons[0] for v in by_pluggy] == ["early2", "early", "b", "a", "late", "late2"]
    assert snap.verdicts[GPU.name].reasons == ("early2", "early", "b", "a", "late", "late2")


class Wrapper:
    @hookimpl(hookwrapper=True)
    def passthrough_verdict(self, device):
        yield


class NewWrapper:
    @hookimpl(wrapper=True)
    def passthrough_findings(self):
        return (yield)


@pytest.mark.parametrize("plugin, hook", [(Wrapper(), "passthrough_verdict"), (NewWrapper(), "passthrough_findings")])
def test_wrappers_are_refused_at_load_with_one_line(plugin, hook):
    pm = make_plugin_manager()
    pm.register(plugin, name="wrapping")
    with pytest.raises(ConfigError) as err:
        Inspector(plugin_manager=pm)
    assert str(err.value) == (f"plugin wrapping: {hook} is a hook wrapper, which passthrough-exporter does not "
                              "support; implement the hook plainly (tryfirst/trylast set the order)")


def test_a_wrapper_module_on_the_command_line_is_one_line(host, tmp_path):
    (tmp_path / "wrapmod.py").write_text(textwrap.dedent('''
        from passthrough_exporter import hookimpl

        @hookimpl(hookwrapper=True)
        def passthrough_verdict(device):
            yield
    '''))
    out = run(host, "--plugin", "wrapmod", env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.startswith("passthrough-exporter: plugin wrapmod: passthrough_verdict is a hook wrapper")


def test_a_plugin_failing_to_name_its_checks_costs_its_lines_not_the_report(tree, tmp_path):
    """passthrough_checks and passthrough_report_header raise: `check` still reports (exit by the
    findings, not a traceback's 1) and `plugins` still lists."""
    (tmp_path / "brokenlines.py").write_text(
        "from passthrough_exporter import hookimpl\n"
        "@hookimpl\n"
        "def passthrough_checks():\n    raise RuntimeError('no lines today')\n"
        "@hookimpl\n"
        "def passthrough_report_header():\n    raise SystemExit(9)\n")
    hosts.clean_host(tree)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([EXE, "check", "--plugin", "brokenlines", "--path.sysfs", str(tree.sys),
                          "--path.procfs", str(tree.proc)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr  # the clean host: every line passes
    assert "IOMMU enabled in firmware and kernel" in out.stdout and "no lines today" in out.stderr
    out = subprocess.run([EXE, "plugins", "--plugin", "brokenlines"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0 and "brokenlines" in out.stdout
