from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sysfs_builder import SysfsTree  # noqa: E402

from passthrough_exporter.inspector import Inspector  # noqa: E402
from passthrough_exporter.snapshot import Snapshot  # noqa: E402
from passthrough_exporter.sources.sysfs import SysfsSource  # noqa: E402

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.fixture(autouse=True)
def _root_logger_restored():
    """A test that runs cli.main() in-process installs a handler on this test's captured stderr;
    later tests' log lines (a server thread's, say) would be written to it after it is closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    return SysfsTree(tmp_path / "host")


def judge_tree(tree: SysfsTree) -> Snapshot:
    return Inspector().judge(SysfsSource(str(tree.sys), str(tree.proc)).read())


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not beside this checkout")
    return REALDATA
