"""The build pyproject.toml describes, plus the commit: built from a git checkout, the wheel carries
passthrough_exporter/REVISION (read by buildinfo.py for --version and build_info), so an install
from a checkout still knows where it came from. PASSTHROUGH_EXPORTER_REVISION, when set, is taken
instead (a build without .git, such as the container's)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _buildinfo() -> ModuleType:
    """exporter/buildinfo.py on its own: the package's dependencies are not installed while building."""
    spec = importlib.util.spec_from_file_location("_buildinfo", HERE / "exporter" / "buildinfo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithRevision(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout's .git itself
            return
        info = _buildinfo()
        revision = os.environ.get("PASSTHROUGH_EXPORTER_REVISION", "").strip() or info.git_revision(HERE)
        if revision and info._SHA.fullmatch(revision):
            (Path(self.build_lib) / "passthrough_exporter" / info.REVISION_FILE).write_text(revision + "\n")


setup(cmdclass={"build_py": BuildPyWithRevision})
