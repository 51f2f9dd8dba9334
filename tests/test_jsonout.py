"""The fast indented JSON writer gives json.dumps(..., indent=2)'s text for every value."""

from __future__ import annotations

import enum
import json
import math
import os
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from passthrough_exporter.rendering.jsonout import dumps, write_array
from passthrough_exporter.rendering.objects import device_object
from tests.support import hosts
from tests.support.local import judge_tree
from tests.support.process import EXE

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)


@given(values)
@settings(max_examples=600, deadline=None)
def test_same_text_as_json_dumps(value):
    assert dumps(value) == json.dumps(value, indent=2)


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


def test_values_json_converts_are_converted_the_same():
    # Tuples, str and int subclasses, non-str keys, nested empties, NaN and the infinities, non-ASCII.
    value = {
        "tuple": (1, "a", None), "sub": Name("x\u00e9\n\"\\"), "enum": Level.HIGH, 3: "int key", None: [],
        2.5: {}, True: [{}], "floats": [math.nan, math.inf, -math.inf, 1e-300, -0.0, 1.5],
        "deep": [[[["\x00\udcff\U0001f600"]]]],
    }
    assert dumps(value) == json.dumps(value, indent=2)
    assert dumps([value, {Name("k"): Level.HIGH}]) == json.dumps([value, {Name("k"): Level.HIGH}], indent=2)


def test_device_objects_of_a_workstation(tree):
    hosts.workstation(tree)
    snap = judge_tree(tree)
    objects = [device_object(snap, n, full=True) for n in snap.inventory.devices]
    assert len(objects) > 10
    assert dumps(objects) == json.dumps(objects, indent=2)


def test_devices_json_prints_the_indented_text(tree):
    hosts.workstation(tree)
    snap = judge_tree(tree)
    out = subprocess.run([EXE, "devices", "--json", "--path.pci-ids", "none", "--path.sysfs", str(tree.sys),
                          "--path.procfs", str(tree.proc)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr
    expected = json.dumps([device_object(snap, n) for n in snap.inventory.devices], indent=2) + "\n"
    assert out.stdout == expected


@given(st.lists(values, max_size=8), st.integers(min_value=1, max_value=200))
@settings(max_examples=300, deadline=None)
def test_an_array_written_in_pieces_is_the_same_text(items, chunk):
    pieces: list[str] = []
    write_array(iter(items), pieces.append, chunk)
    assert "".join(pieces) == json.dumps(items, indent=2)
    assert len(pieces) <= len(items) + 1  # a piece per item at most, never a piece per token
