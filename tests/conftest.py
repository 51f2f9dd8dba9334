"""Fixtures several test modules use: a fixture tree and the desktop host in it, the captured trees
beside the checkout, that host refreshed in this process, the real server started on 127.0.0.1, and
a self-signed certificate for it. The helpers they are made of are in tests/support."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.serving.refresher import Refresher
from passthrough_exporter.serving.server import ExporterServer
from passthrough_exporter.serving.webconfig import WebConfig
from tests.support import hosts
from tests.support.local import inspector, local_refresher, serve_quick
from tests.support.sysfs_builder import SysfsTree

# Programs the set-up put beside this interpreter (`.ci/setup --test`: prometheus and promtool in
# .venv/bin) are found first, as in an activated venv.
_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = os.pathsep.join(filter(None, (_BIN, os.environ.get("PATH"))))

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


@pytest.fixture
def refresher(host: SysfsTree) -> Refresher:
    """`host` read, judged and rendered once, by a Refresher whose worker is in this process."""
    r = local_refresher(SysfsSource(str(host.sys), str(host.proc)), inspector(), interval=3600)
    r.refresh()
    return r


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `server.crt` and `server.key`: a self-signed certificate for 127.0.0.1 (CN
    localhost), made once per run."""
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "server.key"),
                    "-out", str(d / "server.crt")], check=True, capture_output=True, timeout=60)
    return d


@pytest.fixture
def start_server() -> Iterator[Callable[..., ExporterServer]]:
    """start_server(refresher, web=None, **kw): the real server on 127.0.0.1 in a thread of this
    process (`kw` as ExporterServer takes them); every one started is shut down after the test."""
    started: list[ExporterServer] = []

    def start(refresher: Refresher, web: WebConfig | None = None, **kw: Any) -> ExporterServer:
        httpd = serve_quick(refresher, web, **kw)
        started.append(httpd)
        return httpd

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()
