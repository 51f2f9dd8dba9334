"""The README's first commands and its JSON sample say what the code does."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from helpers import EXE

TOP = Path(__file__).resolve().parents[1]
README = (TOP / "README.md").read_text()


def first_commands() -> list[str]:
    block = README.split("```sh\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_starts_with_two_commands_and_ci_runs_the_second():
    setup, tests = first_commands()
    assert setup.startswith(".ci/setup && ") and setup.endswith(" serve")
    assert tests == ".ci/setup --test && .venv/bin/python -m pytest"
    run = (TOP / ".ci/run").read_text().splitlines()
    assert run[-1] == tests


def test_the_json_sample_is_what_the_code_prints(tree, tmp_path):
    """The sample's host bridge (8086:0d57, class 0x060000, no IOMMU, no driver) as a fixture, with
    the vendor's line from pci.ids: the first lines of the output are the README's, byte for byte."""
    command = "$ passthrough-exporter devices --json --cap pci | head -20\n"
    sample = README.split(command, 1)[1].split("```", 1)[0]
    assert len(sample.splitlines()) == 20
    t = tree
    t.pci("0000:00:00.0", 0x8086, 0x0D57, 0x060000, reset_method=None)
    ids = tmp_path / "pci.ids"
    ids.write_text("8086  Intel Corporation\n\t1234  Some other device\n")
    out = subprocess.run([EXE, "devices", "--json", "--cap", "pci", "--path.pci-ids", str(ids),
                          "--path.sysfs", str(t.sys), "--path.procfs", str(t.proc)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "".join(out.stdout.splitlines(keepends=True)[:20]) == sample


def test_the_readme_names_the_lowest_supported_python_of_pyproject():
    pyproject = (TOP / "pyproject.toml").read_text()
    (lowest,) = re.findall(r'^requires-python = ">=(\d+\.\d+)"', pyproject, re.M)
    assert f"Python {lowest} or newer" in README.replace("\n", " ")
    assert "Debian 12 (bookworm, Python 3.11.2)" in README.replace("\n", " ")
