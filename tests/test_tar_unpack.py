"""The capture unpacker (`diff`'s, and the tests') refuses what tarfile's "data" filter refuses, also on
Pythons without the filter (Debian 12's 3.11.2): each test runs as the unpacker runs on this Python
(with the filter where tarfile has it) and with the filter taken away."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from passthrough_exporter.commands import unpack as tar_unpack
from passthrough_exporter.commands.unpack import UnsafeMember


def unpack(archive: Path, dest: Path) -> Path:
    tar_unpack.unpack(archive, dest)
    return dest


@pytest.fixture(params=["as on this Python", "without the data filter"])
def mode(request, monkeypatch):
    if request.param == "without the data filter":  # as on Python 3.11.2, which extracts fully trusted
        trusted = "fully_trusted" if hasattr(tarfile, "fully_trusted_filter") else None
        monkeypatch.setattr(tar_unpack, "FILTER", trusted)
    return request.param


def archive(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def entry(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info, (b"x\n" if kind == tarfile.REGTYPE else None)


GOOD = (entry("sys", tarfile.DIRTYPE, mode=0o755), entry("sys/bus", tarfile.DIRTYPE, mode=0o755),
        entry("sys/devices", tarfile.DIRTYPE, mode=0o755), entry("sys/devices/vendor"),
        entry("sys/bus/dev", tarfile.SYMTYPE, link="../devices"))


def test_a_snapshot_shaped_archive_unpacks_with_its_links(tmp_path, mode):
    dest = unpack(archive(tmp_path / "a.tar.gz", *GOOD), tmp_path / "out")
    assert (dest / "sys/bus/dev/vendor").read_text() == "x\n"
    assert os.readlink(dest / "sys/bus/dev") == "../devices"
    st = (dest / "sys/devices/vendor").stat()
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


@pytest.mark.parametrize("bad, why", [
    (entry("/tmp/pt-unpack-evil"), "absolute member name"),
    (entry("sys/../../pt-unpack-evil"), "member name contains '..'"),
    (entry("sys/up", tarfile.SYMTYPE, link="../../.."), "link target ../../.. leaves the destination"),
    (entry("sys/etc", tarfile.SYMTYPE, link="/etc"), "absolute link target /etc"),
    (entry("sys/null", tarfile.CHRTYPE), "not a regular file, directory or symbolic link"),
    (entry("sys/sda", tarfile.BLKTYPE), "not a regular file, directory or symbolic link"),
    (entry("sys/fifo", tarfile.FIFOTYPE), "not a regular file, directory or symbolic link"),
    (entry("sys/hard", tarfile.LNKTYPE, link="sys/devices/vendor"), "not a regular file, directory or symbolic link"),
    # A link given again could be replaced by one the first check never saw: refused.
    (entry("sys/bus/dev", tarfile.SYMTYPE, link="../devices"), "link given twice"),
])
def test_unsafe_members_are_refused(tmp_path, mode, bad, why):
    path = archive(tmp_path / "bad.tar.gz", *GOOD, bad)
    with pytest.raises(UnsafeMember) as err:
        unpack(path, tmp_path / "out")
    assert str(err.value) == f"{bad[0].name}: {why}"
    assert not Path("/tmp/pt-unpack-evil").exists() and not (tmp_path / "pt-unpack-evil").exists()


def test_no_member_is_written_through_a_link_leaving_the_destination(tmp_path, mode):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "sys").symlink_to(outside)  # already there before the unpack
    with pytest.raises(UnsafeMember) as err:
        unpack(archive(tmp_path / "a.tar.gz", entry("sys/vendor")), dest)
    assert str(err.value) == "sys/vendor: would be written outside the destination"
    assert list(outside.iterdir()) == []


def test_setuid_and_world_writable_modes_are_dropped(tmp_path, mode):
    path = archive(tmp_path / "a.tar.gz", entry("suid", mode=0o4777), entry("group", mode=0o2775))
    dest = unpack(path, tmp_path / "out")
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "group").stat().st_mode) == 0o755
