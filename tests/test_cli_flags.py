"""Flags that would quietly do something else are refused or warned: class prefixes of the wrong
length, abbreviated options, a refresh interval below its floor, a textfile node_exporter never reads."""

from __future__ import annotations

import argparse
import json
import subprocess

import pytest

from passthrough_exporter.commands import cli
from passthrough_exporter.commands.cmdline import refresh_interval
from passthrough_exporter.plugins import pci
from passthrough_exporter.settings import ConfigError
from tests.support import hosts
from tests.support.process import EXE

GPU = "pci_0000_01_00_0"  # class 0x030000 in hosts.desktop_gpu


def cli_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60)


def paths(tree) -> list[str]:
    return ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)]


@pytest.fixture
def desktop(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    return tree


# --- --pci.denied-classes ------------------------------------------------------------------


@pytest.mark.parametrize("command, code", [("devices", 1), ("check", 3)])
@pytest.mark.parametrize("prefix", ["0x3", "3", "0x030", "0x03000"])
def test_a_class_prefix_of_odd_length_is_refused_in_one_line(desktop, command, code, prefix):
    out = cli_run(command, *paths(desktop), "--pci.denied-classes", f"0x06,{prefix}")
    assert out.returncode == code and out.stdout == ""
    assert out.stderr == (f"passthrough-exporter: --pci.denied-classes: {prefix!r} is not a class prefix: give 2 "
                          "hex digits (base class, 0x03), 4 (and subclass, 0x0300) or 6 (and programming "
                          "interface, 0x030000)\n")


@pytest.mark.parametrize("prefix", ["0x03", "03", "0x0300", "0x030000", "0X03"])
def test_a_class_prefix_of_whole_bytes_denies_the_gpu(desktop, prefix):
    out = cli_run("devices", "--json", "--cap", "pci", *paths(desktop), "--pci.denied-classes", prefix)
    assert out.returncode == 0, out.stderr
    gpu = next(o for o in json.loads(out.stdout) if o["name"] == GPU)
    assert gpu["eligible"] is False
    assert gpu["reasons"] == ["display controller (0x030000) is host infrastructure, not an endpoint"]


def test_class_prefixes_parse_to_their_own_length():
    assert pci.class_prefixes(" 0x05, 0604 ,0x0B4000,") == ("0x05", "0x0604", "0x0b4000")
    with pytest.raises(ConfigError, match="'0x6' is not a class prefix"):
        pci.class_prefixes("0x6")


def test_the_denied_classes_replace_the_defaults_and_help_says_so(desktop):
    # 0x03 alone: the host bridge (0x0600) is no longer denied by class, as --help warns.
    out = cli_run("devices", "--json", "--cap", "pci", *paths(desktop), "--pci.denied-classes", "0x03")
    bridge = next(o for o in json.loads(out.stdout) if o["name"] == "pci_0000_00_00_0")
    assert bridge["reasons"] != ["host bridge (0x060000) is host infrastructure, not an endpoint"]
    text = " ".join(cli_run("devices", "--help").stdout.split())
    assert "The list replaces the default one: to add a class, repeat the defaults (0x05,0x06,0x0b,0x03)" in text
    assert "(default: 0x05,0x06,0x0b)" in text


# --- no abbreviations ----------------------------------------------------------------------


@pytest.mark.parametrize("argv, code", [
    (["devices", "--pass"], 2),                       # --passthrough
    (["devices", "--json", "--avail"], 2),            # --available
    (["devices", "--pci.denied", "0x03"], 2),         # a plugin's option
    (["devices", "--disable", "usb"], 2),             # --disable-plugin, read before parsing too
    (["devices", "--no-live"], 2),                    # --no-live.process-scan
    (["serve", "--refresh", "5s"], 2),                # --refresh-interval
    (["textfile", "x.prom", "--metrics.skip"], 2),    # --metrics.skip-vfs
    (["plugins", "--js"], 2),                         # --json
    (["check", "--js"], 3),                           # check's usage errors are UNKNOWN
    (["capture", "-o", "x.tar.gz", "--include"], 2),  # --include-serials
])
def test_an_abbreviated_option_is_a_usage_error(argv, code):
    out = cli_run(*argv)
    assert out.returncode == code and out.stdout == ""
    if argv[0] == "serve":  # a service's usage error is one log line, in its --log.format
        [line] = out.stderr.splitlines()
        assert "level=error" in line and "unrecognized arguments: --refresh 5s" in line
        return
    assert out.stderr.startswith(f"usage: passthrough-exporter {argv[0]} ")
    assert out.stderr.splitlines()[-1].startswith(f"passthrough-exporter {argv[0]}: error: unrecognized arguments: ")


def test_an_abbreviated_top_level_option_is_a_usage_error(desktop):
    out = cli_run("--log.lev", "debug", "devices", *paths(desktop))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("usage: passthrough-exporter [-h]")


def test_no_parser_accepts_abbreviations():
    parser = cli.build_parser(cli.make_plugin_manager())
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert not parser.allow_abbrev
    for name, sub in subparsers.choices.items():
        assert not sub.allow_abbrev, name


# --- --refresh-interval --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["100ms", "999ms", "0.5", "0.5s"])
def test_a_refresh_interval_below_one_second_is_a_usage_error(value):
    out = cli_run("serve", "--refresh-interval", value, "--web.listen-address", "127.0.0.1:0")
    assert out.returncode == 2 and out.stdout == ""
    [line] = out.stderr.splitlines()  # serve's usage error is a log line
    assert "level=error" in line and (f"argument --refresh-interval: {value!r} is too short: at least 1s "
                                      "(each refresh reads all of sysfs)") in line


@pytest.mark.parametrize("value, seconds", [("1s", 1.0), ("1000ms", 1.0), ("1", 1.0), ("30s", 30.0), ("5m", 300.0)])
def test_a_refresh_interval_of_a_second_or_more_is_accepted(value, seconds):
    assert refresh_interval(value) == seconds


# --- textfile names ------------------------------------------------------------------------


def test_a_textfile_not_named_prom_is_written_with_a_warning(desktop, tmp_path):
    target = tmp_path / "passthrough.txt"
    out = cli_run("textfile", str(target), *paths(desktop))
    assert out.returncode == 0, out.stderr
    assert target.read_text().startswith("# HELP ")
    warned = [line for line in out.stderr.splitlines() if "does not end in .prom" in line]
    assert len(warned) == 1 and "level=warn" in warned[0]
    assert "node_exporter's textfile collector reads only *.prom files" in warned[0]


def test_a_prom_textfile_is_written_without_that_warning(desktop, tmp_path):
    out = cli_run("textfile", str(tmp_path / "passthrough.prom"), *paths(desktop))
    assert out.returncode == 0, out.stderr
    assert ".prom" not in out.stderr.replace(str(tmp_path / "passthrough.prom"), "")
