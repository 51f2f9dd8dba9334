"""The container image without a container engine: the Dockerfile's syntax, what it builds (base as a
build argument, no compilers, no pip or pip cache in the image, stdout left buffered, non-root), that
its ENTRYPOINT, CMD and HEALTHCHECK are commands this checkout accepts, and that
deploy/container/build-local is sound shell. The image itself is built and run by build-local (it
downloads packages, so it is not a test here)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.client import free_port, request, wait_up
from tests.support.process import EXE

ROOT = Path(__file__).resolve().parents[1]
BUILD_LOCAL = ROOT / "deploy" / "container" / "build-local"
PORT = 9839

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; comments dropped."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, args = full.partition(" ")
        out.append((word, args.strip()))
    assert not pending, "dangling line continuation"
    return out


def test_dockerfile_syntax():
    steps = dockerfile()
    assert all(word in INSTRUCTIONS for word, _ in steps), [w for w, _ in steps if w not in INSTRUCTIONS]
    assert steps[0][0] in ("FROM", "ARG")
    for word, args in steps:
        if word in ("CMD", "ENTRYPOINT") or (word == "HEALTHCHECK" and "CMD [" in args):
            exec_form = args[args.index("["):] if word == "HEALTHCHECK" else args
            assert isinstance(json.loads(exec_form), list), (word, args)
    stages = [a.split() for w, a in steps if w == "FROM"]
    assert [s[0] for s in stages] == ["${BASE}"] * len(stages)
    copied_from = [a.split("--from=")[1].split()[0] for w, a in steps if w == "COPY" and "--from=" in a]
    named = {s[2] for s in stages if len(s) == 3 and s[1].upper() == "AS"}
    assert set(copied_from) <= named


def test_dockerfile_runs_unprivileged_on_host_sys():
    steps = dockerfile()
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("EXPOSE", str(PORT)) in final
    cmd = json.loads(dict(final)["CMD"])
    assert cmd[0] == "serve" and "--path.sysfs" in cmd and cmd[cmd.index("--path.sysfs") + 1] == "/host/sys"
    assert cmd[cmd.index("--web.listen-address") + 1] == f":{PORT}"
    assert "/healthz" in dict(final)["HEALTHCHECK"]
    # Everything the install copies exists, so the build context is complete.
    for w, a in steps:
        if w == "COPY" and "--from=" not in a:
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), src


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions cut into stages; [0] holds what comes before the first FROM."""
    out: list[list[tuple[str, str]]] = [[]]
    for word, args in dockerfile():
        if word == "FROM":
            out.append([])
        out[-1].append((word, args))
    return out


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def runs(stage: list[tuple[str, str]]) -> str:
    return "\n".join(a for w, a in stage if w == "RUN")


# --- what the Dockerfile builds ----------------------------------------------------------------

def test_base_image_is_a_build_argument_with_a_public_slim_default():
    before, *built = stages()
    args = dict(a.split("=", 1) for w, a in before if w == "ARG" and "=" in a)
    assert re.fullmatch(r"(debian:[a-z]+-slim|python:3\.\d+-slim(-[a-z]+)?)", args.get("BASE", "")), args
    froms = [a.split()[0] for st in built for w, a in st if w == "FROM"]
    assert len(froms) >= 2 and set(froms) == {"${BASE}"}  # every stage on the same base: the venv's python matches


def test_python_comes_from_the_base_or_from_debian():
    """A base with python3 (python:*-slim) is used as it is; a plain Debian root gets Debian's python3."""
    build, final = stages()[1], final_stage()
    assert "python3-venv" in runs(build) and "python3 -c" in runs(build)
    assert "command -v python3" in runs(final) and 'pkgs="$pkgs python3"' in runs(final)


def test_no_compilers_and_no_pip_in_the_image():
    everything = runs([s for st in stages() for s in st])
    installed = set(re.findall(r"apt-get install[^&;]*", everything))
    for words in installed:
        assert not re.search(r"\b(gcc|g\+\+|clang|build-essential|make|[\w.+-]+-dev)\b", words), words
    build = runs(stages()[1])
    # The wheels that would otherwise compile are refused as source; pip leaves with the build stage.
    assert re.search(r"--only-binary \S*lxml\S*", build) and "bcrypt" in build
    assert "pip uninstall -y pip" in build
    final = final_stage()
    assert [a for w, a in final if w == "COPY"] == ["--from=build /opt/passthrough-exporter /opt/passthrough-exporter"]
    assert "pip" not in runs(final)
    assert "rm -rf /var/lib/apt/lists/*" in runs(final)


def test_no_pip_cache():
    build = stages()[1]
    env = " ".join(a for w, a in build if w == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env or "--no-cache-dir" in runs(build)


def test_stdout_stays_buffered():
    """PYTHONUNBUFFERED makes `devices --json` 1.5x slower; logs go to stderr, which is line-buffered."""
    for word, args in dockerfile():
        assert "PYTHONUNBUFFERED" not in args, (word, args)


def test_pip_certificate_is_a_build_secret_not_a_layer():
    build = runs(stages()[1])
    assert "--mount=type=secret,id=pip-cert" in build
    assert all("pip-cert" not in a for w, a in dockerfile() if w in ("COPY", "ADD", "ENV"))


def test_dockerignore_keeps_what_the_build_copies():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.rstrip("/").split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(p, pat.rstrip("/")) or fnmatch.fnmatch(p, pat.replace("**/", ""))
                   for pat in patterns for p in prefixes)

    copied = [src for w, a in dockerfile() if w == "COPY" and "--from=" not in a for src in a.split()[:-1]]
    assert copied and not [src for src in copied if ignored(src)]
    for heavy in (".git", ".venv", "tests/", "benchmarks/"):
        assert ignored(heavy), heavy


# --- the image's commands, run by this checkout -------------------------------------------------

def image_command(final: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    d = dict(final)
    return json.loads(d["ENTRYPOINT"]), json.loads(d["CMD"])


def image_env(final: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for w, a in final:
        if w == "ENV":
            for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', a):
                env[m.group(1)] = m.group(2).strip('"')
    return env


def at_host(cmd: list[str], host) -> list[str]:
    """The command with its sysfs/procfs paths pointed at a fixture host, its state file beside it."""
    out, paths = list(cmd), {"--path.sysfs": str(host.sys), "--path.procfs": str(host.proc),
                             "--state.path": str(host.sys.parent / "state.json")}
    for i, word in enumerate(out[:-1]):
        if word in paths:
            out[i + 1] = paths[word]
    return out




def test_entrypoint_is_the_console_script_and_cmd_the_path_flags():
    entrypoint, cmd = image_command(final_stage())
    assert entrypoint == ["passthrough-exporter"]
    assert cmd[cmd.index("--path.sysfs") + 1] == "/host/sys"
    env = image_env(final_stage())
    assert env["PATH"].split(":")[0] == "/opt/passthrough-exporter/bin"


def test_image_cmd_serves_and_its_healthcheck_passes(host):
    """The image's CMD, verbatim but for the paths and a 127.0.0.1 port, serves; HEALTHCHECK sees it."""
    final = final_stage()
    _, cmd = image_command(final)
    port = free_port()
    # As build-local does: a later --web.listen-address wins, the image's own stays in place.
    args = [EXE, *at_host(cmd, host), "--web.listen-address", f"127.0.0.1:{port}"]
    env = {k: v for k, v in image_env(final).items() if k != "PATH"} | {"PATH": os.environ.get("PATH", "")}
    assert "PYTHONUNBUFFERED" not in env
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_up(port, proc=proc, timeout=15, log=lambda: "" if proc.poll() is None else proc.communicate()[1])
        body = request(port, "/metrics", timeout=5).body.decode()
        assert body.count('passthrough_device_info{') and 'device="pci_0000_01_00_0"' in body
        health = dict(final)["HEALTHCHECK"]
        check = json.loads(health[health.index("CMD [") + 4:])
        assert check[0] == "python3"
        script = check[-1].replace(":9839/", f":{port}/")
        assert script != check[-1]  # the probe asks the port the CMD listens on
        out = subprocess.run([sys.executable, *check[1:-1], script], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_image_path_flags_work_for_devices(host):
    """build-local runs `devices --cap pci` with the CMD's path flags: they must suit `devices` too."""
    _, cmd = image_command(final_stage())
    flags = []
    for i, word in enumerate(cmd[:-1]):
        if word in ("--path.sysfs", "--path.procfs"):
            flags += [word, cmd[i + 1]]
    assert flags[0] == "--path.sysfs"
    out = subprocess.run([EXE, "devices", "--cap", "pci", *at_host(flags, host)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    expected = sorted("pci_" + re.sub(r"[^A-Za-z0-9]", "_", p.name) for p in (host.sys / "bus/pci/devices").iterdir())
    assert sorted(out.stdout.split()) == expected


# --- deploy/container/build-local ---------------------------------------------------------------

def test_build_local_is_strict_executable_shell():
    text = BUILD_LOCAL.read_text()
    assert text.startswith("#!/bin/bash\n") and os.access(BUILD_LOCAL, os.X_OK)
    assert re.search(r"^set -eu", text, re.M)
    assert "trap cleanup EXIT" in text  # the server is killed and the image unmounted on every exit
    out = subprocess.run(["bash", "-n", str(BUILD_LOCAL)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_build_local_uses_what_the_image_says():
    text = BUILD_LOCAL.read_text()
    for field in (".Config.Entrypoint", ".Config.Cmd", ".Config.User", ".Config.Env"):
        assert field in text, field
    assert "chroot --userspec" in text and "podman mount" in text and "/sys/bus/pci/devices" in text
    assert "127.0.0.1" in text and "0.0.0.0" not in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_build_local_passes_shellcheck():
    out = subprocess.run(["shellcheck", "-S", "warning", str(BUILD_LOCAL)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
