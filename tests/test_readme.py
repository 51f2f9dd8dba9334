"""The README's first commands and its JSON sample say what the code does."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

from tests.support import hosts
from tests.support.process import EXE

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


def sessions() -> list[tuple[str, str]]:
    """Every `$ command` of the README's code blocks with the output printed under it."""
    out = []
    for block in re.findall(r"^```\n(\$ .*?)^```$", README, re.M | re.S):
        for session in re.split(r"^(?=\$ )", block, flags=re.M):
            if session:
                command, _, output = session.partition("\n")
                out.append((command[2:], output))
    return out


def run_session(command: str, previous_exit: int, paths: list[str]) -> tuple[str, int]:
    """`passthrough-exporter ARGS [| head -N | grep -e TEXT ...]` with `paths` after the command word,
    or `echo $?`: what a shell would print, and the exit status."""
    if command == "echo $?":
        return f"{previous_exit}\n", 0
    words = shlex.split(command)
    pipe = words.index("|") if "|" in words else len(words)
    assert words[0] == "passthrough-exporter", command
    out = subprocess.run([EXE, words[1], *paths, *words[2:pipe]], capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines(keepends=True)
    filter_words = words[pipe + 1:]
    if filter_words[:1] == ["head"]:
        lines = lines[:int(filter_words[1].removeprefix("-"))]
    elif filter_words[:1] == ["grep"]:
        needles = [w for i, w in enumerate(filter_words) if i and filter_words[i - 1] == "-e"]
        lines = [line for line in lines if any(n in line for n in needles)]
    else:
        assert not filter_words, f"the README pipes into something this test does not run: {command}"
    return "".join(lines), out.returncode


def test_the_samples_are_what_the_commands_print(tree, tmp_path):
    """The README's samples were taken on a small VM; `hosts.small_vm` is that machine as a fixture
    (pci.ids with the one vendor line the samples show). Every sample is what the command prints
    there, byte for byte, exit status included."""
    hosts.small_vm(tree)
    ids = tmp_path / "pci.ids"
    ids.write_text("8086  Intel Corporation\n\t1234  Some other device\n")
    paths = ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc), "--path.pci-ids", str(ids)]
    found = sessions()
    commands = [c for c, _ in found]
    assert "passthrough-exporter check" in commands and "echo $?" in commands  # the samples are still there
    assert "passthrough-exporter devices --available" in commands
    previous = 0
    for command, expected in found:
        got, previous = run_session(command, previous, paths)
        assert got == expected, command


def test_the_readme_names_the_lowest_supported_python_of_pyproject():
    pyproject = (TOP / "pyproject.toml").read_text()
    (lowest,) = re.findall(r'^requires-python = ">=(\d+\.\d+)"', pyproject, re.M)
    assert f"Python {lowest} or newer" in README.replace("\n", " ")
    assert "Debian 12 (bookworm, Python 3.11.2)" in README.replace("\n", " ")


DOCS = [README, *(p.read_text() for p in sorted((TOP / "docs").glob("*.md")))]


def test_every_cap_the_docs_name_is_accepted(tree):
    """`--cap net` was once promised for libvirt's own kinds; --cap takes the known types only."""
    named = {cap for text in DOCS for cap in re.findall(r"(?:--cap[ =]|[?&]cap=)([a-z_]+)", text)}
    assert "pci" in named  # the pattern still finds them
    for cap in sorted(named):
        out = subprocess.run([EXE, "devices", "--cap", cap, "--path.sysfs", str(tree.sys), "--path.procfs",
                              str(tree.proc)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (cap, out.stderr)


def test_check_json_is_the_layout_the_readme_gives(tree):
    hosts.small_vm(tree)
    out = subprocess.run([EXE, "check", "--json", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)],
                         capture_output=True, text=True, timeout=60)
    report = json.loads(out.stdout)
    text = " ".join(README.split("`--json` prints one object:", 1)[1].split("Findings are listed", 1)[0].split())
    for key in report:
        assert f"`{key}`" in text, key
    assert report["status"] in ("PASS", "WARN", "FAIL") and f"`{report['status']}`" in text
    assert '`{"check", "status", "findings"}`' in text
    finding = next(f for c in report["checks"] for f in c["findings"])
    assert all(set(c) == {"check", "status", "findings"} for c in report["checks"])
    for key in finding:
        assert f"`{key}`" in text, key


def test_the_readme_claims_no_notes_that_are_not_made():
    """Devices' `notes` say what a source filled from sysfs or inferred; assignments are not in them."""
    assert "listed in its notes" not in README
    assert "`assignment_conflict` finding names them all" in " ".join(README.split())
