"""The host page: every group and device with the right state in words, odd names escaped, a
2,000-VF host folded and small, and the page drawn by a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import hosts
import pytest
from helpers import judge_tree

from passthrough_exporter.hostpage import render
from passthrough_exporter.inspector import Inspector
from passthrough_exporter.model import Device, HostFacts, Inventory


class Page(HTMLParser):
    """The page's text, its tags and its sections, as a browser would see them."""

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.feed(html.decode())

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("br", "div", "section", "p", "h1", "h2", "h3", "details", "summary"):
            self.text.append(" ")  # a line or block boundary, as any browser shows it

    def handle_data(self, data):
        self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join("".join(self.text).split())


def test_every_group_and_device_with_its_state(tree):
    hosts.workstation(tree)
    snap = judge_tree(tree)
    page = Page(render(snap))
    text = page.words
    for number in snap.facts.groups:
        if number not in (31, 32):  # the two VFs' own groups: shown under their PF
            assert f"IOMMU group {number} " in text
    for dev in snap.inventory:
        if dev.type == "pci":
            assert dev.name in text, dev.name
    assert "pci_0000_01_00_0 0x10de 0x2484 · driver nvidia available" in text
    assert "pci_0000_00_01_0 0x8086 0x1901 · driver pcieport not eligible: PCI bridge" in text
    assert "2 virtual functions: 2 available" in text
    assert "IOMMU: on" in text and "Interrupt remapping: on" in text and "Isolation weakened: no" in text
    assert "script" not in page.tags


def test_live_states_in_words(tree):
    snap = judge_tree(hosts.busy_host(tree))
    text = Page(render(snap)).words
    assert "pci_0000_01_00_0 0x10de 0x2484 · driver vfio-pci in use by win11" in text
    assert "pci_0000_00_19_0 0x8086 0x15bc · driver vfio-pci in use " in text  # enabled, no holder seen
    assert "usb_1_1_2 (USB Optical Mouse: in use)" in text  # below the xHCI controller
    assert ("pci_0000_00_14_0 0x8086 0xa36d · driver xhci_hcd blocked: usb_1_1_2, which goes with it, is in use"
            in text)


def test_assigned_and_unreachable(tree):
    hosts.base(tree)
    tree.pci("0000:02:00.0", 0x10DE, 0x2204, 0x030000, driver="nvidia", group=9, unreachable=True)
    inv = judge_tree(tree).inventory
    gpu = Device(name="pci_0000_05_00_0", type="pci", address="0000:05:00.0", vendor="NVIDIA Corporation",
                 product="GA102", pci_class="0x030000", header_type=0, iommu_group=5, driver="vfio-pci",
                 assignments=(("gaming", True),), assigned_to="gaming", assigned_running=True)
    snap = Inspector().judge(Inventory([*inv, gpu], inv.host))
    text = Page(render(snap)).words
    assert "pci_0000_05_00_0 NVIDIA Corporation GA102 · driver vfio-pci assigned to gaming (running)" in text
    assert "pci_0000_02_00_0 0x10de 0x2204 · driver nvidia unreachable: it fell off the bus" in text
    assert "critical device_unreachable [pci_0000_02_00_0]" in text


def test_odd_names_cannot_inject_markup():
    evil = '<script>alert("x")</script>'
    dev = Device(name="pci_0000_01_00_0", type="pci", address="0000:01:00.0", pci_class="0x020000", header_type=0,
                 iommu_group=1, driver=evil, vendor='Acme "quoted" & <b>bold</b>', product="caf\\xc3\\x28 \udcff")
    html = render(Inspector().judge(Inventory([dev], HostFacts(iommu_groups_present=True))))
    page = Page(html)
    assert "script" not in page.tags and "b" not in page.tags and "strong" in page.tags
    assert f"driver {evil}" in page.words and 'Acme "quoted" & <b>bold</b>' in page.words
    assert "caf\\xc3\\x28 \\udcff" in page.words  # a lone surrogate comes out escaped, not as an error


def sriov_host(tree, vfs: int) -> None:
    hosts.base(tree)
    tree.pci("0000:3b:00.0", 0x8086, 0x1572, 0x020000, driver="i40e", group=20, sriov_totalvfs=vfs)
    for i in range(vfs):
        tree.pci(f"0000:3c:{i // 8:02x}.{i % 8}", 0x8086, 0x154C, 0x020000, driver="vfio-pci", group=100 + i,
                 physfn="0000:3b:00.0", reset_method="flr")


def test_two_thousand_vfs_fold_under_their_pf(tmp_path):
    from sysfs_builder import SysfsTree

    tree = SysfsTree(tmp_path / "sriov")
    sriov_host(tree, 2000)
    snap = judge_tree(tree)
    html = render(snap)
    text = Page(html).words
    assert "2000 virtual functions: 2000 available" in text
    assert text.count("IOMMU group ") == 2  # the host bridge's and the PF's; the VFs' 2,000 groups fold away
    assert len(html) < 1_000_000, len(html)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(html: bytes, out: Path, width: int = 1280, height: int = 900) -> None:
    with tempfile.TemporaryDirectory() as profile:
        page = Path(profile) / "page.html"
        page.write_bytes(html)
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}/profile", f"--window-size={width},{height}",
                        f"--screenshot={out}", page.as_uri()],
                       capture_output=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (the test command installs it)")
def test_chromium_draws_the_page(tree, tmp_path):
    hosts.workstation(tree)
    out = tmp_path / "workstation.png"
    screenshot(render(judge_tree(tree)), out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a drawn page, not a blank one


def test_served_at_the_root_behind_basic_auth_and_gzipped(tree, tmp_path):
    """The real server: the page once per snapshot, with the same auth as every other path."""
    import base64
    import gzip

    import bcrypt
    from helpers import get

    from passthrough_exporter import webconfig
    from passthrough_exporter.refresher import Refresher
    from passthrough_exporter.server import serve
    from passthrough_exporter.sources.sysfs import SysfsSource

    hosts.workstation(tree)
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"basic_auth_users:\n  ops: {bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=4)).decode()}\n")
    refresher = Refresher(SysfsSource(str(tree.sys), str(tree.proc)), Inspector(), interval=3600)
    httpd = serve(("127.0.0.1", 0), refresher, webconfig.load(str(cfg)))
    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:secret").decode()}
    try:
        resp, body = get(httpd, "/", headers=auth)
        assert resp.status == 503 and b"no snapshot yet" in body  # before the first refresh
        refresher.refresh()
        resp, _ = get(httpd, "/")
        assert resp.status == 401
        resp, body = get(httpd, "/", headers=auth)
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/html; charset=utf-8"
        assert body == render(Inspector().judge(SysfsSource(str(tree.sys), str(tree.proc)).read()))
        resp, zipped = get(httpd, "/", headers={**auth, "Accept-Encoding": "gzip"})
        assert resp.getheader("Content-Encoding") == "gzip" and gzip.decompress(zipped) == body
    finally:
        httpd.shutdown()
        httpd.server_close()
