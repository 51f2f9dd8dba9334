"""Property tests: random device forests and IOMMU group assignments, judged by the real plugins.

Two kinds of input: well-formed forests (every parent exists and precedes its child), where the
affected sets must obey the contract exactly, and arbitrary garbage (self-parents, cycles, missing
parents, duplicate names, stray SR-IOV links), where the inspector must still answer for every
device without raising.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passthrough_exporter.rendering.metrics import render
from passthrough_exporter.model import COMPUTER, Device, Inventory
from passthrough_exporter.judging.snapshot import Snapshot
from passthrough_exporter.reading.sysfs.attrs import BadAttribute, link_width, numa_node, parse_int, sriov_count
from passthrough_exporter.reading.sysfs.devices import aer_total, link_speed
from tests.support.local import inspector

TYPES = ("pci", "usb_device", "usb", "scsi_host", "scsi_target", "scsi")
# Every type a built-in plugin answers for: the device's descendants always go along.
WITH_DESCENDANTS = set(TYPES)
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def forests(draw: st.DrawFn) -> list[Device]:
    """Up to 30 devices; each parent is the computer or an earlier device, so the tree is well formed."""
    n = draw(st.integers(1, 30))
    devices: list[Device] = []
    for i in range(n):
        kind = draw(st.sampled_from(TYPES))
        parent = draw(st.sampled_from([COMPUTER, *(d.name for d in devices)]))
        group = draw(st.none() | st.integers(0, 5)) if kind == "pci" else None
        devices.append(Device(f"{kind}_{i}", kind, parent=parent, iommu_group=group,
                              pci_class=draw(st.sampled_from(["0x030000", "0x060400", "0x020000"]))
                              if kind == "pci" else None))
    # SR-IOV: some PCI functions become VFs of another PCI function.
    pci = [d.name for d in devices if d.type == "pci"]
    if len(pci) >= 2 and draw(st.booleans()):
        pf = draw(st.sampled_from(pci))
        vfs = draw(st.lists(st.sampled_from([p for p in pci if p != pf]), max_size=3, unique=True))
        devices = [d.__class__(**{**_fields(d), "virtfns": tuple(vfs)}) if d.name == pf else
                   d.__class__(**{**_fields(d), "physfn": pf}) if d.name in vfs else d for d in devices]
    return devices


def _fields(d: Device) -> dict:
    return {f: getattr(d, f) for f in d.__slots__}


names = st.sampled_from([COMPUTER, "pci_0", "pci_1", "usb_device_2", "usb_3", "scsi_4", "x", ""]) | st.text(max_size=8)


@st.composite
def garbage(draw: st.DrawFn) -> list[Device]:
    """Anything a broken source could produce: names reused, parents anywhere, links to nowhere."""
    out = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from((*TYPES, "system", "mystery")))
        out.append(Device(
            draw(names), kind, parent=draw(st.none() | names),
            iommu_group=draw(st.none() | st.integers(-2, 3)),
            pci_class=draw(st.none() | st.sampled_from(["0x030000", "0x060400", "", "zz", "0x05"])),
            header_type=draw(st.none() | st.integers(0, 127)),
            physfn=draw(st.none() | names),
            virtfns=tuple(draw(st.lists(names, max_size=3))),
            boot_vga=draw(st.booleans()),
        ))
    return out


def check_common(inv: Inventory, snap: Snapshot) -> None:
    assert set(snap.verdicts) == set(inv.devices) == set(snap.affected)
    for name, affected in snap.affected.items():
        assert name not in affected
        assert list(affected) == sorted(set(affected))  # sorted, no repeats
        assert set(affected) <= set(inv.devices)
    render(snap)  # the exposition renders for any input


@PROPERTY_SETTINGS
@given(forests())
def test_affected_sets_obey_the_contract(devices: list[Device]) -> None:
    inv = Inventory(devices)
    assert dict(inv.errors) == {}
    snap = inspector().judge(inv)
    check_common(inv, snap)
    for dev in inv:
        affected = set(snap.affected[dev.name])
        if dev.type in WITH_DESCENDANTS:
            assert set(inv.descendants(dev.name)) <= affected
        if dev.type != "pci":
            continue
        # Symmetric within a group: each PCI function of a group goes along with every other.
        for peer in inv.group_peers(dev.name):
            assert peer in affected and dev.name in snap.affected[peer]
            assert set(inv.descendants(peer)) - {dev.name} <= affected
        for vf in inv.virtual_functions(dev.name):
            assert vf in affected or vf == dev.name
            assert set(inv.descendants(vf)) - {dev.name} <= affected
        if dev.iommu_group is None:  # no group: descendants and VFs only
            heads = {dev.name, *inv.virtual_functions(dev.name)}
            expected = set().union(*(set(inv.descendants(h)) for h in heads), heads) - {dev.name}
            assert affected == expected


@PROPERTY_SETTINGS
@given(garbage())
def test_no_input_makes_the_inspector_raise(devices: list[Device]) -> None:
    inv = Inventory(devices)
    assert COMPUTER in inv
    for name in inv.devices:  # walks terminate and never come back to their start
        below = list(inv.descendants(name))
        assert name not in below and len(below) == len(set(below)) < len(inv)
    snap = inspector().judge(inv)
    check_common(inv, snap)
    for dev in inv:
        if dev.type == "pci" and dev.iommu_group is not None:
            for peer in inv.group_peers(dev.name):
                assert peer in snap.affected[dev.name] and dev.name in snap.affected[peer]


# What a sysfs numeric attribute could hold: numbers of any size and sign, the float spellings
# Python accepts (nan, inf, 1e9, 1_0), other scripts' digits, and anything at all.
numeric_text = (st.integers().map(str) | st.integers(-(10**400), 10**400).map(str)
                | st.floats().map(repr) | st.sampled_from(["nan", "inf", "-inf", "Infinity", "1e9", "1_0", "+1",
                                                          " 1", "\u0663", "0", "255", "-1", "Unknown"])
                | st.text(max_size=12))
NUMBER_PARSERS = {  # parser -> the range a value it returns lies in
    parse_int: (0, 2**63 - 1), sriov_count: (0, 65535), numa_node: (0, 1023), link_width: (1, 32),
    aer_total: (0, 2**63 - 1), link_speed: (0.0, 1000.0),
}


@PROPERTY_SETTINGS
@given(numeric_text, st.sampled_from(["", "{} GT/s PCIe", "TOTAL_ERR_FATAL {}"]))
def test_a_parsed_number_is_in_range_or_refused(number: str, template: str) -> None:
    text = template.format(number) if template else number
    for parse, (low, high) in NUMBER_PARSERS.items():
        try:
            value = parse(text)
        except BadAttribute:
            continue
        if value is None:  # the kernel's own "no value" spellings
            continue
        assert low <= value <= high and math.isfinite(float(value)), (parse.__name__, text, value)
        json.dumps(value, allow_nan=False)
