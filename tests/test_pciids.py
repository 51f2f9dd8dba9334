from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passthrough_exporter.reading import pciids
from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.settings import ConfigError
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts

SAMPLE = """\
# comment
10de  NVIDIA Corporation
\t2484  GA104 [GeForce RTX 3070]
\t\t1043 87b8  a subsystem line, ignored
\t228b  GA104 High Definition Audio Controller
8086  Intel Corporation
\t1901  6th-10th Gen Core Processor PCIe Controller (x16)
C 03  Display controller
\t00  VGA compatible controller
"""


def test_names_from_pci_ids(tree, tmp_path):
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    path = tmp_path / "pci.ids"
    path.write_text(SAMPLE)
    ids = pciids.load(str(path))
    assert ids.names("0x10de", "0x2484") == ("NVIDIA Corporation", "GA104 [GeForce RTX 3070]")
    assert ids.names("0x8086", "0x3e30") == ("Intel Corporation", None)
    assert ids.names("0x1234", "0x0001") == (None, None)
    inv = SysfsSource(str(tree.sys), str(tree.proc), ids).read()
    assert inv.devices["pci_0000_01_00_1"].product == "GA104 High Definition Audio Controller"
    assert device_object(Inspector().judge(inv), "pci_0000_01_00_0")["vendor"] == "NVIDIA Corporation"
    with pytest.raises(ConfigError, match=r"missing.ids: cannot read pci.ids file: No such file"):
        pciids.load(str(tmp_path / "missing.ids"))  # named by the operator: their mistake


def _by_lines(text: str) -> pciids.PciIds | None:
    """What reading the file line by line gives: the reference."""
    try:
        return pciids.parse(io.StringIO(text, newline=None))
    except ValueError:
        return None


def _same(text: str) -> None:
    expected = _by_lines(text)
    try:
        got = pciids._regular(io.StringIO(text, newline=None).read())  # as load() reads the file
    except ValueError:
        got = None
    assert (got is None) == (expected is None)
    if expected is None:
        return
    assert got.vendors == expected.vendors and got.devices == expected.devices
    for v in {*expected.vendors, *(v for v, _ in expected.devices), 0xFFFF}:
        for p in {*(p for w, p in expected.devices if w == v), 0x0000}:
            assert got.names(f"0x{v:04x}", f"0x{p:04x}") == expected.names(f"0x{v:04x}", f"0x{p:04x}")
        assert got.names(f"0x{v:04x}", None) == expected.names(f"0x{v:04x}", None)


hexid = st.text("0123456789abcdefABCDEF", min_size=4, max_size=4)
names = st.text(st.characters(blacklist_characters="\n\r"), max_size=12)
line = st.one_of(
    st.builds(lambda i, n: f"{i}  {n}", hexid, names),  # vendor
    st.builds(lambda i, n: f"\t{i}  {n}", hexid, names),  # device
    st.builds(lambda i, n: f"\t\t{i} 0000  {n}", hexid, names),  # subsystem
    st.just(""), st.just("# comment"), st.just("   "), st.just("\t"),
    st.builds(lambda n: f"C {n}", names),  # the class section
    names,  # anything, irregular lines included
    st.builds(lambda n: f"\t{n}", names),
)


@given(st.lists(line, max_size=30), st.sampled_from(["\n", "\r\n"]))
@settings(max_examples=500, deadline=None)
def test_fast_reading_gives_the_line_by_line_answers(lines, newline):
    _same(newline.join(lines))


def test_same_answers_for_the_system_database():
    path = next((p for p in pciids.SEARCH_PATH if os.path.exists(p)), None)
    if path is None:
        pytest.skip("no pci.ids on this machine")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    assert isinstance(pciids._regular(text), pciids._LazyPciIds)  # the fast reading, not the fallback
    _same(text)
