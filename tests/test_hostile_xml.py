"""Hostile libvirt node-device XML against the libvirt source's parser (`libvirt_xml.node_device`).

The boundary: `parse_node_device(xml: str | bytes) -> Device` either returns a Device or raises an
ordinary exception (the source skips and counts it). It never hangs, never exhausts memory, never
opens a file or a connection an XML document names. Hostile cases run in a child process with an
address-space limit (and under strace when it is installed, which sees every open and connect);
a 127.0.0.1 listener must see no connection.

Until the libvirt source exists the parser tests skip; the harness is still proven to catch an
unsafe parser (lxml with entity resolution and network on).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from passthrough_exporter.rendering.metrics import render
from passthrough_exporter.model import Inventory

from passthrough_exporter.reading.sources.libvirt_xml import node_device
from tests.support.local import inspector


def parse_node_device(xml):
    return node_device(xml).device



SENTINEL_TEXT = "SENTINEL-8c1f-do-not-read"


def node_xml(name: str = "pci_0000_01_00_0", parent: str = "pci_0000_00_01_0", product: str = "GA104",
             doctype: str = "", group: str = "2") -> str:
    return textwrap.dedent(f"""\
        {doctype}<device>
          <name>{name}</name>
          <path>/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0</path>
          <parent>{parent}</parent>
          <driver><name>nvidia</name></driver>
          <capability type='pci'>
            <class>0x030000</class>
            <domain>0</domain><bus>1</bus><slot>0</slot><function>0</function>
            <product id='0x2484'>{product}</product>
            <vendor id='0x10de'>NVIDIA Corporation</vendor>
            <iommuGroup number='{group}'>
              <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
            </iommuGroup>
          </capability>
        </device>
        """)


def hostile_cases(sentinel: Path, port: int) -> dict[str, bytes]:
    valid = node_xml().encode()
    url = f"http://127.0.0.1:{port}"
    lol = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 11))
    cases: dict[str, bytes] = {
        # malformed
        "empty": b"",
        "whitespace": b"  \n ",
        "not xml": b"this is not xml",
        "unclosed root": b"<device><name>pci_0000_01_00_0</name>",
        "mismatched tag": b"<device><name>pci_0000_01_00_0</nam></device>",
        "two roots": valid + valid,
        "binary junk": bytes(range(256)) * 4,
        "NUL in name": valid.replace(b"pci_0000_01_00_0", b"pci_0000\x00_01"),
        "bad encoding declaration": b"<?xml version='1.0' encoding='no-such-codec'?>" + valid,
        "utf-16 without BOM": valid.decode().encode("utf-16-le"),
        "wrong root": b"<domain type='kvm'><name>vm1</name></domain>",
        "no name": re.sub(rb"<name>pci[^<]*</name>", b"", valid),
        "empty name": valid.replace(b"pci_0000_01_00_0", b""),
        "capability without type": valid.replace(b"<capability type='pci'>", b"<capability>"),
        "iommu group not a number": node_xml(group="two").encode(),
        "iommu group negative huge": node_xml(group="-99999999999999999999999").encode(),
        "unknown capability": valid.replace(b"type='pci'", b"type='warp_drive'"),
        # huge
        "20 MB product name": node_xml(product="x" * (20 << 20)).encode(),
        "200k nested elements": valid.replace(b"<class>", b"<a>" * 200_000 + b"</a>" * 200_000 + b"<class>"),
        "100k capabilities": valid.replace(b"</device>", b"<capability type='pci'/>" * 100_000 + b"</device>"),
        # entity expansion
        "billion laughs": node_xml(doctype=f'<!DOCTYPE device [<!ENTITY l0 "lol">{lol}]>',
                                   product="&l10;").encode(),
        "quadratic blowup": node_xml(doctype=f'<!DOCTYPE device [<!ENTITY a "{"a" * 50_000}">]>',
                                     product="&a;" * 10_000).encode(),
        # external entities: a file and a 127.0.0.1 listener
        "external file entity": node_xml(doctype=f'<!DOCTYPE device [<!ENTITY x SYSTEM "file://{sentinel}">]>',
                                         product="&x;").encode(),
        "external http entity": node_xml(doctype=f'<!DOCTYPE device [<!ENTITY x SYSTEM "{url}/entity">]>',
                                         product="&x;").encode(),
        "parameter entity over http": node_xml(
            doctype=f'<!DOCTYPE device [<!ENTITY % p SYSTEM "{url}/p.dtd"> %p;]>').encode(),
        "external DTD over http": node_xml(doctype=f'<!DOCTYPE device SYSTEM "{url}/device.dtd">').encode(),
        "external DTD file": node_xml(doctype=f'<!DOCTYPE device SYSTEM "file://{sentinel}">').encode(),
        "xinclude of a file": node_xml(
            product=f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file://{sentinel}" '
                    f'parse="text"/>').encode(),
        "schema location over http": valid.replace(
            b"<device>", f'<device xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                         f'xsi:noNamespaceSchemaLocation="{url}/s.xsd">'.encode()),
    }
    for cut in range(1, 10):  # truncated anywhere
        cases[f"truncated at {cut}0%"] = valid[: len(valid) * cut // 10]
    return cases


RUNNER = r"""
import json, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a bomb hits this, not the host
mode, casedir = sys.argv[1], sys.argv[2]
if mode == "unsafe":  # the harness's own check: what an unsafe parser would do
    from lxml import etree
    def parse(xml):
        parser = etree.XMLParser(resolve_entities=True, load_dtd=True, no_network=False)
        return etree.tostring(etree.fromstring(xml, parser)).decode("utf-8", "replace")
else:
    from passthrough_exporter.reading.sources.libvirt_xml import node_device
    def parse(xml):
        return node_device(xml).device
for name in sorted(os.listdir(casedir)):
    with open(os.path.join(casedir, name), "rb") as f:
        xml = f.read()
    t0 = time.monotonic()
    try:
        out = {"outcome": "device", "repr": repr(parse(xml))}
    except MemoryError:
        out = {"outcome": "MemoryError"}
    except RecursionError:
        out = {"outcome": "RecursionError"}
    except Exception as exc:
        out = {"outcome": "error", "error": type(exc).__name__ + ": " + str(exc)[:200]}
    out.update(case=name, seconds=time.monotonic() - t0)
    out["size"] = len(out.get("repr", ""))
    out["repr"] = out.get("repr", "")[:2000]
    print(json.dumps(out), flush=True)
"""


def run_cases(mode: str, cases: dict[str, bytes], tmp: Path, listener: socket.socket) -> tuple[dict, list[str]]:
    """Run every case in one child; returns per-case results and the child's opens/connects (strace)."""
    casedir = tmp / "cases"
    casedir.mkdir()
    names = {}
    for i, (name, xml) in enumerate(cases.items()):
        (casedir / f"{i:03d}").write_bytes(xml)
        names[f"{i:03d}"] = name
    cmd = [sys.executable, "-c", RUNNER, mode, str(casedir)]
    trace = tmp / "strace.txt"
    if shutil.which("strace"):
        cmd = ["strace", "-f", "-qq", "-e", "trace=open,openat,connect", "-o", str(trace), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    results = {names[r["case"]]: r for r in map(json.loads, out.stdout.splitlines())}
    assert len(results) == len(cases), out.stderr[-3000:]  # the child got through every case
    calls = trace.read_text().splitlines() if trace.exists() else []
    return results, calls


@pytest.fixture
def world(tmp_path: Path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text(SENTINEL_TEXT + "\n")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    yield sentinel, listener
    listener.close()


def connections(listener: socket.socket) -> int:
    n = 0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
            conn.close()
            n += 1
        except BlockingIOError:
            time.sleep(0.02)
    return n


def test_the_harness_catches_an_unsafe_parser(world, tmp_path: Path) -> None:
    """lxml with entities resolved reads the sentinel: the checks below would see a parser that did."""
    sentinel, listener = world
    port = listener.getsockname()[1]
    cases = {k: v for k, v in hostile_cases(sentinel, port).items() if k in ("external file entity",)}
    results, calls = run_cases("unsafe", cases, tmp_path, listener)
    assert SENTINEL_TEXT in results["external file entity"]["repr"]
    if calls:
        assert any(str(sentinel) in c for c in calls)


def test_a_sane_document_parses() -> None:
    dev = parse_node_device(node_xml())
    assert (dev.name, dev.type, dev.parent, dev.iommu_group) == ("pci_0000_01_00_0", "pci", "pci_0000_00_01_0", 2)
    assert parse_node_device(node_xml().encode()) == dev


def test_hostile_documents(world, tmp_path: Path) -> None:
    sentinel, listener = world
    port = listener.getsockname()[1]
    cases = hostile_cases(sentinel, port)
    results, calls = run_cases("parser", cases, tmp_path, listener)
    summary = {}
    for name, r in results.items():
        assert r["outcome"] in ("device", "error"), (name, r)  # no MemoryError, no RecursionError
        assert r["seconds"] < 10, (name, r["seconds"])
        assert SENTINEL_TEXT not in r["repr"], name
        assert r["size"] < 1 << 20 or name == "20 MB product name", (name, r["size"])  # nothing expanded
        summary[name] = r["outcome"]
    for name in ("empty", "not xml", "unclosed root", "mismatched tag", "binary junk", "two roots",
                 "truncated at 50%"):
        assert summary[name] == "error", (name, results[name])
    assert connections(listener) == 0
    assert not [c for c in calls if str(sentinel) in c]
    assert not [c for c in calls if "connect(" in c and f"htons({port})" in c]
    print("\nhostile XML:", json.dumps(summary, indent=0))


# --- what parsed documents make of the inventory ------------------------------------------------------

def test_duplicates_cycles_and_self_parents_from_xml() -> None:
    docs = [
        node_xml("pci_0000_01_00_0", "computer"),
        node_xml("pci_0000_01_00_0", "computer", group="7"),  # the same name twice
        node_xml("pci_0000_02_00_0", "pci_0000_02_00_0"),  # its own parent
        node_xml("pci_0000_03_00_0", "pci_0000_04_00_0"),  # 3 -> 4 -> 3
        node_xml("pci_0000_04_00_0", "pci_0000_03_00_0"),
        node_xml("pci_0000_05_00_0", "pci_0000_77_00_0"),  # a parent that is not there
    ]
    inv = Inventory(parse_node_device(d) for d in docs)
    assert dict(inv.errors) == {"duplicate": 1, "parent_cycle": 2, "missing_parent": 1}
    assert inv.devices["pci_0000_01_00_0"].iommu_group == 2  # the first one kept
    snap = inspector().judge(inv, source="libvirt")
    assert set(snap.verdicts) == set(inv.devices)
    for name in inv.devices:
        assert name not in set(inv.descendants(name))
    exposition = render(dataclasses.replace(snap, errors_total=dict(snap.errors)))
    assert b'passthrough_collect_errors_total{kind="parent_cycle"} 2.0' in exposition
