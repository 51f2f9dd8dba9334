from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sysfs_builder import SysfsTree  # noqa: E402

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    return SysfsTree(tmp_path / "host")


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not beside this checkout")
    return REALDATA
