"""Usage errors: an unknown --cap type names the known ones, and a misspelled option of a command is
that command's error, shown with that command's usage (exit 2, like every other usage error)."""

from __future__ import annotations

import json
import subprocess

import pytest

from passthrough_exporter.model import KNOWN_TYPES
from tests.support.parse import log_messages
from tests.support.process import EXE


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60)


def test_unknown_cap_is_an_error_naming_the_known_types(tree):
    out = cli("devices", "--cap", "gpu", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc))
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert lines[0].startswith("usage: passthrough-exporter devices ")
    error = lines[-1]
    assert error.startswith("passthrough-exporter devices: error: argument --cap: invalid choice: 'gpu'")
    for known in KNOWN_TYPES:
        assert known in error


@pytest.mark.parametrize("known", KNOWN_TYPES)
def test_every_known_cap_is_accepted(tree, known):
    out = cli("devices", "--cap", known, "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc))
    assert out.returncode == 0, out.stderr
    assert out.stdout == ("computer\n" if known == "system" else "")


@pytest.mark.parametrize("argv, typo, code", [
    (["devices", "--passthru"], "--passthru", 2),
    (["devices", "--json", "--afected-by", "pci_0000_00_00_0"], "--afected-by pci_0000_00_00_0", 2),
    # check is a monitoring plugin: 2 means critical there, so "could not check" is 3 (UNKNOWN)
    (["check", "--jsn"], "--jsn", 3),
    (["--log.level", "warn", "check", "--jsn"], "--jsn", 3),
    (["textfile", "out.prom", "--metric.skip-vfs"], "--metric.skip-vfs", 2),
    (["plugins", "--policy", "x.toml", "--disabel-plugin", "pci"], "--disabel-plugin pci", 2),
])
def test_misspelled_option_shows_the_commands_usage(argv, typo, code):
    out = cli(*argv)
    command = next(a for a in argv if not a.startswith("-") and a != "warn")
    assert out.returncode == code and out.stdout == ""
    lines = out.stderr.splitlines()
    assert lines[0].startswith(f"usage: passthrough-exporter {command} ")
    assert lines[-1] == f"passthrough-exporter {command}: error: unrecognized arguments: {typo}"


def test_a_usage_error_of_serve_is_a_log_line():
    """Everything serve writes is a log line in --log.format, a usage error too, with where to look."""
    out = cli("serve", "--web.listen-adress", "127.0.0.1:9839")
    assert out.returncode == 2 and out.stdout == ""
    assert log_messages(out.stderr, "error") == [
        "unrecognized arguments: --web.listen-adress 127.0.0.1:9839 (see passthrough-exporter serve --help)"]
    out = cli("--log.format", "json", "serve", "--web.listen-adress", "127.0.0.1:9839")
    (line,) = [json.loads(line) for line in out.stderr.splitlines()]
    assert out.returncode == 2 and line["level"] == "error" and line["msg"].startswith("unrecognized arguments: ")


def test_misspelled_top_level_option_shows_the_top_level_usage():
    out = cli("--log.levl", "debug", "devices")
    assert out.returncode == 2
    assert out.stderr.startswith("usage: passthrough-exporter [-h]")


@pytest.mark.parametrize("argv", [["--jsn", "check"], ["--log.level", "bogus", "check"]])
def test_a_usage_error_before_the_word_check_is_still_checks_unknown(argv):
    """Nagios reads 2 as critical: a usage error of `check`, wherever it is on the line, is 3."""
    out = cli(*argv)
    assert out.returncode == 3 and out.stdout == ""
    assert out.stderr.startswith("usage: passthrough-exporter [-h]")
    assert out.stderr.splitlines()[-1].startswith("passthrough-exporter: error: ")


def test_a_plugin_that_cannot_load_makes_check_unknown():
    out = cli("--plugin", "os", "check")  # before the word, as --plugin may be
    assert out.returncode == 3 and "the module has no @hookimpl" in out.stderr
