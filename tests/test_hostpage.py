"""The host page: every group and device with the right state in words, danger on the box or card it
concerns, findings one entry per code, odd names escaped, a 2,000-VF host folded and small, and the
page drawn by a real headless Chromium (the groups on the first screen, long names inside their card)."""

from __future__ import annotations

import dataclasses
import html as htmllib
import json
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from passthrough_exporter.rendering.hostpage import render
from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.model import Device, Finding, HostFacts, Inventory
from tests.support import hosts
from tests.support.local import judge_tree

VOID = {"br", "meta", "img", "hr", "input", "link"}


class Page(HTMLParser):
    """The page's text, its tags and its elements by id (class and text), as a browser would see them."""

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.open: list[tuple[str, str | None, int]] = []  # tag, id, where its text starts
        self.by_id: dict[str, tuple[set[str], str]] = {}
        self.classes: dict[str, set[str]] = {}
        self.feed(html.decode())

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("br", "div", "section", "p", "h1", "h2", "h3", "details", "summary"):
            self.text.append(" ")  # a line or block boundary, as any browser shows it
        if tag not in VOID:
            a = dict(attrs)
            self.open.append((tag, a.get("id"), len(self.text)))
            if a.get("id"):
                self.classes[a["id"]] = set((a.get("class") or "").split())

    def handle_endtag(self, tag):
        while self.open:
            name, ident, start = self.open.pop()
            if ident:
                self.by_id[ident] = (self.classes[ident], " ".join("".join(self.text[start:]).split()))
            if name == tag:
                break

    def handle_data(self, data):
        self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join("".join(self.text).split())

    def element(self, ident: str) -> tuple[set[str], str]:
        """(classes, words) of the element with this id."""
        return self.by_id[ident]


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
    assert "unreachable: it fell off the bus critical: device unreachable" in text  # on its card
    assert "critical device unreachable device_unreachable on pci_0000_02_00_0:" in text  # and on top


def test_a_mixed_group_carries_critical_on_its_box(tree):
    """Group 2: the GPU on vfio-pci, its audio on snd_hda_intel. Both are available (no VM has them),
    and the box says, above them, that the group is critical and why VFIO refuses it."""
    hosts.split_gpu(tree)
    page = Page(render(judge_tree(tree)))
    classes, box = page.element("group-2")
    assert "critical" in classes
    assert box.startswith("IOMMU group 2 critical: group mixed · 2 functions · split: part on VFIO, part on host "
                          "drivers; VFIO refuses it until all are on VFIO ")
    assert "pci_0000_01_00_0 0x10de 0x2484 · driver vfio-pci available warning: no FLR" in box
    assert "pci_0000_01_00_1 0x10de 0x228b · driver snd_hda_intel available warning: no FLR" in box
    classes, card = page.element("dev-pci_0000_01_00_0")
    assert {"dev", "available", "warning"} <= classes
    assert page.element("group-0") == ({"group"}, "IOMMU group 0 · 1 function · viable pci_0000_00_00_0 0x8086 "
                                       "0x3e30 · no driver not eligible: host bridge (0x060000) is host "
                                       "infrastructure, not an endpoint")
    # The 10th: vfio_cdev_unknown (the GPU is on vfio-pci; the tree has no class/misc to tell its cdev by).
    assert "Findings (10: 1 critical, 3 warning, 6 info)" in page.words
    assert "script" not in page.tags


def test_warnings_on_their_cards_and_host_drivers_in_plain_words(tree):
    """The workstation: the boot GPU has no FLR, its audio neither; groups 2, 3, 4, 5, 30 and 31 are held
    by host drivers only, which handing a device out rebinds: no "not viable" beside "available"."""
    hosts.workstation(tree)
    page = Page(render(judge_tree(tree)))
    classes, gpu = page.element("dev-pci_0000_01_00_0")
    assert {"available", "warning"} <= classes
    assert gpu.endswith("driver nvidia available warning: boot VGA, no FLR")
    classes, audio = page.element("dev-pci_0000_01_00_1")
    assert {"available", "warning"} <= classes and audio.endswith("available warning: no FLR")
    classes, box = page.element("group-2")
    assert "warning" in classes and "critical" not in classes
    assert box.startswith("IOMMU group 2 warning: group boot VGA · 2 functions · host drivers bound now; handing it "
                          "out rebinds them ")
    for number in (3, 4, 5, 30):
        assert "host drivers bound now; handing it out rebinds them" in page.element(f"group-{number}")[1]
    assert "not viable" not in page.element("group-3")[1]
    classes, bridge = page.element("dev-pci_0000_00_01_0")
    assert classes == {"dev", "ineligible"} and "warning" not in bridge  # nothing to say: no flags
    # Info asks nothing: one folded line on top, nothing on the boxes.
    assert "info: changes not tracked (1), group multi device (2), group not viable (6)" in page.words
    assert "info:" not in page.element("group-5")[1]


def test_one_entry_per_code_with_its_subjects_and_one_fix(tree):
    """Nine NICs without a reset method: one `no_reset` entry naming the nine, in order, the message
    they share and the fix once; each NIC's own card says so too."""
    hosts.workstation(tree)
    hosts.resetless_nics(tree)
    snap = judge_tree(tree)
    fix = next(f.fix for f in snap.findings if f.code == "no_reset")
    page = Page(render(snap))
    nics = ", ".join(f"pci_0000_{0x20 + i:02x}_00_0" for i in range(9))
    assert (f"warning no reset no_reset ×9 on {nics}: no reset method: device state can leak from one VM "
            f"(or the host) to the next fix: {fix}") in page.words
    assert page.words.count(fix) == 1 and page.words.count("no_reset") == 1
    assert page.element("dev-pci_0000_24_00_0")[1].endswith("available warning: no reset")
    # Warnings in the snapshot's order (by code); the two no_flr findings are one entry too.
    heads = re.findall(r"warning (?:[\w ]+?) (\w+)(?: ×\d+)? on ", page.words)
    assert heads == ["boot_vga", "group_boot_vga", "no_flr", "no_reset", "root_device_unknown", "vfio_cdev_unknown"]


def test_subjects_in_natural_order_and_capped(tree):
    """Twelve groups with the same finding, given out of order: group:1 … group:10 listed (not
    group:1, group:10, group:11, group:12, group:2 …), then "and 2 more"; their messages differ, so
    none is repeated on top."""
    hosts.base(tree)
    snap = judge_tree(tree)
    numbers = [7, 12, 1, 10, 3, 9, 2, 11, 5, 4, 8, 6]
    extra = tuple(Finding("group_rmrr", "warning", f"group:{n}", f"group {n} has an RMRR", "move the card")
                  for n in numbers)
    page = Page(render(dataclasses.replace(snap, findings=extra + snap.findings)))
    listed = ", ".join(f"group:{n}" for n in range(1, 11))
    assert f"warning group RMRR group_rmrr ×12 on {listed} and 2 more fix: move the card " in page.words
    assert "has an RMRR" not in page.words


def test_the_facts_say_when_vfio_cannot_assign_at_all(tree):
    """No IOMMU groups: every PCI function is blocked, and the facts bar leads with why."""
    hosts.virtio_root(tree)  # no groups: the NIC is blocked by the host
    page = Page(render(judge_tree(tree)))
    assert "Device passthrough on this host VFIO cannot assign: the IOMMU is off IOMMU: off " in page.words
    assert ("driver virtio-pci blocked: the IOMMU is off: VFIO cannot assign devices on this host"
            in page.element("dev-pci_0000_00_03_0")[1])


def test_the_facts_say_when_remapping_is_off(tree):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    tree.interrupts("IO-APIC", "PCI-MSI")
    text = Page(render(judge_tree(tree))).words
    assert "VFIO cannot assign: interrupt remapping is off IOMMU: on Interrupt remapping: off" in text
    assert "blocked: interrupt remapping is off: VFIO refuses to assign devices on this host" in text


def test_a_host_that_can_assign_says_nothing_of_it(tree):
    hosts.split_gpu(tree)
    assert "VFIO cannot assign" not in Page(render(judge_tree(tree))).words


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
    from tests.support.sysfs_builder import SysfsTree

    tree = SysfsTree(tmp_path / "sriov")
    sriov_host(tree, 2000)
    snap = judge_tree(tree)
    html = render(snap)
    text = Page(html).words
    assert "2000 virtual functions: 2000 available" in text
    assert text.count("IOMMU group ") == 2  # the host bridge's and the PF's; the VFs' 2,000 groups fold away
    assert len(html) < 1_000_000, len(html)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (the test command "
                                    "installs it)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")  # the same layout width in a screenshot and a measurement, however tall
CRITICAL_RED = (179, 38, 30)  # #b3261e, the page's colour for critical


def chromium(html: bytes, width: int, height: int, *args: str) -> bytes:
    """Chromium's stdout for the page, drawn in a window of this size with a profile of its own."""
    with tempfile.TemporaryDirectory() as profile:
        page = Path(profile) / "page.html"
        page.write_bytes(html)
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}/profile",
                               f"--window-size={width},{height}", *args, page.as_uri()],
                              capture_output=True, timeout=120, check=True).stdout


def screenshot(html: bytes, out: Path, width: int = 1280, height: int = 800) -> None:
    chromium(html, width, height, f"--screenshot={out}")


# Only the test's copy of the page runs this: the page itself has no script. It reports where things
# were laid out, and what does not fit its box, into the DOM that --dump-dom prints.
MEASURE = b"""<script>
const box = e => { const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left}; };
const groups = document.getElementById("group-2");
const out = document.body.appendChild(document.createElement("pre"));
out.id = "measure";
out.textContent = JSON.stringify({
  width: innerWidth, page_width: document.documentElement.scrollWidth,
  heading: box(document.querySelector("h2.groups")),
  overflowing: [...document.querySelectorAll("h1,h2,.facts,.finding,.group,.dev")]
    .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.id || e.className),
  group2: groups && {...box(groups), text: groups.innerText, border: getComputedStyle(groups).borderLeftColor},
});
</script></body>"""


def measure(html: bytes, width: int = 1280, height: int = 800) -> dict:
    """Layout facts of the page as Chromium draws it in a window of this size."""
    dom = chromium(html.replace(b"</body>", MEASURE), width, height, "--dump-dom")
    found = re.search(rb'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(htmllib.unescape(found.group(1).decode()))


def png_pixels(data: bytes) -> tuple[int, list[bytes]]:
    """(bytes per pixel, rows) of an 8-bit, non-interlaced RGB or RGBA PNG, as Chromium writes them."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + size
    assert depth == 8 and colour in (2, 6) and not interlace
    bpp, raw = (3 if colour == 2 else 4), zlib.decompress(b"".join(idat))
    stride, prev, rows = width * bpp, bytearray(width * bpp), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # undo the row filter (PNG spec, section 9)
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return bpp, rows


@needs_chromium
def test_chromium_draws_the_page(tree, tmp_path):
    """A critical group_mixed group, drawn: its box is on the first screen of a 1280x800 window, says
    "critical: group mixed" above its two available cards, and its border is painted critical red."""
    hosts.split_gpu(tree)
    html = render(judge_tree(tree))
    out = tmp_path / "critical.png"
    screenshot(html, out)
    data = out.read_bytes()
    assert len(data) > 20_000  # a drawn page, not a blank one
    laid = measure(html)
    box = laid["group2"]
    assert box["text"].startswith("IOMMU group 2 critical: group mixed")
    assert box["text"].count("available") == 2 and box["border"] == "rgb(179, 38, 30)"
    assert box["bottom"] <= 800
    bpp, rows = png_pixels(data)
    x, y = int(box["left"]) + 1, int((box["top"] + box["bottom"]) / 2)
    assert tuple(rows[y][x * bpp:x * bpp + 3]) == CRITICAL_RED  # the left border, in the picture itself
    assert tuple(rows[y][(x - 10) * bpp:(x - 10) * bpp + 3]) != CRITICAL_RED  # and not the page around it


@needs_chromium
@pytest.mark.parametrize("extra", [None, hosts.resetless_nics])
def test_the_groups_are_on_the_first_screen(tree, extra):
    """The workstation (and with nine more findings of one code): findings are short enough that
    the "IOMMU groups" heading is within the first 800 pixels of a 1280x800 window."""
    hosts.workstation(tree)
    if extra:
        extra(tree)
    laid = measure(render(judge_tree(tree)))
    assert laid["width"] == 1280
    assert laid["heading"]["bottom"] <= 800, laid["heading"]


@needs_chromium
@pytest.mark.parametrize("width", [1280, 500])  # 500: the narrowest window Chromium opens
def test_long_names_wrap_inside_their_card(width):
    """A 200-character product, a 64-character device name (also a finding's subject) and a long driver,
    none with a space to break at: each stays inside its card, and the page is no wider than the window."""
    name = "pci_" + "0123456789abcdef" * 3 + "0123456789ab"
    assert len(name) == 64
    dev = Device(name=name, type="pci", address="0000:01:00.0", pci_class="0x020000", header_type=0, iommu_group=1,
                 driver="d" * 80, vendor="Acme", product="P" * 200)
    snap = Inspector().judge(Inventory([dev], HostFacts(iommu_groups_present=True, interrupt_remapping=True)))
    long = Finding("expected_mismatch", "critical", name, "expected product " + "Q" * 150, "fix" + "F" * 120)
    html = render(dataclasses.replace(snap, findings=(long, *snap.findings)))
    assert b"P" * 200 in html and b"<script" not in html
    laid = measure(html, width)
    assert laid["width"] == width
    assert laid["overflowing"] == [] and laid["page_width"] <= width, laid


def test_served_at_the_root_behind_basic_auth_and_gzipped(tree, tmp_path):
    """The real server: the page once per snapshot, with the same auth as every other path."""
    import base64
    import gzip

    import bcrypt
    from tests.support.client import request

    from passthrough_exporter.serving import webconfig
    from tests.support.local import local_refresher
    from passthrough_exporter.serving.server import serve
    from passthrough_exporter.reading.sources.sysfs import SysfsSource

    hosts.workstation(tree)
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"basic_auth_users:\n  ops: {bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=4)).decode()}\n")
    refresher = local_refresher(SysfsSource(str(tree.sys), str(tree.proc)), Inspector(), interval=3600)
    httpd = serve(("127.0.0.1", 0), refresher, webconfig.load(str(cfg)))
    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:secret").decode()}
    try:
        resp = request(httpd, "/", headers=auth)
        assert resp.status == 503 and b"no snapshot yet" in resp.body  # before the first refresh
        refresher.refresh()
        resp = request(httpd, "/")
        assert resp.status == 401
        resp = request(httpd, "/", headers=auth)
        body = resp.body
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/html; charset=utf-8"
        # The page as the refresh rendered it, the server saying the source is up where it is marked.
        want = render(Inspector().judge(SysfsSource(str(tree.sys), str(tree.proc)).read()))
        assert body == want.replace(b"<!--source-state-->", b'<span class="ok">up</span>')
        assert b"<strong>Source</strong>: sysfs <span class=\"ok\">up</span>" in body
        resp = request(httpd, "/", headers={**auth, "Accept-Encoding": "gzip"})
        assert resp.getheader("Content-Encoding") == "gzip" and gzip.decompress(resp.body) == body
        tree.sys.rename(tmp_path / "gone")  # the source down: the last good read, saying so
        refresher.refresh()
        resp = request(httpd, "/", headers=auth)
        assert resp.status == 200 and b"<strong>Source</strong>: sysfs <span class=\"bad\">down (showing the last good " \
            b"read)</span>" in resp.body
        assert b"pci_0000_01_00_0" in resp.body
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_changes_since_the_previous_boot_come_first():
    """After an upgrade the page opens with what changed: here the GPU at 01:00.0 is another model and
    its group was renumbered 2 -> 12 (worked out from the two records below)."""
    from passthrough_exporter.model import BootRecord

    def gpu(product: str, group: int) -> Device:
        return Device(name="pci_0000_01_00_0", type="pci", address="0000:01:00.0", vendor_id="0x10de",
                      product_id=product, pci_class="0x030000", iommu_group=group)

    before = BootRecord.of(Inventory([gpu("0x2484", 2)]), "aaaaaaaa-0000-4000-8000-00000000000a")
    inv = Inventory([gpu("0x2204", 12)], HostFacts(iommu_groups_present=True, boot_id="b", state_read=True,
                                                   previous_boot=before))
    page = render(Inspector().judge(inv)).decode()
    top = page.index('<h2 class="changes">Changed since the previous boot (2)</h2>')
    assert top < page.index("<h2>Findings")
    assert ("<li>group:12: group renumbered: group 2 -&gt; group 12</li>"
            "<li>pci_0000_01_00_0: replaced: 10de:2484 -&gt; 10de:2204</li>") in page
    # Without a previous boot on record there is nothing to show on top.
    assert 'class="changes"' not in render(Inspector().judge(Inventory([gpu("0x2204", 12)]))).decode()
