"""`passthrough-exporter diff`: two host roots or captures, one line per change, exit 0/1/2."""

from __future__ import annotations

import json
import subprocess

from tests.support import hosts
from tests.support.process import EXE
from tests.support.sysfs_builder import SysfsTree


def diff(*args):
    return subprocess.run([EXE, "diff", *map(str, args)], capture_output=True, text=True, timeout=60)


def _host(path, product: int) -> SysfsTree:
    tree = SysfsTree(path)
    hosts.base(tree)
    tree.pci("0000:03:00.0", 0x144D, product, 0x010802, group=7)
    return tree


def test_roots_and_captures(tmp_path):
    a, b = _host(tmp_path / "a", 0xA80A), _host(tmp_path / "b", 0xA808)
    out = diff(a.root, a.root)
    assert (out.returncode, out.stdout) == (0, "")
    out = diff(a.root, b.root)  # the NVMe at 03:00.0: a 970 EVO Plus, then a 980 PRO
    assert (out.returncode, out.stdout) == (1, "pci_0000_03_00_0: replaced: 144d:a80a -> 144d:a808\n"), out.stderr
    archive = tmp_path / "b.tar.gz"
    cap = subprocess.run([EXE, "capture", "--path.sysfs", str(b.sys), "--path.procfs", str(b.proc), "-o", str(archive)],
                         capture_output=True, text=True, timeout=60)
    assert cap.returncode == 0, cap.stderr
    out = diff(a.root, archive, "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout) == [{"kind": "replaced", "subject": "pci_0000_03_00_0",
                                       "before": "144d:a80a", "after": "144d:a808"}]


def test_a_bad_input_is_a_usage_error(tmp_path):
    a = _host(tmp_path / "a", 0xA80A)
    assert diff(a.root, tmp_path / "nowhere").returncode == 2
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    out = diff(a.root, junk)
    assert out.returncode == 2 and "not a capture archive" in out.stderr
    assert diff(a.root).returncode == 2


def test_an_archive_with_a_link_out_of_it_is_a_usage_error(tmp_path):
    """The capture unpacker's checks (test_tar_unpack.py) stand behind `diff`: one line naming the member."""
    import tarfile

    a = _host(tmp_path / "a", 0xA80A)
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        link = tarfile.TarInfo("sys/up")
        link.type, link.linkname = tarfile.SYMTYPE, "../../.."
        tar.addfile(link)
    out = diff(a.root, evil)
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == (f"passthrough-exporter diff: {evil}: sys/up: link target ../../.. "
                                           "leaves the destination")


def test_an_archive_too_big_to_be_a_capture_is_refused_before_it_fills_the_disk(tmp_path, monkeypatch):
    """A small .tar.gz can hold gigabytes of zeros: the sizes its members declare are summed before
    anything of that size is written, and past the bound the answer is one line and exit 2."""
    import io
    import tarfile

    from passthrough_exporter.commands import diff, unpack

    monkeypatch.setattr(unpack, "MAX_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("sys/zeros")
        info.size = 2 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    try:
        diff._unpack(str(bomb), str(tmp_path / "out"))
    except diff.DiffInputError as exc:
        assert "not a capture archive" in str(exc) and "1 MiB" in str(exc)
    else:
        raise AssertionError("the archive was unpacked")
    assert not (tmp_path / "out" / "sys" / "zeros").exists()
