"""The set-up and check scripts are sound shell (shellcheck finds no warning in them), and .ci/setup makes
the venv with Debian's python3 and keeps its stdout for the commands after it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CI = Path(__file__).resolve().parents[1] / ".ci"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", ["setup", "run", "fresh-debian"])
def test_ci_script_passes_shellcheck(script):
    out = subprocess.run(["shellcheck", "-S", "warning", str(CI / script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout


# --- .ci/setup's interpreter and its stdout ----------------------------------------------------
# Run on a copy of the script in an empty directory, with dpkg-query answering "installed" and
# python3, apt-get and apt-cache on PATH replaced by stubs that leave a mark: nothing is installed.

STUBS = {
    "dpkg-query": "printf 'install ok installed'",
    "python3": 'echo "$0" >> "$MARKS"; exit 1',
    "apt-get": 'echo "$0" >> "$MARKS"; exit 1',
    "apt-cache": 'echo "$0" >> "$MARKS"; exit 1',
}


def run_setup(tmp_path: Path, venv: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    checkout, stubs, marks = tmp_path / "checkout", tmp_path / "stubs", tmp_path / "marks"
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy(CI / "setup", checkout / ".ci" / "setup")
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    for name, text in (venv or {}).items():
        path = checkout / ".venv" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "MARKS": str(marks)}
    return subprocess.run(["sh", str(checkout / ".ci" / "setup")], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)


debian_python = pytest.mark.skipif(
    not Path("/usr/bin/python3").exists()
    or subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True).returncode != 0,
    reason="no /usr/bin/python3 with venv",
)


@debian_python
def test_setup_makes_the_venv_with_usr_bin_python3_not_the_first_python3_on_path(tmp_path):
    out = run_setup(tmp_path)
    # The venv is made, then pip fails: the empty directory is no project. Nothing reached stdout.
    assert out.returncode != 0 and out.stdout == ""
    assert "==> creating .venv with Python 3." in out.stderr and "(/usr/bin/python3)" in out.stderr
    cfg = (tmp_path / "checkout" / ".venv" / "pyvenv.cfg").read_text().splitlines()
    assert "home = /usr/bin" in cfg
    assert not (tmp_path / "marks").exists()  # neither the stub python3 nor apt was run


@debian_python
def test_setup_prints_only_to_stderr_and_warns_of_a_venv_made_elsewhere(tmp_path):
    out = run_setup(tmp_path, venv={
        "pyvenv.cfg": "home = /opt/another-python/bin\n",
        "bin/python": "#!/bin/sh\n",
        "bin/pip": "#!/bin/sh\necho 'Successfully installed passthrough-exporter-0.1.0'\n",
        "bin/passthrough-exporter": "#!/bin/sh\necho 'passthrough-exporter 0.1.0'\n",
    })
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""  # `.ci/setup && passthrough-exporter devices`: stdout is the device list alone
    assert "Successfully installed passthrough-exporter-0.1.0" in out.stderr
    assert ("==> warning: .venv was not made with /usr/bin/python3 (/opt/another-python/bin); remove "
            ".venv and run this again to remake it") in out.stderr
    assert out.stderr.rstrip().endswith("==> set up: .venv/bin/passthrough-exporter 0.1.0")
    assert not (tmp_path / "marks").exists()
