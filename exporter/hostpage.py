"""The host page (`/`): the host's isolation facts and findings, then each IOMMU group as a box
holding its devices, each in words and colour: available, in use by a VM, assigned, not eligible
(with the reason), unreachable.

Server-rendered HTML and CSS in one response: no JavaScript, no external assets, readable in a
terminal browser (states are words; colour only repeats them). SR-IOV virtual functions fold under
their PF (`<details>`) with counts per state, so a host with thousands of VFs stays readable.
Rendered once per snapshot, like every other body.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from html import escape
from urllib.parse import quote

from . import __version__
from .model import COMPUTER, Device
from .snapshot import Snapshot

STATE_WORDS = {"available": "available", "in_use": "in use", "assigned": "assigned", "blocked": "blocked",
               "ineligible": "not eligible", "unreachable": "unreachable"}
SEVERITY_ORDER = ("critical", "warning", "info")
INFO_SHOWN = 20  # info findings listed; more are counted (a big host has thousands of groups)

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.2em 0 .4em}
.facts{display:flex;flex-wrap:wrap;gap:.5em 1.5em;margin:.5em 0}.facts strong{font-weight:600}
.ok{color:#1a7f37}.bad{color:#b3261e}.warn{color:#9a6700}
.finding{margin:.2em 0}.finding .fix{color:#555;margin-left:1.5em}
.sev{display:inline-block;min-width:5.5em;font-weight:600}
.groups{display:grid;grid-template-columns:repeat(auto-fill,minmax(26em,1fr));gap:.8em}
.group{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.5em .8em}
.group h3{font-size:1em;margin:.2em 0 .4em}
.dev{border-left:.35em solid #d0d7de;padding:.15em .5em;margin:.3em 0}
.dev .name{font-family:ui-monospace,monospace}
.dev .state{font-weight:600}
.available{border-color:#1a7f37}.available .state{color:#1a7f37}
.in_use{border-color:#0969da}.in_use .state{color:#0969da}
.assigned{border-color:#8250df}.assigned .state{color:#8250df}
.blocked{border-color:#9a6700}.blocked .state{color:#9a6700}
.ineligible{border-color:#8c959f}.ineligible .state{color:#57606a}
.unreachable{border-color:#b3261e;background:#fff1f0}.unreachable .state{color:#b3261e}
.why,.below{color:#57606a;font-size:.92em}
details{margin:.2em 0 .2em 1em}summary{cursor:pointer}
"""


def render(snap: Snapshot) -> bytes:
    """The whole page for one snapshot, as UTF-8 bytes."""
    return "".join(_page(snap)).encode("utf-8", "backslashreplace")


def _page(snap: Snapshot) -> Iterator[str]:
    inv = snap.inventory
    yield ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
           '<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>passthrough-exporter: {len(inv) - 1} devices</title><style>{CSS}</style></head><body>")
    yield "<h1>Device passthrough on this host</h1>"
    yield from _facts(snap)
    yield from _findings(snap)
    yield "<h2>IOMMU groups</h2><div class=\"groups\">"
    yield from _groups(snap)
    yield "</div>"
    yield ('<p class="why">JSON: <a href="/api/devices">/api/devices</a> · <a href="/api/findings">/api/findings</a>'
           ' · <a href="/api/devices?available=true">available now</a> · metrics: <a href="/metrics">/metrics</a>'
           f" · passthrough-exporter {escape(__version__)}</p></body></html>\n")


def _yes_no(value: bool | None, yes: str, no: str, unknown: str = "unknown") -> str:
    if value is None:
        return f'<span class="warn">{unknown}</span>'
    return f'<span class="ok">{yes}</span>' if value else f'<span class="bad">{no}</span>'


def _facts(snap: Snapshot) -> Iterator[str]:
    host, facts = snap.inventory.host, snap.facts
    weakened = [r.replace("_", " ") for r, on in facts.weakened.items() if on]
    counts = Counter(snap.states.values())
    yield '<div class="facts">'
    yield f"<span><strong>IOMMU</strong>: {_yes_no(host.iommu_groups_present, 'on', 'off')}</span>"
    yield f"<span><strong>Interrupt remapping</strong>: {_yes_no(host.interrupt_remapping, 'on', 'off')}</span>"
    yield ("<span><strong>Isolation weakened</strong>: "
           + (f'<span class="bad">{escape(", ".join(weakened))}</span>' if weakened else '<span class="ok">no</span>')
           + "</span>")
    yield (f"<span><strong>Source</strong>: {escape(snap.source)} "
           f"{_yes_no(snap.source_up, 'up', 'down (showing the last good read)')}</span>")
    yield (f"<span><strong>Devices</strong>: {counts['available']} available, {counts['in_use']} in use, "
           f"{counts['assigned']} assigned, {counts['blocked']} blocked</span>")
    yield "</div>"


def _findings(snap: Snapshot) -> Iterator[str]:
    by_sev = {sev: [f for f in snap.findings if f.severity == sev] for sev in SEVERITY_ORDER}
    total = sum(len(v) for v in by_sev.values())
    yield f"<h2>Findings ({total})</h2>"
    if not total:
        yield '<p class="ok">none</p>'
    for sev in SEVERITY_ORDER:
        items = by_sev[sev]
        shown = items if sev != "info" else items[:INFO_SHOWN]
        for f in shown:
            cls = {"critical": "bad", "warning": "warn", "info": ""}[sev]
            yield (f'<div class="finding"><span class="sev {cls}">{sev}</span> <code>{escape(f.code)}</code> '
                   f"[{escape(f.subject)}]: {escape(f.message)}")
            if f.fix and sev != "info":
                yield f'<div class="fix">fix: {escape(f.fix)}</div>'
            yield "</div>"
        if len(items) > len(shown):
            yield (f'<div class="finding why">… and {len(items) - len(shown)} more {sev} findings: '
                   '<a href="/api/findings">/api/findings</a></div>')


def _state(snap: Snapshot, dev: Device) -> tuple[str, str]:
    """(css class, words) of a device's state."""
    if dev.unreachable:
        return "unreachable", "unreachable: it fell off the bus"
    state = snap.states.get(dev.name, "ineligible")
    if state == "in_use":
        holder = snap.facts.in_use.get(dev.name)
        who = holder.vm or f"{holder.process} (pid {holder.pid})" if holder is not None else None
        return state, f"in use by {who}" if who else "in use"
    if state == "assigned":
        running = " (running)" if dev.assigned_running else " (shut off)" if dev.assigned_running is False else ""
        return state, f"assigned to {dev.assigned_to}{running}"
    if state == "ineligible":
        reasons = "; ".join(snap.verdicts[dev.name].reasons)
        return state, f"not eligible: {reasons}"
    if state == "blocked" and (why := snap.blocked_by.get(dev.name)):
        return state, f"blocked: {why}"
    return state, STATE_WORDS[state]


def _device(snap: Snapshot, dev: Device) -> str:
    cls, words = _state(snap, dev)
    what = " ".join(x for x in (dev.vendor, dev.product) if x) or f"{dev.vendor_id or ''} {dev.product_id or ''}".strip()
    driver = f" · driver {escape(dev.driver)}" if dev.driver else " · no driver"
    return (f'<div class="dev {cls}"><a class="name" href="/api/devices/{quote(dev.name)}">{escape(dev.name)}</a>'
            f" {escape(what)}<span class=\"why\">{driver}</span><br>"
            f'<span class="state">{escape(words)}</span>{_below(snap, dev)}</div>')


def _below(snap: Snapshot, dev: Device) -> str:
    """The passable devices under a function (USB devices, disks): what goes with it, and their state."""
    inv = snap.inventory
    if dev.header_type not in (None, 0):  # a bridge: its endpoints show what is below them
        return ""
    below = [inv.devices[n] for n in inv.descendants(dev.name)
             if inv.devices[n].type in ("usb_device", "scsi") and not (inv.devices[n].address or "").startswith("usb")]
    if not below:
        return ""
    items = ", ".join(f"{escape(d.name)} ({escape(d.product or d.type)}: {escape(_state(snap, d)[1])})"
                      for d in below[:10])
    more = f" and {len(below) - 10} more" if len(below) > 10 else ""
    return f'<div class="below">below it: {items}{more}</div>'


def _vfs(snap: Snapshot, pf: Device) -> str:
    inv = snap.inventory
    vfs = [inv.devices[n] for n in inv.virtual_functions(pf.name)]
    if not vfs:
        return ""
    counts = Counter(_state(snap, vf)[0] for vf in vfs)
    summary = ", ".join(f"{n} {STATE_WORDS[s]}" for s, n in sorted(counts.items()))
    lines = "".join(f'<div class="dev {_state(snap, vf)[0]}"><a class="name" href="/api/devices/{quote(vf.name)}">'
                    f"{escape(vf.name)}</a> <span class=\"state\">{escape(_state(snap, vf)[1])}</span>"
                    f"{' · group ' + str(vf.iommu_group) if vf.iommu_group is not None else ''}</div>" for vf in vfs)
    return f"<details><summary>{len(vfs)} virtual functions: {escape(summary)}</summary>{lines}</details>"


def _groups(snap: Snapshot) -> Iterator[str]:
    inv, facts = snap.inventory, snap.facts
    vf_groups = {inv.devices[n].iommu_group for n in inv.devices if inv.devices[n].physfn in inv.devices}
    for number, st in facts.groups.items():
        members = [inv.devices[n] for n in st.devices]
        if all(d.physfn in inv.devices for d in members) and number in vf_groups:
            continue  # a VF's own group: shown folded under its PF
        viable = "viable" if st.viable else "not viable (host drivers hold endpoints)"
        yield (f'<section class="group"><h3>IOMMU group {number} <span class="why">· {len(members)} '
               f"function{'s' if len(members) != 1 else ''} · {escape(viable)}</span></h3>")
        for dev in members:
            if dev.physfn in inv.devices:  # under its PF
                continue
            yield _device(snap, dev) + _vfs(snap, dev)
        yield "</section>"
    loose = [d for d in inv if d.type == "pci" and d.iommu_group is None and d.physfn not in inv.devices]
    if loose:
        yield '<section class="group"><h3>No IOMMU group <span class="why">· the kernel has no IOMMU groups for these</span></h3>'
        for dev in loose:
            yield _device(snap, dev) + _vfs(snap, dev)
        yield "</section>"
    others = [d for d in inv if d.type in ("usb_device", "scsi") and not _under_pci(inv, d)]
    if others:
        yield '<section class="group"><h3>Other devices <span class="why">· not below a listed PCI function</span></h3>'
        for dev in others:
            yield _device(snap, dev)
        yield "</section>"


def _under_pci(inv, dev: Device) -> bool:
    parent = dev.parent
    seen = 0
    while parent and parent != COMPUTER and seen < 64:
        p = inv.devices.get(parent)
        if p is None:
            return False
        if p.type == "pci":
            return True
        parent, seen = p.parent, seen + 1
    return False
