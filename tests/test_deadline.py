"""One-shot commands end within --timeout with one line, whatever a plugin or a source does."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.support import hosts
from tests.support.process import EXE

HANGS = {
    # A rule that never returns, and swallows whatever would be raised in it to stop it.
    "in_a_hook": '''
        import time
        from passthrough_exporter import hookimpl

        @hookimpl
        def passthrough_verdict(device):
            while True:
                try:
                    time.sleep(3600)
                except BaseException:
                    pass
    ''',
    # A plugin module that hangs while it is imported, before the command line is even parsed.
    "at_import": '''
        import time
        time.sleep(3600)
        from passthrough_exporter import hookimpl

        @hookimpl
        def passthrough_verdict(device):
            return None
    ''',
}


def line(command: str, seconds: str = "2") -> str:
    return (f"passthrough-exporter: {command} did not finish within {seconds}s (--timeout): a source or a "
            "plugin did not answer\n")


@pytest.fixture
def hanging(tmp_path) -> dict[str, str]:
    """PYTHONPATH with the module `hangs.in_a_hook` and `hangs.at_import`."""
    pkg = tmp_path / "mods" / "hangs"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, source in HANGS.items():
        (pkg / f"{name}.py").write_text(textwrap.dedent(source))
    return {**os.environ, "PYTHONPATH": str(tmp_path / "mods")}


def run_timed(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60, env=env)
    return out, time.monotonic() - started


@pytest.mark.parametrize("command, code, module", [
    ("devices", 1, "in_a_hook"), ("check", 3, "in_a_hook"),
    ("devices", 1, "at_import"), ("check", 3, "at_import"), ("plugins", 1, "at_import"),
])
def test_a_plugin_that_hangs_is_given_up_on(tree, hanging, command, code, module):
    hosts.clean_host(tree)  # nothing else to say on stderr
    paths = [] if command == "plugins" else ["--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)]
    out, took = run_timed([command, "--timeout", "2s", "--plugin", f"hangs.{module}", *paths], hanging)
    assert (out.returncode, out.stdout, out.stderr) == (code, "", line(command))
    assert 2 <= took < 15


def test_textfile_gives_up_and_writes_nothing(tree, hanging, tmp_path):
    hosts.clean_host(tree)
    target = tmp_path / "out" / "passthrough.prom"
    target.parent.mkdir()
    out, took = run_timed(["textfile", str(target), "--timeout", "1500ms", "--plugin", "hangs.in_a_hook",
                           "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc)], hanging)
    assert (out.returncode, out.stderr) == (1, line("textfile", "1.5"))
    assert 1.5 <= took < 15
    assert not target.exists()


def test_a_command_done_in_time_is_not_touched(tree):
    hosts.clean_host(tree)
    out = subprocess.run([EXE, "devices", "--timeout", "30s", "--cap", "pci", "--path.sysfs", str(tree.sys),
                          "--path.procfs", str(tree.proc)], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.split() == ["pci_0000_00_00_0", "pci_0000_00_19_0", "pci_0000_00_1d_0", "pci_0000_3d_00_0"]


@pytest.mark.parametrize("command, code", [("devices", 2), ("check", 3)])
@pytest.mark.parametrize("value", ["0s", "soon", "-5m"])
def test_a_bad_timeout_is_a_usage_error(command, code, value):
    out = subprocess.run([EXE, command, f"--timeout={value}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == code and "argument --timeout:" in out.stderr


class SilentServer:
    """A unix socket that accepts every connection and never says a word: a stuck libvirtd."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(8)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("command, code", [("devices", 1), ("check", 3)])
def test_a_libvirt_that_never_answers_is_given_up_on(tree, command, code):
    pytest.importorskip("libvirt")
    hosts.clean_host(tree)
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # a socket's path has 107 bytes at most
        path = str(Path(short) / "libvirt.sock")
        server = SilentServer(path)
        try:
            out, took = run_timed([command, "--timeout", "2s", "--source", "libvirt", "--libvirt.uri",
                                   f"qemu+unix:///system?socket={path}", "--path.sysfs", str(tree.sys),
                                   "--path.procfs", str(tree.proc)])
        finally:
            server.close()
    assert server.held, "the client never connected"
    assert (out.returncode, out.stdout, out.stderr) == (code, "", line(command))
    assert 2 <= took < 15
