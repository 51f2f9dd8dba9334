"""The files `textfile` and `capture --output` write: created exclusively beside the target, never
through a link, renamed only over a regular file or nothing; `-` is standard output; a directory
that other users can change is refused; a capture never holds the bytes of a file outside the tree,
and no log line quotes a file's content."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from passthrough_exporter.commands.cli import write_atomically
from passthrough_exporter.commands import unpack as tar_unpack
from tests.support import hosts
from tests.support.process import EXE
from tests.support.sysfs_builder import SysfsTree

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: other users, device nodes")

# Run as uid 65534: swap every temp file of `prefix` in DIR for a symlink to SECRET, until killed.
# rename() of a fresh link over the name: the swap is atomic, the writer never sees the name missing.
_SWAPPER = r"""
import os, sys
d, prefix, secret = sys.argv[1:4]
print("ready", flush=True)
n = 0
while True:
    for name in os.listdir(d):
        if name.startswith(prefix) and name.endswith(".tmp"):
            link = os.path.join(d, f"x{n}")
            n += 1
            try:
                os.symlink(secret, link)
                os.rename(link, os.path.join(d, name))
            except OSError:
                try:
                    os.unlink(link)
                except OSError:
                    pass
"""


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory uid 65534 can walk (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="pt-files-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A stand-in for /etc/shadow: root's, mode 0600, in a directory of its own."""
    path = tmp_path / "vault" / "shadow"
    path.parent.mkdir()
    path.write_text("root:SECRET-TOKEN:19000::::::\n")
    path.chmod(0o600)
    return path


def _race(outdir: Path, secret: Path, *, rounds: int = 200, seconds: float = 20.0) -> dict[str, int]:
    """Root writes outdir/passthrough.prom again and again while uid 65534 swaps its temp files for
    links to `secret`. Stops at the first round the secret's mode changed."""
    target = outdir / "passthrough.prom"
    # `-I -S`: the base interpreter alone, nothing of this checkout (uid 65534 may not read it).
    swapper = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         sys.executable, "-I", "-S", "-c", _SWAPPER, str(outdir), ".passthrough.prom.", str(secret)],
        stdout=subprocess.PIPE, text=True)
    stats = {"rounds": 0, "written": 0, "refused": 0, "failed": 0, "chmodded": 0, "published_link": 0}
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == "ready\n"
        deadline = time.monotonic() + seconds
        while stats["rounds"] < rounds and time.monotonic() < deadline:
            stats["rounds"] += 1
            try:
                write_atomically(str(target), b"passthrough_up 1\n")
                stats["written"] += 1
            except OSError as exc:
                stats["refused" if "other users" in str(exc) else "failed"] += 1
            if stat.S_IMODE(secret.stat().st_mode) != 0o600:
                stats["chmodded"] += 1
            if target.is_symlink():
                stats["published_link"] += 1
            if stats["chmodded"]:
                break
    finally:
        swapper.kill()
        swapper.wait()
    return stats


def test_swapped_temp_file_cannot_chmod_a_secret_in_a_directory_others_can_write(public_dir, secret):
    outdir = public_dir / "textfile"
    outdir.mkdir()
    outdir.chmod(0o777)  # writable by uid 65534, not sticky
    stats = _race(outdir, secret)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600, stats
    assert stats["chmodded"] == 0 and stats["published_link"] == 0, stats
    # Refused before anything is written: no temp file, no target.
    assert stats["refused"] == stats["rounds"] and stats["written"] == 0, stats
    assert not [n for n in os.listdir(outdir) if not n.startswith("x")]


def test_swapped_temp_file_cannot_chmod_a_secret_in_a_sticky_root_directory(public_dir, secret):
    outdir = public_dir / "tmp"
    outdir.mkdir()
    outdir.chmod(0o1777)  # like /tmp: others create files, but cannot rename or remove root's
    stats = _race(outdir, secret)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600, stats
    assert stats["chmodded"] == 0 and stats["published_link"] == 0, stats
    assert stats["written"] == stats["rounds"], stats
    target = outdir / "passthrough.prom"
    assert stat.S_ISREG(target.lstat().st_mode) and target.read_bytes() == b"passthrough_up 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_mode_is_set_on_the_descriptor_even_where_the_directory_check_is_bypassed(public_dir, secret, monkeypatch):
    """The second wall: were a directory others can write let through, a swapped temp file still
    gets no chmod (fchmod on the descriptor), so the secret keeps its mode."""
    from passthrough_exporter.commands import fileutil

    monkeypatch.setattr(fileutil, "check_directory", lambda st, directory: None)
    outdir = public_dir / "textfile"
    outdir.mkdir()
    outdir.chmod(0o777)
    stats = _race(outdir, secret, rounds=100)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600, stats
    assert stats["chmodded"] == 0 and stats["rounds"] == 100, stats


def test_a_temp_file_swapped_while_writing_is_neither_chmodded_nor_published(tmp_path, secret):
    """The same swap, made at a known moment (as the directory's owner could): the mode goes to our
    descriptor, and a temp name that no longer holds our file is not renamed over the target."""
    from passthrough_exporter.commands.fileutil import RefusedPath, atomic_file

    outdir = tmp_path / "out"
    outdir.mkdir()
    target = outdir / "passthrough.prom"
    target.write_text("old\n")
    with pytest.raises(RefusedPath, match="was replaced while writing"):
        with atomic_file(str(target)) as f:
            f.write(b"new\n")
            (tmp,) = [n for n in os.listdir(outdir) if n.endswith(".tmp")]
            (outdir / "link").symlink_to(secret)
            os.rename(outdir / "link", outdir / tmp)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert os.listdir(outdir) == ["passthrough.prom"] and target.read_text() == "old\n"


def test_textfile_refuses_a_directory_others_can_write_in_one_line(host, public_dir):
    for mode, uid in ((0o777, 0), (0o775, 0), (0o755, NOBODY)):
        outdir = public_dir / f"d{mode:o}-{uid}"
        outdir.mkdir()
        outdir.chmod(mode)
        os.chown(outdir, uid, 0)
        out = subprocess.run([EXE, "textfile", str(outdir / "x.prom"), "--path.sysfs", str(host.sys),
                              "--path.procfs", str(host.proc)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith(f"passthrough-exporter: cannot write {outdir}/x.prom: {outdir} ")
        assert "could swap files in it" in out.stderr
        assert os.listdir(outdir) == []


def test_textfile_refuses_a_directory_below_one_another_user_owns(host, public_dir, secret):
    """root's own `sub` inside nobody's `nob`: nobody can rename `sub` and put a link to a root-only
    directory in its place, so every component of the path is checked, not only the last one."""
    nob = public_dir / "nob"
    nob.mkdir()
    os.chown(nob, NOBODY, 0)
    (nob / "sub").mkdir()
    out = subprocess.run([EXE, "textfile", str(nob / "sub" / "x.prom"), "--path.sysfs", str(host.sys),
                          "--path.procfs", str(host.proc)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert f": {nob} belongs to uid {NOBODY}, who could swap files in it" in out.stderr
    assert os.listdir(nob / "sub") == []


# --- what is at the target: only a regular file (or nothing) is replaced --------------------------

def _make(kind: str, path: Path, elsewhere: Path) -> None:
    if kind == "regular":
        path.write_text("old content\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        elsewhere.write_text("keep me\n")
        path.symlink_to(elsewhere)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a /dev/null of our own, in a temp dir
    else:
        assert kind == "missing"


def _unchanged(kind: str, path: Path, elsewhere: Path) -> None:
    st = path.lstat()
    test = {"fifo": stat.S_ISFIFO, "symlink": stat.S_ISLNK, "directory": stat.S_ISDIR, "device": stat.S_ISCHR}[kind]
    assert test(st.st_mode), kind
    if kind == "symlink":
        assert os.readlink(path) == str(elsewhere) and elsewhere.read_text() == "keep me\n"
    if kind == "device":
        assert st.st_rdev == os.makedev(1, 3)
    if kind == "directory":
        assert os.listdir(path) == []


REFUSED = {"fifo": "a FIFO", "symlink": "a symlink", "directory": "a directory", "device": "a device node"}


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "device", "regular", "missing"])
def test_textfile_target(host, tmp_path, kind):
    outdir, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    outdir.mkdir()
    target = outdir / "passthrough.prom"
    _make(kind, target, elsewhere)
    out = subprocess.run([EXE, "textfile", str(target), "--path.sysfs", str(host.sys), "--path.procfs",
                          str(host.proc)], capture_output=True, text=True, timeout=60)
    assert sorted(os.listdir(outdir)) == ["passthrough.prom"]  # no temp file left behind
    if kind in REFUSED:
        assert out.returncode == 1
        assert out.stderr == (f"passthrough-exporter: cannot write {target}: it is {REFUSED[kind]}, "
                              "not replaced; give a regular file's name\n")
        _unchanged(kind, target, elsewhere)
        return
    assert out.returncode == 0, out.stderr
    st = target.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644  # a timer rewrites it each run
    assert target.read_text().startswith("# HELP passthrough_device_info")


def test_textfile_dash_is_standard_output(host, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = subprocess.run([EXE, "textfile", "-", "--path.sysfs", str(host.sys), "--path.procfs", str(host.proc)],
                         capture_output=True, text=True, timeout=60, cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# HELP passthrough_device_info") and out.stdout.endswith("\n")
    assert os.listdir(cwd) == []  # no file named `-`


def _capture(tree: SysfsTree, output: str | Path, *extra: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "capture", "--output", str(output), "--path.sysfs", str(tree.sys),
                           "--path.procfs", str(tree.proc), *extra], capture_output=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "device", "regular", "missing"])
def test_capture_output_target(tree, tmp_path, kind, force):
    hosts.base(tree)
    outdir, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    outdir.mkdir()
    target = outdir / "host.tar.gz"
    _make(kind, target, elsewhere)
    out = _capture(tree, target, *(["--force"] if force else []))
    stderr = out.stderr.decode()
    assert sorted(os.listdir(outdir)) == ["host.tar.gz"]
    if kind in REFUSED:
        assert out.returncode == 1
        assert stderr == (f"passthrough-exporter: cannot write {target}: it is {REFUSED[kind]}, "
                          "not replaced; give a regular file's name\n")
        _unchanged(kind, target, elsewhere)
    elif kind == "regular" and not force:
        assert out.returncode == 1 and stderr == f"passthrough-exporter: {target} exists; use --force to overwrite it\n"
        assert target.read_text() == "old content\n"
    else:
        assert out.returncode == 0, stderr
        assert stat.S_ISREG(target.lstat().st_mode) and tarfile.is_tarfile(target)
        assert out.stdout.decode().startswith(f"wrote {target}: ")


def test_capture_output_dash_is_standard_output(tree, tmp_path):
    hosts.base(tree)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = _capture(tree, "-", cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert os.listdir(cwd) == []  # no file named `-`
    archive = tmp_path / "from-stdout.tar.gz"
    archive.write_bytes(out.stdout)
    summary = out.stderr.decode().splitlines()[-1]  # beside the archive, on standard error
    assert summary.startswith("wrote standard output: ") and summary.split()[-3] == str(len(out.stdout))
    copy = tmp_path / "unpacked"
    tar_unpack.unpack(archive, copy)
    assert (copy / "sys" / "devices").is_dir()


# --- capture: a link is archived as a link, never with its target's bytes; logs quote no content ----

def _devices(sysfs: Path, procfs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "devices", "--json", "--path.sysfs", str(sysfs), "--path.procfs", str(procfs)],
                          capture_output=True, text=True, timeout=120)


def test_capture_archives_a_link_out_of_the_tree_as_a_link_and_quotes_nothing(host, tmp_path):
    outside = tmp_path / "elsewhere" / "secret"  # beside the tree, not in it
    outside.parent.mkdir()
    outside.write_text("SECRET-TOKEN\n")
    outside.chmod(0o600)
    audio, gpu = host.pci_path("0000:01:00.1"), host.pci_path("0000:01:00.0")
    (audio / "vendor").unlink()
    (audio / "vendor").symlink_to(outside)  # an identity attribute: the device is skipped
    (gpu / "numa_node").unlink()
    (gpu / "numa_node").symlink_to(outside)  # an optional one: left empty, with a warning
    (gpu / "power_state").write_text("INTREE-GARBAGE\n")  # garbage inside the tree: warned, not quoted
    (gpu / "subsystem_vendor").unlink()
    (gpu / "subsystem_vendor").symlink_to("vendor")  # a link inside the tree: kept as that link

    original = _devices(host.sys, host.proc)
    assert original.returncode == 0, original.stderr
    assert "pci_0000_01_00_1" not in original.stdout and "skipped" in original.stderr
    archive = tmp_path / "host.tar.gz"
    out = _capture(host, archive)
    assert out.returncode == 0, out.stderr
    for stderr in (original.stderr, out.stderr.decode()):
        assert "SECRET-TOKEN" not in stderr and "INTREE-GARBAGE" not in stderr
    assert "not a 4-digit hex number (12 characters)" in original.stderr

    import gzip
    assert b"SECRET-TOKEN" not in gzip.decompress(archive.read_bytes())  # no member, name or header
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    rel = lambda p: "sys/" + str(p.relative_to(host.sys))  # noqa: E731
    vendor = members[rel(audio / "vendor")]
    assert vendor.issym() and vendor.linkname == "secret"  # points nowhere in the archive
    assert members[rel(gpu / "numa_node")].issym()
    sub = members[rel(gpu / "subsystem_vendor")]
    assert sub.issym() and sub.linkname == "vendor" and members[rel(gpu / "vendor")].isfile()

    copy = tmp_path / "unpacked"
    tar_unpack.unpack(archive, copy)
    again = _devices(copy / "sys", copy / "proc")
    assert again.returncode == 0, again.stderr
    assert again.stdout == original.stdout  # the same devices, the same fields
    assert "SECRET-TOKEN" not in again.stderr


def test_capture_never_archives_bytes_read_through_a_link_it_cannot_place(tree, tmp_path):
    """A link in the tree to a file outside it, even one the trace only learns about by reading:
    the plan keeps the bytes only under the file the read opened, if that is in the tree."""
    from passthrough_exporter.commands.capture import plan
    from passthrough_exporter.reading.sysfs import Reader, Trace

    hosts.base(tree)
    secret_file = tmp_path / "secret"
    secret_file.write_text("SECRET-TOKEN\n")
    inside = tree.pci_path("0000:00:00.0")
    (inside / "label").symlink_to(secret_file)
    trace = Trace()
    reader = Reader(str(tree.sys), str(tree.proc), trace)
    assert reader.attr(str(inside / "label")) == "SECRET-TOKEN" and reader.attr(str(inside / "vendor")) == "0x8086"
    entries = plan(str(tree.sys), str(tree.proc), trace)
    assert not any(b"SECRET-TOKEN" in e.data for e in entries.values())
    name = "sys/" + str((inside / "label").relative_to(tree.sys))
    assert entries[name].kind == "link" and entries[name].target == "secret"
    assert entries["sys/" + str((inside / "vendor").relative_to(tree.sys))].data.strip() == b"0x8086"


def test_capture_archives_no_bytes_of_a_hard_link_or_a_device_node_in_the_tree(tree, tmp_path):
    """Inside the tree, yet another file's bytes: a hard link to a secret outside it, and a device node
    of the test's own making (1:5, what /dev/zero is) as an attribute. Neither is archived as bytes."""
    from passthrough_exporter.commands.capture import plan
    from passthrough_exporter.reading.sysfs import Reader, Trace

    hosts.base(tree)
    secret_file = tmp_path / "secret"
    secret_file.write_text("SECRET-TOKEN\n")
    inside = tree.pci_path("0000:00:00.0")
    os.link(secret_file, inside / "label")
    os.mknod(inside / "index", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    trace = Trace()
    reader = Reader(str(tree.sys), str(tree.proc), trace)
    assert reader.attr(str(inside / "label")) == "SECRET-TOKEN"
    assert reader.read_bytes(str(inside / "index"), 16) == bytes(16)
    entries = plan(str(tree.sys), str(tree.proc), trace)
    assert not any(b"SECRET-TOKEN" in e.data or e.data == bytes(16) for e in entries.values())
