from __future__ import annotations

import hosts
from helpers import judge_tree  # noqa: F401

from passthrough_exporter import pciids
from passthrough_exporter.inspector import Inspector
from passthrough_exporter.sources.sysfs import SysfsSource

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
    assert Inspector().judge(inv).device_object("pci_0000_01_00_0")["vendor"] == "NVIDIA Corporation"
    assert pciids.load(str(tmp_path / "missing.ids")) is None
