"""Files the operator names are bounded before they are parsed: the policy file and pci.ids are
regular files under a size cap, read without blocking; a policy's keys and tables are bounded too,
and testing every device against 4,096 rules stays linear and quick."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from passthrough_exporter.reading import pciids
from passthrough_exporter.model import Device, Inventory
from passthrough_exporter.plugins.policy.rules import MAX_FILE_SIZE, MAX_TABLES, PolicyError, load, parse
from passthrough_exporter.settings import ConfigError
from tests.support import hosts
from tests.support.process import EXE

RULE = '[[rule]]\naction = "deny"\nreason = "r"\nname = "*"\n'


def run(tree, *args: str, command: str = "devices") -> subprocess.CompletedProcess:
    paths = ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)]
    return subprocess.run([EXE, command, *args, *paths], capture_output=True, text=True, timeout=30)


@pytest.fixture
def quiet(tree):
    """A host whose reading logs nothing: stderr holds only what a test provokes."""
    hosts.clean_host(tree)
    return tree


def refused(out: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert (out.returncode, out.stdout, out.stderr) == (code, "", f"passthrough-exporter: {message}\n")


# --- the policy file ------------------------------------------------------------------------


def test_a_deep_dotted_key_is_refused_before_parsing(tmp_path, quiet):
    """40 KB of `a.a.a...` cost tomllib 1.6 GB and seconds: refused at once, with its line."""
    path = tmp_path / "site.toml"
    path.write_text(RULE + "a." * 20_000 + "a = 1\n")
    assert path.stat().st_size > 40_000
    started = time.monotonic()
    with pytest.raises(PolicyError) as exc:
        load(path)
    assert time.monotonic() - started < 5
    message = f"{path}:5: a key of more than 16 dotted parts; policy keys have one"
    assert str(exc.value) == message
    refused(run(quiet, "--policy", str(path)), 1, message)
    refused(run(quiet, "--policy", str(path), command="check"), 3, message)


@pytest.mark.parametrize("text", [
    '"a" . b .' * 9 + "c = 1",  # quoted parts and spaces count the same
    "[[rule]]\n  " + ".".join(["x"] * 17) + " = 1",
])
def test_deep_keys_of_any_spelling_are_refused(text):
    with pytest.raises(PolicyError, match="a key of more than 16 dotted parts"):
        parse(text, "site.toml")


def test_dots_elsewhere_are_no_keys():
    """Dots in values, in strings and in lists over several lines are what policies are made of."""
    pol = parse(RULE.replace('name = "*"', 'address = [\n  "0000:00:19.0",\n  "0000:3b:00.*",\n]')
                + '[[rule]]\naction = "allow"\nreason = "see a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s"\n'
                + 'numa_node = 1\n', "site.toml")
    assert [r.selectors for r in pol.rules] == [(("address", ("0000:00:19.0", "0000:3b:00.*")),),
                                                (("numa_node", (1,)),)]


def test_deeply_nested_values_are_a_one_line_error():
    with pytest.raises(PolicyError, match=r"^site.toml: arrays or inline tables nested too deeply$"):
        parse("unmatched = " + "[" * 50_000 + "]" * 50_000, "site.toml")


def test_a_fifo_as_policy_is_refused_without_hanging(tmp_path, quiet):
    fifo = tmp_path / "policy.fifo"
    os.mkfifo(fifo)
    refused(run(quiet, "--policy", str(fifo)), 1, f"{fifo}: cannot read policy file: not a regular file")
    refused(run(quiet, "--policy", str(tmp_path)), 1, f"{tmp_path}: cannot read policy file: not a regular file")


def test_a_policy_above_the_size_cap_is_refused(tmp_path, quiet):
    big = tmp_path / "site.toml"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_SIZE + 1)  # sparse: nothing is written, and nothing may be read
    refused(run(quiet, "--policy", str(big), command="check"), 3,
            f"{big}: policy file of {MAX_FILE_SIZE + 1} bytes; at most {MAX_FILE_SIZE} are read")
    big.write_text(RULE * 24_000)  # 32,000 rules would be 1.3 MB
    assert big.stat().st_size > MAX_FILE_SIZE
    with pytest.raises(PolicyError, match=r"policy file of \d+ bytes; at most 1048576 are read"):
        load(big)


def test_rules_and_expected_devices_are_capped(tmp_path, quiet):
    assert MAX_TABLES == 4096
    with pytest.raises(PolicyError) as exc:
        parse(RULE * 32_000, "site.toml")
    assert str(exc.value) == ("site.toml: 32000 [[rule]] tables; at most 4096 are read (every refresh tests "
                              "each device against each one)")
    expects = "".join(f'[[expect]]\naddress = "0000:{i >> 8:02x}:{i >> 3 & 31:02x}.{i & 7}"\n' for i in range(4097))
    with pytest.raises(PolicyError, match=r"^site.toml: 4097 \[\[expect\]\] tables; at most 4096 are read"):
        parse(expects, "site.toml")
    path = tmp_path / "site.toml"
    path.write_text(RULE * 4097)
    refused(run(quiet, "--policy", str(path)), 1, f"{path}: 4097 [[rule]] tables; at most 4096 are read "
            "(every refresh tests each device against each one)")
    assert len(parse(RULE * 4096).rules) == 4096


GLOBS = ["0000:0[1-3]:*.?", "0000:3B:00.*", "*", "0000:00:19.0", "?000:00:19.[!0]", "[", "0000:00:1[9]*",
         "0000:00:19.0*x", "0000:*:*.7"]
ADDRESSES = ["0000:00:19.0", "0000:02:00.1", "0000:3b:00.4", "0000:3B:00.4", "0000:00:19.1", "[", "0000:ab:1f.7"]


@pytest.mark.parametrize("pattern", GLOBS)
def test_address_and_name_globs_match_as_fnmatch(pattern):
    """Compiled once at load, the globs answer what fnmatch answers: addresses without case, names
    with it; a plain value and a glob in one list each match."""
    pol = parse(RULE.replace('name = "*"', f'address = [{pattern!r}, "1111:11:11.1"]'))
    by_name = parse(RULE.replace('name = "*"', f'name = [{pattern!r}, "pci_1"]'))
    for address in ADDRESSES + ["1111:11:11.1"]:
        dev = Device(name=address, type="pci", address=address)
        inv = Inventory([dev])
        want = address.lower() == "1111:11:11.1" or fnmatchcase(address.lower(), pattern.lower())
        assert (pol.verdict(dev, inv) is not None) == want, address
        assert (by_name.verdict(dev, inv) is not None) == (fnmatchcase(address, pattern) or address == "pci_1")


def test_thousands_of_rules_cost_each_device_linear_time():
    """4,096 glob rules and 2,000 devices: 8 million tests, in seconds (fnmatch took 8 s for them,
    and past its cache of 32,768 patterns each test compiled one: minutes)."""
    rules = "".join(f'[[rule]]\naction = "deny"\nreason = "r{i}"\naddress = "0001:{i % 256:02x}:*.{i % 8}"\n'
                    for i in range(MAX_TABLES))
    pol = parse(rules)
    devices = [Device(name=f"pci_{i}", type="pci", address=f"0000:{i >> 8:02x}:{i >> 3 & 31:02x}.{i & 7}")
               for i in range(2000)]
    inv = Inventory(devices)
    started = time.monotonic()
    assert all(pol.verdict(d, inv) is None for d in devices)
    assert time.monotonic() - started < 15


# --- pci.ids --------------------------------------------------------------------------------


@pytest.fixture
def fresh_pciids():
    """load() keeps what it read: each test starts and ends without it."""
    pciids.load.cache_clear()
    yield
    pciids.load.cache_clear()


def test_a_huge_pci_ids_is_refused(tmp_path, quiet, fresh_pciids):
    zero = tmp_path / "zero"  # what /dev/zero would give: more than any pci.ids, as fast as it is read
    with open(zero, "wb") as f:
        f.truncate(pciids.MAX_SIZE + 1)
    message = f"{zero}: pci.ids file of {pciids.MAX_SIZE + 1} bytes; at most {pciids.MAX_SIZE} are read"
    with pytest.raises(ConfigError) as exc:
        pciids.load(str(zero))
    assert str(exc.value) == message
    refused(run(quiet, "--path.pci-ids", str(zero)), 1, message)
    refused(run(quiet, "--path.pci-ids", str(zero), command="check"), 3, message)


def test_a_fifo_or_missing_pci_ids_is_refused(tmp_path, quiet):
    fifo = tmp_path / "pci.ids"
    os.mkfifo(fifo)
    refused(run(quiet, "--path.pci-ids", str(fifo)), 1, f"{fifo}: cannot read pci.ids file: not a regular file")
    missing = tmp_path / "nope.ids"
    refused(run(quiet, "--path.pci-ids", str(missing)), 1,
            f"{missing}: cannot read pci.ids file: No such file or directory")
    out = run(quiet, "--path.pci-ids", "none", "--json")
    assert out.returncode == 0 and out.stderr == ""


def test_a_pci_ids_that_is_not_one_is_refused(tmp_path, fresh_pciids):
    path = tmp_path / "pci.ids"
    path.write_text("10de  NVIDIA Corporation\nnot a vendor line\n")
    with pytest.raises(ConfigError, match=r"pci.ids: not a pci.ids file: invalid literal"):
        pciids.load(str(path))


def test_without_the_system_pci_ids_devices_are_numbers(tmp_path, monkeypatch, caplog, fresh_pciids):
    monkeypatch.setattr(pciids, "SEARCH_PATH", (str(tmp_path / "misc" / "pci.ids"),))
    with caplog.at_level(logging.WARNING):
        assert pciids.load() is None
    assert "no pci.ids found" in caplog.text and "devices are named by their numbers" in caplog.text
    caplog.clear()
    pciids.load.cache_clear()
    os.mkfifo(tmp_path / "fifo.ids")  # a broken system file: the same, said with why, never a hang
    monkeypatch.setattr(pciids, "SEARCH_PATH", (str(tmp_path / "fifo.ids"),))
    with caplog.at_level(logging.WARNING):
        assert pciids.load() is None
    assert caplog.messages == [f"{tmp_path / 'fifo.ids'}: cannot read pci.ids file: not a regular file; "
                               "devices are named by their numbers"]


def test_the_system_pci_ids_fits_the_cap(fresh_pciids):
    path = next((p for p in pciids.SEARCH_PATH if os.path.exists(p)), None)
    if path is None:
        pytest.skip("no pci.ids on this machine")
    assert Path(path).stat().st_size < pciids.MAX_SIZE / 4
    assert pciids.load() is not None
