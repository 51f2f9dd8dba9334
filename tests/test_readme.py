"""The README's first commands, the samples of the README and the docs, and their links say what the
code and the repository hold."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.support import hosts
from tests.support.client import request
from tests.support.process import EXE, exporter

TOP = Path(__file__).resolve().parents[1]
README = (TOP / "README.md").read_text()
PAGES = sorted((TOP / "docs").glob("*.md"))
CLI = (TOP / "docs" / "cli.md").read_text()
SOURCES = (TOP / "docs" / "sources.md").read_text()
# The pages whose `$ command` samples were taken on the small VM (the plugin guide's are not).
SAMPLED = {"README.md": README, "docs/cli.md": CLI}


def first_commands() -> list[str]:
    block = README.split("```sh\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_starts_with_two_commands_and_ci_runs_the_second():
    setup, tests = first_commands()
    assert setup.startswith(".ci/setup && ") and setup.endswith(" serve")
    assert tests == ".ci/setup --test && .venv/bin/python -m pytest"
    run = (TOP / ".ci/run").read_text().splitlines()
    assert run[-1] == tests


def sessions(text: str) -> list[tuple[str, str]]:
    """Every `$ command` of a page's code blocks with the output printed under it."""
    out = []
    for block in re.findall(r"^```\n(\$ .*?)^```$", text, re.M | re.S):
        for session in re.split(r"^(?=\$ )", block, flags=re.M):
            if session:
                command, _, output = session.partition("\n")
                out.append((command[2:], output))
    return out


def run_session(command: str, previous_exit: int, paths: list[str], served) -> tuple[str, int]:
    """`passthrough-exporter ARGS [| head -N | grep -e TEXT ...]` with `paths` after the command word,
    `curl -s http://localhost:9839/PATH [| ...]` answered by `served()` (the port of a `serve` given
    the same `paths`), or `echo $?`: what a shell would print, and the exit status."""
    if command == "echo $?":
        return f"{previous_exit}\n", 0
    words = shlex.split(command)
    pipe = words.index("|") if "|" in words else len(words)
    if words[0] == "curl":
        assert pipe == 3 and words[1] == "-s", command  # curl -s URL [| ...]
        url = urlsplit(words[pipe - 1])
        assert url.netloc == "localhost:9839", command  # the port `serve` answers on by default
        answer = request(served(), url.path)
        assert answer.status == 200, command
        lines, returncode = answer.body.decode().splitlines(keepends=True), 0
    else:
        assert words[0] == "passthrough-exporter", command
        out = subprocess.run([EXE, words[1], *paths, *words[2:pipe]], capture_output=True, text=True, timeout=60)
        lines, returncode = out.stdout.splitlines(keepends=True), out.returncode
    filter_words = words[pipe + 1:]
    if filter_words[:1] == ["head"]:
        lines = lines[:int(filter_words[1].removeprefix("-"))]
    elif filter_words[:1] == ["grep"]:
        needles = [w for i, w in enumerate(filter_words) if i and filter_words[i - 1] == "-e"]
        lines = [line for line in lines if any(n in line for n in needles)]
    else:
        assert not filter_words, f"a sample pipes into something this test does not run: {command}"
    return "".join(lines), returncode


def test_the_samples_are_what_the_commands_print(tree, tmp_path):
    """The samples of the README and of docs/cli.md were taken on a small VM; `hosts.small_vm` is that
    machine as a fixture (pci.ids with the one vendor line the samples show). Every sample is what the
    command prints there, byte for byte, exit status included; `curl` samples are answered by `serve`
    on the same fixture."""
    hosts.small_vm(tree)
    ids = tmp_path / "pci.ids"
    ids.write_text("8086  Intel Corporation\n\t1234  Some other device\n")
    # The VM's own state file, as it was on the first boot with the exporter: none yet.
    paths = ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc), "--path.pci-ids", str(ids),
             "--state.path", str(tmp_path / "state.json")]
    found = {page: sessions(text) for page, text in SAMPLED.items()}
    commands = {page: [c for c, _ in pairs] for page, pairs in found.items()}
    # The samples are still there: the tour in the README, the whole of them in the CLI's page.
    assert "passthrough-exporter devices --passthrough" in commands["README.md"]
    assert any(c.startswith("curl ") for c in commands["README.md"])
    assert "passthrough-exporter check" in commands["docs/cli.md"] and "echo $?" in commands["docs/cli.md"]
    assert "passthrough-exporter devices --available" in commands["docs/cli.md"]
    # No other page has samples this test leaves out, but the plugin guide's (a host with its example plugin).
    unchecked = {p.relative_to(TOP).as_posix() for p in PAGES if sessions(p.read_text())} - set(SAMPLED)
    assert unchecked == {"docs/plugins.md"}
    with contextlib.ExitStack() as stack:
        port = None

        def served() -> int:
            nonlocal port
            if port is None:
                port = stack.enter_context(exporter(tree.sys, tree.proc, "--path.pci-ids", str(ids))).port
            return port

        for page, pairs in found.items():
            previous = 0
            for command, expected in pairs:
                got, previous = run_session(command, previous, paths, served)
                assert got == expected, (page, command)


def test_the_readme_names_the_lowest_supported_python_of_pyproject():
    pyproject = (TOP / "pyproject.toml").read_text()
    (lowest,) = re.findall(r'^requires-python = ">=(\d+\.\d+)"', pyproject, re.M)
    assert f"Python {lowest} or newer" in README.replace("\n", " ")
    assert "Debian 12 (bookworm, Python 3.11.2)" in README.replace("\n", " ")


DOCS = [README, *(p.read_text() for p in PAGES)]


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
    text = " ".join(CLI.split("`--json` prints one object:", 1)[1].split("Findings are listed", 1)[0].split())
    for key in report:
        assert f"`{key}`" in text, key
    assert report["status"] in ("PASS", "WARN", "FAIL") and f"`{report['status']}`" in text
    assert '`{"check", "status", "findings"}`' in text
    finding = next(f for c in report["checks"] for f in c["findings"])
    assert all(set(c) == {"check", "status", "findings"} for c in report["checks"])
    for key in finding:
        assert f"`{key}`" in text, key


def test_the_docs_claim_no_notes_that_are_not_made():
    """Devices' `notes` say what a source filled from sysfs or inferred; assignments are not in them."""
    assert all("listed in its notes" not in text for text in DOCS)
    assert "`assignment_conflict` finding names them all" in " ".join(SOURCES.split())


def anchors_and_links(text: str) -> tuple[set[str], list[str]]:
    """A page's heading anchors, as GitHub makes them (lower case, punctuation dropped, spaces to
    hyphens, `-1`, `-2` for repeats), and the targets of its inline links and images, code left out."""
    prose, anchors, seen = [], set(), {}
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            prose.append("")
            continue
        if fenced:
            prose.append("")
            continue
        prose.append(line)
        if m := re.match(r"#{1,6} +(.+?) *$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    plain = re.sub(r"`[^`]*`", "", "\n".join(prose))  # code spans may hold `](`
    return anchors, re.findall(r"\]\(([^()\s]+)\)", plain)


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file does not exist, or whose #anchor is no heading there."""
    broken = []
    for target in anchors_and_links(page.read_text())[1]:
        url = urlsplit(target)
        if url.scheme or url.netloc:
            continue  # a web address: not this repository's to check
        path = (page.parent / unquote(url.path)).resolve() if url.path else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif url.fragment and (path.suffix != ".md" or url.fragment not in anchors_and_links(path.read_text())[0]):
            broken.append(f"{target}: no heading #{url.fragment} in {path.name}")
    return broken


def test_every_relative_link_of_the_readme_and_the_docs_leads_somewhere():
    pages = [TOP / "README.md", *PAGES]
    assert len(pages) >= 10 and len(anchors_and_links(README)[1]) >= 10  # the pages and their links are found
    broken = {p.relative_to(TOP).as_posix(): b for p in pages if (b := broken_links(p))}
    assert not broken, broken


def test_the_readme_links_every_page_of_the_docs():
    linked = {(TOP / urlsplit(t).path).resolve() for t in anchors_and_links(README)[1] if not urlsplit(t).scheme}
    assert [p.name for p in PAGES if p.resolve() not in linked] == []


def test_the_link_check_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading (here)\n\n## A `code` heading (here)\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-code-heading-here-1) [ok](#page) `[not a link](gone.md)`\n"
                    "[gone](gone.md) [no heading](other.md#nowhere)\n```\n[in code](gone2.md)\n```\n")
    assert broken_links(page) == ["gone.md: no such file", "other.md#nowhere: no heading #nowhere in other.md"]
