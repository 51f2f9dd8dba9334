"""serve's refresh worker: a real child process, killed, stuck and failing as a real one would be."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.serving.refresher import Refresher, WorkerError
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from tests.support import hosts
from tests.support.client import free_port, wait_up
from tests.support.local import exposition, local_refresher
from tests.support.process import EXE


def _argv(tree, *extra: str) -> list[str]:
    return ["serve", "--path.sysfs", str(tree.sys), "--path.procfs", str(tree.proc), "--path.pci-ids", "none",
            *extra]


@pytest.fixture
def worker_refresher(host):
    refresher = Refresher(_argv(host), interval=3600)
    refresher.start_worker()
    yield refresher
    refresher.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has left already
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_the_worker_serves_what_the_process_itself_would(worker_refresher, host):
    assert worker_refresher._worker.proc.pid != os.getpid()
    worker_refresher.refresh()
    got = worker_refresher.current()
    local = local_refresher(SysfsSource(str(host.sys), str(host.proc)), Inspector())
    local.refresh()
    want = local.current()
    assert got.ready and got.status.source_up
    assert got.rendered.index == want.rendered.index
    assert got.rendered.objects == want.rendered.objects
    assert (got.rendered.findings, got.rendered.page) == (want.rendered.findings, want.rendered.page)
    # The same exposition but for the status families, whose duration and timestamp differ.
    assert got.rendered.metrics == want.rendered.metrics
    assert b'passthrough_device_eligible{device="pci_0000_01_00_0",type="pci"} 1.0' in exposition(got)


def test_the_worker_reads_libvirt_as_the_process_itself_would(tree, tmp_path):
    """libvirt's test driver, opened in the child: the same devices, assignments and bodies."""
    pytest.importorskip("libvirt")
    from tests.support import libvirt_host

    from passthrough_exporter.reading.sources.libvirt import LibvirtSource

    hosts.workstation(tree)
    uri = libvirt_host.write_host(tree, tmp_path / "host.xml", domains=(
        libvirt_host.domain("win11", libvirt_host.pci_hostdev("0000:01:00.0")),))
    refresher = Refresher(_argv(tree, "--source", "libvirt", "--libvirt.uri", uri), interval=3600)
    refresher.start_worker()
    try:
        refresher.refresh()
        got = refresher.current()
    finally:
        refresher.stop()
    local = local_refresher(LibvirtSource(uri, str(tree.sys), str(tree.proc)), Inspector())
    local.refresh()
    assert got.status.source == "libvirt" and got.status.source_up
    assert got.rendered.index == local.current().rendered.index
    assert b'passthrough_device_assigned{device="pci_0000_01_00_0",domain="win11",running="true"} 1.0' \
        in exposition(got)


def test_a_worker_killed_while_idle_is_replaced_at_the_next_refresh(worker_refresher, caplog):
    worker_refresher.refresh()
    first = worker_refresher._worker.proc.pid
    os.kill(first, signal.SIGKILL)
    worker_refresher._worker.proc.wait(10)
    worker_refresher.refresh()
    assert worker_refresher._worker.proc.pid != first
    assert worker_refresher.current().status.source_up
    assert worker_refresher.errors_total.get("refresh_error", 0) == 0  # no refresh failed
    assert "the refresh worker had exited (killed by SIGKILL) since the last refresh" in caplog.text


# Rules are functions of what the host reads (hookspecs): these fail on a device whose NUMA node is 7,
# so a test makes them fail by writing that into the tree, and a refresh then judges again.
KILLER = textwrap.dedent('''
    """Kills the process it runs in while judging a device on NUMA node 7."""
    import os
    import signal

    from passthrough_exporter import hookimpl

    @hookimpl
    def passthrough_verdict(device):
        if device.numa_node == 7:
            os.kill(os.getpid(), signal.SIGKILL)
''')


def set_numa(tree, node: int) -> None:
    (tree.pci_path("0000:01:00.0") / "numa_node").write_text(f"{node}\n")


def test_a_worker_that_dies_in_a_refresh_fails_that_refresh_only(host, tmp_path, monkeypatch):
    (tmp_path / "killer_rules.py").write_text(KILLER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    refresher = Refresher(_argv(host, "--plugin", "killer_rules"), interval=3600)
    refresher.start_worker()
    try:
        refresher.refresh()
        good = refresher.current()
        set_numa(host, 7)
        refresher.refresh()
        down = refresher.current()
        assert down.ready and not down.status.source_up
        assert down.rendered is good.rendered  # the previous devices, still served
        assert b'passthrough_source_up{source="sysfs"} 0.0' in exposition(down)
        assert b'passthrough_collect_errors_total{kind="refresh_error"} 1.0' in exposition(down)
        set_numa(host, 0)
        refresher.refresh()
        assert refresher.current().status.source_up
        assert refresher.errors_total["refresh_error"] == 1
    finally:
        refresher.stop()


SLEEPER = textwrap.dedent('''
    """Takes a minute to judge a device on NUMA node 7; says so in $SLEEPING."""
    import os
    import time
    from pathlib import Path

    from passthrough_exporter import hookimpl

    @hookimpl
    def passthrough_verdict(device):
        if device.numa_node == 7:
            Path(os.environ["SLEEPING"]).touch()
            time.sleep(60)
''')


def test_stopping_in_the_middle_of_a_refresh_ends_the_child_at_once(host, tmp_path, monkeypatch, caplog):
    (tmp_path / "sleeper_rules.py").write_text(SLEEPER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("SLEEPING", str(tmp_path / "sleeping"))
    refresher = Refresher(_argv(host, "--plugin", "sleeper_rules"), interval=3600)
    refresher.start_worker()
    child = refresher._worker.proc
    set_numa(host, 7)
    refresher.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "sleeping").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    refresher.stop()
    assert time.monotonic() - started < 5  # not the minute the refresh would take
    assert child.poll() is not None and not refresher._thread.is_alive()
    assert "failed" not in caplog.text  # stopping is not a failed refresh


def test_a_refresh_that_hangs_is_killed_and_counted(host, tmp_path, monkeypatch):
    """A hung source (libvirtd not answering, say) must not keep an old answer up as if it were fresh."""
    (tmp_path / "sleeper_rules.py").write_text(SLEEPER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("SLEEPING", str(tmp_path / "sleeping"))
    refresher = Refresher(_argv(host, "--plugin", "sleeper_rules"), interval=3600)
    assert refresher.refresh_timeout == 600  # three intervals, at most ten minutes
    refresher.refresh_timeout = 1.0
    refresher.start_worker()
    try:
        refresher.refresh()
        first = refresher._worker.proc
        set_numa(host, 7)
        started = time.monotonic()
        refresher.refresh()
        assert time.monotonic() - started < 8
        assert first.poll() == -signal.SIGKILL
        assert not refresher.current().status.source_up
        assert refresher.errors_total == {"refresh_error": 1}
        set_numa(host, 0)
        refresher.refresh()  # a new child
        assert refresher._worker.proc is not first and refresher.current().status.source_up
    finally:
        refresher.stop()


def test_a_late_watchdog_never_kills_a_child_whose_answer_is_in(worker_refresher, monkeypatch):
    """The timer's thread may run after the answer arrived: the healthy child must live on."""
    import passthrough_exporter.serving.refresher as refresher

    real = refresher.Published.of

    def slow_publish(*args, **kwargs):  # the server's own work, after the exchange
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(refresher.Published, "of", staticmethod(slow_publish))
    worker_refresher.refresh_timeout = 1.0
    worker_refresher.refresh()
    time.sleep(0.5)
    assert worker_refresher._worker.proc.poll() is None
    assert worker_refresher.current().status.source_up and worker_refresher.errors_total == {}


def test_out_of_descriptors_is_a_failed_refresh_with_its_reason(worker_refresher, caplog):
    """No worker can start when the server has no descriptor left: the log says so."""
    import resource

    worker_refresher.refresh()
    os.kill(worker_refresher._worker.proc.pid, signal.SIGKILL)  # the next refresh needs a new one
    worker_refresher._worker.proc.wait(10)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used, hard))
    try:
        worker_refresher.refresh()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not worker_refresher.current().status.source_up
    assert worker_refresher.errors_total == {"refresh_error": 1}
    assert "cannot start the refresh worker: [Errno 24] Too many open files" in caplog.text
    worker_refresher.refresh()
    assert worker_refresher.current().status.source_up


def test_a_source_that_cannot_be_read_is_a_source_error(tree):
    hosts.base(tree)
    refresher = Refresher(_argv(tree), interval=3600)
    refresher.start_worker()
    try:
        refresher.refresh()
        assert refresher.current().status.source_up
        os.rename(tree.sys, tree.sys.with_name("gone"))
        refresher.refresh()
        assert not refresher.current().status.source_up
        assert refresher.errors_total == {"source_error": 1}
    finally:
        refresher.stop()


def test_a_worker_that_cannot_start_says_why(tree):
    """What the child cannot load (here a plugin only the parent's path had) is the start's error."""
    hosts.base(tree)
    refresher = Refresher(_argv(tree, "--plugin", "no_such_rules_module"), interval=3600)
    with pytest.raises(WorkerError) as err:
        refresher.start_worker()
    assert str(err.value) == ("--plugin no_such_rules_module: cannot import module: "
                              "ModuleNotFoundError: No module named 'no_such_rules_module'")
    assert refresher._worker is None  # waited for and forgotten: the next refresh tries a new one


def test_the_worker_leaves_with_the_server(host):
    """Stopped, or killed outright: the child never outlives `serve`."""
    port = free_port()
    for how in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([EXE, *_argv(host, "--web.listen-address", f"127.0.0.1:{port}")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_up(port, proc=proc, timeout=30)
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            assert len(children) == 1
            child = int(children[0])
            assert "passthrough_exporter.commands.refresh_worker" in Path(f"/proc/{child}/cmdline").read_text()
            proc.send_signal(how)
            proc.wait(30)
            deadline = time.monotonic() + 10
            while _alive(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(child), how
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()


def test_a_host_read_as_before_is_not_judged_again(host, monkeypatch):
    """The rules are functions of the read: a refresh that reads what the last one read publishes the
    same record under a new status, and still counts the inputs it skipped again."""
    inspector = Inspector()
    judged = []
    real = inspector.judge

    def judge(*args, **kwargs):
        judged.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(inspector, "judge", judge)
    refresher = local_refresher(SysfsSource(str(host.sys), str(host.proc)), inspector)
    refresher.refresh()
    first = refresher.current()
    time.sleep(0.01)
    refresher.refresh()
    second = refresher.current()
    assert len(judged) == 1
    assert second.rendered is first.rendered and second.status.source_up
    assert second.status.finished_at > first.status.finished_at
    numa = host.pci_path("0000:01:00.1") / "numa_node"
    numa.write_text("minus one\n")  # the read changes: judged again, the bad input skipped and counted
    refresher.refresh()
    assert len(judged) == 2 and refresher.errors_total == {"bad_attribute": 1}
    assert refresher.current().rendered is not second.rendered
    refresher.refresh()  # the same bad input, read again: not judged, counted again
    assert len(judged) == 2 and refresher.errors_total == {"bad_attribute": 2}
    assert b'passthrough_collect_errors_total{kind="bad_attribute"} 2.0' in exposition(refresher.current())
    numa.write_text("0\n")
    refresher.refresh()
    assert len(judged) == 3 and refresher.errors_total == {"bad_attribute": 2}


def test_the_worker_judges_a_changed_host_again(host):
    """The same through the real worker: a device's attribute changes, its series follows."""
    refresher = Refresher(_argv(host), interval=3600)
    refresher.start_worker()
    try:
        refresher.refresh()
        refresher.refresh()
        steady = refresher.current()
        set_numa(host, 1)
        refresher.refresh()
        changed = refresher.current()
    finally:
        refresher.stop()
    assert b'device="pci_0000_01_00_0"' in exposition(steady)
    assert b'numa_node=""' in _info(steady) and b'numa_node="1"' in _info(changed)


def _info(published) -> bytes:
    return next(line for line in exposition(published).splitlines()
                if line.startswith(b"passthrough_device_info{") and b'device="pci_0000_01_00_0"' in line)


def test_a_record_the_server_could_not_publish_is_never_called_unchanged(host, monkeypatch):
    """The worker's "unchanged" is about the record the server serves, not the last one it sent: a
    record lost on the server's side (no memory to publish it) is built again, never replaced by the
    older one as if fresh."""
    import passthrough_exporter.serving.refresher as refresher_module

    refresher = local_refresher(SysfsSource(str(host.sys), str(host.proc)), Inspector())
    refresher.refresh()
    set_numa(host, 1)
    real = refresher_module.Published.of
    lost = []

    def publish(*args, **kwargs):
        if not lost:
            lost.append(1)
            raise MemoryError("no memory for the record")
        return real(*args, **kwargs)

    monkeypatch.setattr(refresher_module.Published, "of", staticmethod(publish))
    with pytest.raises(MemoryError):
        refresher.refresh()
    assert b'numa_node=""' in _info(refresher.current())  # the old record, still served
    refresher.refresh()  # the host reads as the lost record's: built again, not "unchanged"
    assert b'numa_node="1"' in _info(refresher.current()) and refresher.current().status.source_up


SLOW_START = textwrap.dedent('''
    """Takes a minute to import once the file named by $SLOW_START exists."""
    import os
    import time

    from passthrough_exporter import hookimpl

    if os.path.exists(os.environ["SLOW_START"]):
        time.sleep(60)

    @hookimpl
    def passthrough_verdict(device):
        return None
''')


def test_stopping_while_a_reload_starts_its_worker_ends_both_at_once(host, tmp_path, monkeypatch):
    (tmp_path / "slow_start_rules.py").write_text(SLOW_START)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("SLOW_START", str(tmp_path / "slow"))
    refresher = Refresher(_argv(host, "--plugin", "slow_start_rules"), interval=3600)
    refresher.start_worker()
    old = refresher._worker.proc
    refresher.start()
    (tmp_path / "slow").touch()
    refresher.reload()
    deadline = time.monotonic() + 30
    while refresher._starting is None:  # the new worker is importing its plugins
        assert time.monotonic() < deadline
        time.sleep(0.05)
    starting = refresher._starting.proc
    started = time.monotonic()
    refresher.stop()
    assert time.monotonic() - started < 5  # not the minute the start would take
    assert starting.wait(5) is not None and old.wait(5) is not None
