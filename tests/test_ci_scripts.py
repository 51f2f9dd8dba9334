"""The set-up and check scripts are sound shell: shellcheck finds no warning in them."""

from __future__ import annotations

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
