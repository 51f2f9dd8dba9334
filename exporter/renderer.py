"""A judged snapshot made into what the server hands out (`Served`): every body of one refresh,
rendered once, by whichever process ran the refresh."""

from __future__ import annotations

from array import array

from . import hostpage, jsonout
from .bodies import gzipped_open
from .metrics import MetricOptions, Status, render, render_status
from .served import DeviceTable, Served
from .snapshot import Snapshot

EMPTY_TABLE = DeviceTable((), (), b"", b"", b"", array("q"), array("i"), array("q"), array("i"), array("q"),
                          array("i"), {})


def render_served(snap: Snapshot, options: MetricOptions) -> Served:
    status = Status.of(snap)
    tail = render_status(status)
    # Before the first good refresh (Snapshot.empty: nothing judged) only the status families are
    # served: a placeholder host fact (IOMMU off, an empty group layout) would fire alerts.
    judged = bool(snap.verdicts)
    metrics = render(snap, options) if judged else tail
    assert metrics.endswith(tail), "the status families must close the exposition"
    findings = (jsonout.dumps([f.to_json() for f in snap.findings]) + "\n").encode()
    return Served(status, len(snap.inventory), metrics, len(metrics) - len(tail),
                  gzipped_open(metrics), findings,
                  hostpage.render(snap, options.telemetry_path) if judged else b"", device_table(snap) if judged else EMPTY_TABLE)


def device_table(snap: Snapshot) -> DeviceTable:
    names = tuple(snap.inventory.devices)
    index = {name: i for i, name in enumerate(names)}
    verdicts, states, affected = snap.verdicts, snap.states, snap.affected
    text = bytearray()  # one growing buffer: a list of the objects and its join would hold them twice
    ends, shared_of, shared_ends, shared_items = array("q"), array("i"), array("q"), array("i")
    own_ends, own_items = array("q"), array("i")
    shared_ids: dict[int, int] = {}  # id of a shared frozenset (alive in the snapshot) -> its number
    item = jsonout.array_item
    for name in names:
        text += item(snap.device_object(name)).encode()
        ends.append(len(text))
        aff = affected.get(name)
        if aff is None or not aff.shared:
            shared_of.append(-1)
        else:
            number = shared_ids.get(id(aff.shared))
            if number is None:
                number = shared_ids[id(aff.shared)] = len(shared_ids)
                shared_items.extend(sorted([index[n] for n in aff.shared]))  # not the set's order: it varies
                shared_ends.append(len(shared_items))
            shared_of.append(number)
        if aff is not None and aff.own:
            own_items.extend(sorted([index[n] for n in aff.own]))
        own_ends.append(len(own_items))
    return DeviceTable(
        names,
        tuple(dev.type for dev in snap.inventory),
        bytes([verdicts[n].eligible for n in names]),
        bytes([states.get(n) == "available" for n in names]),
        text, ends, shared_of, shared_ends, shared_items, own_ends, own_items, index)
