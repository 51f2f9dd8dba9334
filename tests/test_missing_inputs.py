"""A missing input is never taken for "nothing there": an empty or wrong sysfs is an error, a missing
procfs leaves the root device unknown (and storage held back), and before the first good refresh the
exporter says nothing about the host."""

from __future__ import annotations

import gzip
import subprocess
import tempfile
import time

from tests.support import hosts
from tests.support.client import free_port, request
from tests.support.process import EXE
from tests.support.sysfs_builder import SysfsTree

ROOT_UNKNOWN_LOG = "the root filesystem's device is unknown"


def run(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60)


def test_an_empty_or_wrong_sysfs_is_an_error_for_every_command(tmp_path):
    empty = tmp_path / "sys"
    empty.mkdir()
    for command, code in (("devices", 1), ("textfile", 1), ("check", 3)):
        extra = [str(tmp_path / "out.prom")] if command == "textfile" else []
        out = run(command, *extra, "--path.sysfs", str(empty), "--path.procfs", str(tmp_path))
        assert out.returncode == code, (command, out.stderr)
        assert out.stdout == "" and "Traceback" not in out.stderr
        assert out.stderr.splitlines()[-1] == (
            f"passthrough-exporter: --path.sysfs {empty} is not a sysfs: it has no devices/ directory (in a "
            "container, mount the host's /sys there, e.g. -v /sys:/host/sys:ro)")
    assert not (tmp_path / "out.prom").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert run("check", "--path.sysfs", str(a_file)).returncode == 3
    # procfs given for sysfs (the two paths swapped): it has bus/, but its bus/pci/devices is a file.
    out = run("check", "--path.sysfs", "/proc", "--path.procfs", "/sys")
    assert out.returncode == 3 and "--path.sysfs /proc is not a sysfs" in out.stderr and out.stdout == ""


def test_a_partial_capture_with_one_bus_is_a_sysfs(tmp_path):
    """Only bus/usb/devices (a capture of the USB tree alone): read for what it holds."""
    (tmp_path / "sys" / "bus" / "usb" / "devices").mkdir(parents=True)
    out = run("devices", "--path.sysfs", str(tmp_path / "sys"), "--path.procfs", str(tmp_path))
    assert (out.returncode, out.stdout) == (0, "computer\n")


def test_a_sysfs_without_pci_is_a_host_without_pci(tmp_path):
    """A microVM's sysfs: devices/ and bus/ but no PCI bus at all. Nothing to pass, nothing wrong."""
    (tmp_path / "sys" / "devices" / "virtual").mkdir(parents=True)
    (tmp_path / "sys" / "bus" / "platform").mkdir(parents=True)
    out = run("devices", "--path.sysfs", str(tmp_path / "sys"), "--path.procfs", str(tmp_path))
    assert (out.returncode, out.stdout) == (0, "computer\n")


def test_missing_procfs_keeps_the_root_disk_back_and_check_does_not_pass(tree, tmp_path):
    """virtio-blk 00:02.0 holds `/` on vda, virtio NIC 00:03.0; IOMMU on. Without procfs nothing tells
    which disk is `/`: the disk controller is blocked (not offered), the NIC stays available."""
    hosts.virtio_root(tree, groups=True)
    paths = ["--path.sysfs", str(tree.sys), "--path.procfs", str(tmp_path / "nonexistent")]
    out = run("devices", "--available", *paths)
    assert (out.returncode, out.stdout) == (0, "pci_0000_00_03_0\n")
    assert [line for line in out.stderr.splitlines() if ROOT_UNKNOWN_LOG in line]
    # A procfs that is not this host's keeps no state file by default: no boot id is looked for (the
    # `changes_not_tracked` finding says so in `check`).
    assert len(out.stderr.splitlines()) == 1
    out = run("check", *paths)
    assert out.returncode == 1, out.stdout
    assert "Root filesystem devices kept on the host       : WARN" in out.stdout
    assert "warning root_device_unknown [host]: the mount table (<procfs>/1/mountinfo) cannot be read" in out.stdout
    # With the host's procfs the disk is found again: not eligible, and the line passes.
    out = run("check", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc))
    assert "Root filesystem devices kept on the host       : PASS" in out.stdout
    assert "info root_device [pci_0000_00_02_0]" in out.stdout


def test_before_the_first_good_refresh_only_the_status_families(tmp_path):
    """serve on a sysfs that is not there yet (a container started before its mount): source_up 0, the
    counters and build info, no host fact; once the sysfs appears, the host's families follow."""
    sys_path = tmp_path / "host" / "sys"
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([EXE, "serve", "--web.listen-address", f"127.0.0.1:{port}", "--path.sysfs",
                                 str(sys_path), "--path.procfs", str(tmp_path / "host" / "proc"),
                                 "--refresh-interval", "1s"], stdout=subprocess.DEVNULL, stderr=log)
        try:
            body = _wait_for(port, b'passthrough_collect_errors_total{kind="source_error"} 1.0')
            names = {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE")}
            assert {n for n in names if n.startswith("passthrough_")} == {
                "passthrough_source_up", "passthrough_refresh_duration_seconds",
                "passthrough_last_refresh_timestamp_seconds", "passthrough_collect_errors_total",
                "passthrough_exporter_build_info"}
            # Besides them only the serving process's own figures, which need no refresh.
            assert {n for n in names if not n.startswith("passthrough_")} >= {"process_resident_memory_bytes",
                                                                              "process_start_time_seconds"}
            assert all(n.startswith(("passthrough_", "process_")) for n in names), names
            assert b'passthrough_source_up{source="sysfs"} 0.0' in body
            # No sample without a refresh to tell it: a timestamp of 0 would read as a stale refresh.
            assert b"\npassthrough_last_refresh_timestamp_seconds " not in body
            assert b"\npassthrough_refresh_duration_seconds " not in body
            resp = request(port, "/metrics", headers={"Accept-Encoding": "gzip"})  # as Prometheus asks: gzipped
            zipped = gzip.decompress(resp.body)
            assert resp.status == 200 and b'passthrough_source_up{source="sysfs"} 0.0' in zipped
            assert b"\npassthrough_iommu_enabled " not in zipped
            assert request(port, "/api/devices").status == 503
            hosts.clean_host(SysfsTree(tmp_path / "host"))
            body = _wait_for(port, b'passthrough_source_up{source="sysfs"} 1.0')
            assert b"passthrough_iommu_enabled 1.0" in body and b"passthrough_iommu_group_layout_hash " in body
            assert b"\npassthrough_last_refresh_timestamp_seconds " in body
        finally:
            proc.terminate()
            proc.wait(15)
            log.seek(0)
            text = log.read().decode()
        assert "is not a sysfs: it does not exist" in text and "Traceback" not in text


def _wait_for(port: int, needle: bytes, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    body = b""
    while time.monotonic() < deadline:
        try:
            resp = request(port, "/metrics", timeout=2)
            body = resp.body
            if resp.status == 200 and needle in body:
                return body
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"/metrics never held {needle!r}:\n{body.decode()[-1500:]}")
