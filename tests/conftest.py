from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Programs the set-up put beside this interpreter (`.ci/setup --test`: prometheus and promtool in
# .venv/bin) are found first, as in an activated venv.
_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = os.pathsep.join(filter(None, (_BIN, os.environ.get("PATH"))))

from sysfs_builder import SysfsTree  # noqa: E402

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


@pytest.fixture
def host(tree: SysfsTree) -> SysfsTree:
    """The desktop most tests serve: host bridge, a GPU with its audio function, a USB tree, `/` on an
    NVMe disk (a known root device: nothing else is held back for it)."""
    import hosts

    hosts.base(tree)
    hosts.desktop_gpu(tree)
    hosts.usb_tree(tree)
    hosts.nvme_lvm_root(tree)
    return tree


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not beside this checkout")
    return REALDATA
