"""The host page (`/`): the host's isolation facts and findings, then each IOMMU group as a box
holding its devices, each in words and colour: available, in use by a VM, assigned, not eligible
(with the reason), unreachable.

Danger is shown where it is: a group box and a device card carry their own warning and critical
findings in words ("critical: group mixed", "warning: no FLR"), and the box is styled by the worst.
The findings on top are one entry per code (its subjects, its fix once), so a host with the same
finding on many devices still shows its groups on the first screen.

Server-rendered HTML and CSS in one response: no JavaScript, no external assets, readable in a
terminal browser (states and severities are words; colour only repeats them). SR-IOV virtual
functions fold under their PF (`<details>`) with counts per state, so a host with thousands of VFs
stays readable. Rendered once per snapshot, like every other body.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from html import escape as _html_escape
from urllib.parse import quote

from .. import __version__
from ..judging.facts import GroupStatus
from ..judging.live import host_blocker
from ..judging.snapshot import Snapshot
from ..model import COMPUTER, Device, Finding, Inventory, natural_key
from ..textsafe import visible
from .exposition import DEFAULT_TELEMETRY_PATH
from .status import SOURCE_STATE_MARK

STATE_WORDS = {"available": "available", "in_use": "in use", "assigned": "assigned", "blocked": "blocked",
               "ineligible": "not eligible", "unreachable": "unreachable"}
SEVERITY_ORDER = ("critical", "warning", "info")
SUBJECTS_SHOWN = 10  # subjects listed per finding code; more are counted (a big host has thousands of groups)
# Display only: how a word of a finding code is spelled in a label. Codes belong to the plugins; the
# label is the code with underscores as spaces, these abbreviations in capitals.
WORD_SPELLING = {"flr": "FLR", "vga": "VGA", "iommu": "IOMMU", "pcie": "PCIe", "rmrr": "RMRR", "acs": "ACS",
                 "aer": "AER", "usb": "USB", "vfio": "VFIO", "sriov": "SR-IOV", "vf": "VF", "vgpu": "vGPU"}

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1em 0 .4em}
.facts{display:flex;flex-wrap:wrap;gap:.5em 1.5em;margin:.5em 0}.facts strong{font-weight:600}
.ok{color:#1a7f37}.bad{color:#b3261e}.warn{color:#9a6700}
.finding{margin:.25em 0;padding-left:.5em;border-left:.25em solid #d0d7de}
.finding.critical{border-color:#b3261e}.finding.warning{border-color:#bf8700}
.finding .fix{color:#555}.finding code{color:#57606a;font-size:.9em}
.infos summary{color:#57606a}
.sev{font-weight:600}.sev.critical{color:#b3261e}.sev.warning{color:#9a6700}.sev.info{color:#57606a}
.flags .sev{display:inline-block;font-size:.92em;padding:0 .35em;border-radius:3px;margin-right:.3em}
.flags .sev.critical{background:#b3261e;color:#fff}.flags .sev.warning{background:#fff0c2;color:#6f4e00}
.groups{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(26em,100%),1fr));gap:.8em}
.group{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.5em .8em;min-width:0}
.group.warning{border:2px solid #bf8700}.group.critical{border:3px solid #b3261e;background:#fff8f7}
.group h3{font-size:1em;margin:.2em 0 .4em}
.dev{border-left:.35em solid #d0d7de;padding:.15em .5em;margin:.3em 0}
.dev.warning{background:#fff8e1}.dev.critical{background:#ffebe9;outline:1px solid #b3261e}
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
.finding,.group,.dev,.facts,summary{overflow-wrap:anywhere}
"""


def escape(text: str) -> str:
    """HTML-escaped, control characters written out: the page shows them, a copy-paste sends none."""
    return _html_escape(visible(text))


def render(snap: Snapshot, telemetry_path: str = DEFAULT_TELEMETRY_PATH) -> bytes:
    """The whole page for one snapshot, as UTF-8 bytes; `telemetry_path` is where the metrics are linked."""
    return "".join(_page(snap, telemetry_path)).encode("utf-8", "backslashreplace")


def label(code: str) -> str:
    """A finding code in words: `no_flr` -> "no FLR", `group_mixed` -> "group mixed"."""
    return " ".join(WORD_SPELLING.get(word, word) for word in code.split("_"))


@dataclass(frozen=True, slots=True)
class _Context:
    snap: Snapshot
    own: Mapping[str, Sequence[Finding]]  # subject -> its warning and critical findings, in listing order
    boxes: frozenset[int]  # groups drawn as a box of their own (a VF's group folds under its PF)


def _page(snap: Snapshot, metrics: str) -> Iterator[str]:
    inv = snap.inventory
    own: dict[str, list[Finding]] = {}
    for f in snap.findings:
        if f.severity != "info":  # info asks nothing of the operator: it stays in the list on top
            own.setdefault(f.subject, []).append(f)
    ctx = _Context(snap, own, frozenset(n for n, st in snap.facts.groups.items() if not _folded(inv, st)))
    yield ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
           '<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>passthrough-exporter: {len(inv) - 1} devices</title><style>{CSS}</style></head><body>")
    yield "<h1>Device passthrough on this host</h1>"
    yield from _changes(snap)
    yield from _facts(snap)
    yield from _findings(ctx)
    yield '<h2 class="groups">IOMMU groups</h2><div class="groups">'
    yield from _groups(ctx)
    yield "</div>"
    yield ('<p class="why">JSON: <a href="/api/devices">/api/devices</a> · <a href="/api/findings">/api/findings</a>'
           f' · <a href="/api/devices?available=true">available now</a> · metrics: <a href="{escape(metrics)}">'
           f"{escape(metrics)}</a>"
           f" · passthrough-exporter {escape(__version__)}</p></body></html>\n")


def _yes_no(value: bool | None, yes: str, no: str, unknown: str = "unknown") -> str:
    if value is None:
        return f'<span class="warn">{unknown}</span>'
    return f'<span class="ok">{yes}</span>' if value else f'<span class="bad">{no}</span>'


def _facts(snap: Snapshot) -> Iterator[str]:
    host, facts = snap.inventory.host, snap.facts
    weakened = [r.replace("_", " ") for r, on in facts.weakened.items() if on]
    counts = Counter(snap.states.values())
    items = []
    if len(snap.inventory) > 1 and (blocker := host_blocker(snap.inventory, facts)):  # more than the root
        # The blocker reads "<cause>: <consequence>"; the bar leads with the consequence.
        cause = blocker.partition(":")[0]
        items.append(f'<span class="bad"><strong>VFIO cannot assign</strong>: {escape(cause)}</span>')
    items.append(f"<span><strong>IOMMU</strong>: {_yes_no(host.iommu_groups_present, 'on', 'off')}</span>")
    items.append(f"<span><strong>Interrupt remapping</strong>: {_yes_no(host.interrupt_remapping, 'on', 'off')}</span>")
    shown = f'<span class="bad">{escape(", ".join(weakened))}</span>' if weakened else '<span class="ok">no</span>'
    items.append(f"<span><strong>Isolation weakened</strong>: {shown}</span>")
    items.append(f"<span><strong>Source</strong>: {escape(snap.source)} {SOURCE_STATE_MARK.decode()}</span>")
    items.append(f"<span><strong>Devices</strong>: {counts['available']} available, {counts['in_use']} in use, "
                 f"{counts['assigned']} assigned, {counts['blocked']} blocked</span>")
    # Spaces between the items: the flex layout ignores them, a terminal browser needs them.
    yield '<div class="facts">' + " ".join(items) + "</div>"


def _changes(snap: Snapshot) -> Iterator[str]:
    """On top: what changed since the previous boot (the state file's record), the first thing to
    read after an upgrade; its findings, with what they mean for the VMs, are below."""
    changes = snap.facts.changes
    if changes:
        yield f'<h2 class="changes">Changed since the previous boot ({len(changes)})</h2><ul class="changes">'
        yield "".join(f"<li>{escape(c.line())}</li>" for c in changes)
        yield "</ul>"


def _findings(ctx: _Context) -> Iterator[str]:
    """One entry per code, critical first: a code on nine devices is one entry with nine subjects."""
    by_code: dict[str, list[Finding]] = {}
    for f in ctx.snap.findings:  # already critical first, so an entry sits where its worst finding does
        by_code.setdefault(f.code, []).append(f)
    counts = Counter(f.severity for f in ctx.snap.findings)
    total = len(ctx.snap.findings)
    summary = ", ".join(f"{counts[s]} {s}" for s in SEVERITY_ORDER if counts[s])
    yield f"<h2>Findings ({total}{': ' + summary if summary else ''})</h2>"
    if not total:
        yield '<p class="ok">none</p>'
        return
    infos = []
    for code, items in by_code.items():
        if _worst(items) == "info":
            infos.append((code, items))
        else:
            yield _entry(ctx, code, items)
    if infos:  # compact: one line until opened
        heads = ", ".join(f"{escape(label(code))} ({len(items)})" for code, items in infos)
        yield (f'<details class="infos"><summary><span class="sev info">info</span>: {heads}</summary>'
               + "".join(_entry(ctx, code, items) for code, items in infos) + "</details>")


def _worst(findings: Sequence[Finding]) -> str:
    return next(s for s in SEVERITY_ORDER if any(f.severity == s for f in findings))


def _entry(ctx: _Context, code: str, items: Sequence[Finding]) -> str:
    sev = _worst(items)
    subjects = sorted({f.subject for f in items}, key=natural_key)
    shown = ", ".join(_subject_link(ctx, s) for s in subjects[:SUBJECTS_SHOWN])
    more = f" and {len(subjects) - SUBJECTS_SHOWN} more" if len(subjects) > SUBJECTS_SHOWN else ""
    messages = {f.message for f in items}
    # One message for every subject (or one subject): say it; several differ: each is on its card and in the JSON.
    message = f": {escape(items[0].message)}" if len(messages) == 1 else ""
    fixes = list(dict.fromkeys(f.fix for f in items if f.fix))
    fix = "".join(f'<div class="fix">fix: {escape(x)}</div>' for x in fixes)
    count = f" ×{len(items)}" if len(items) > 1 else ""
    return (f'<div class="finding {sev}"><span class="sev {sev}">{sev}</span> <strong>{escape(label(code))}</strong>'
            f" <code>{escape(code)}</code>{count} on {shown}{more}{message}{fix}</div>")


def _subject_link(ctx: _Context, subject: str) -> str:
    """A subject, linked to its box or card on this page where it has one."""
    inv = ctx.snap.inventory
    kind, _, number = subject.partition(":")
    if kind == "group" and number.isdigit() and int(number) in ctx.boxes:
        return f'<a href="#group-{number}">{escape(subject)}</a>'
    dev = inv.devices.get(subject)
    if dev is not None and dev.type == "pci":
        return f'<a href="#{_anchor(subject)}">{escape(subject)}</a>'
    return escape(subject)


def _anchor(name: str) -> str:
    return "dev-" + quote(name, safe="")


def _flags(ctx: _Context, subject: str) -> tuple[str, str]:
    """(" " + css class of the worst, the subject's own findings in words by severity: "warning: no FLR"),
    or two empty strings when it has none."""
    mine = ctx.own.get(subject)
    if not mine:
        return "", ""
    words = []
    for sev in SEVERITY_ORDER:
        codes = list(dict.fromkeys(f.code for f in mine if f.severity == sev))
        if codes:
            title = escape(" / ".join(f.message for f in mine if f.severity == sev))
            words.append(f'<span class="sev {sev}" title="{title}">{sev}: '
                         f'{escape(", ".join(label(c) for c in codes))}</span>')
    return " " + _worst(mine), f'<span class="flags">{"".join(words)}</span>'


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


def _device(ctx: _Context, dev: Device) -> str:
    cls, words = _state(ctx.snap, dev)
    sev, flags = _flags(ctx, dev.name)
    what = " ".join(x for x in (dev.vendor, dev.product) if x) or f"{dev.vendor_id or ''} {dev.product_id or ''}".strip()
    driver = f" · driver {escape(dev.driver)}" if dev.driver else " · no driver"
    return (f'<div class="dev {cls}{sev}" id="{_anchor(dev.name)}">'
            f'<a class="name" href="/api/devices/{quote(dev.name)}">{escape(dev.name)}</a>'
            f" {escape(what)}<span class=\"why\">{driver}</span><br>"
            f'<span class="state">{escape(words)}</span>{" " + flags if flags else ""}{_below(ctx, dev)}</div>')


def _below(ctx: _Context, dev: Device) -> str:
    """The passable devices under a function (USB devices, disks): what goes with it, and their state."""
    inv = ctx.snap.inventory
    if dev.header_type not in (None, 0):  # a bridge: its endpoints show what is below them
        return ""
    below = [inv.devices[n] for n in inv.descendants(dev.name)
             if inv.devices[n].type in ("usb_device", "scsi") and not (inv.devices[n].address or "").startswith("usb")]
    if not below:
        return ""
    items = ", ".join(f"{escape(d.name)} ({escape(d.product or d.type)}: {escape(_state(ctx.snap, d)[1])}"
                      f"{'; ' + _flags(ctx, d.name)[1] if d.name in ctx.own else ''})" for d in below[:10])
    more = f" and {len(below) - 10} more" if len(below) > 10 else ""
    return f'<div class="below">below it: {items}{more}</div>'


def _vfs(ctx: _Context, pf: Device) -> str:
    inv = ctx.snap.inventory
    vfs = [inv.devices[n] for n in inv.virtual_functions(pf.name)]
    if not vfs:
        return ""
    states = [_state(ctx.snap, vf) for vf in vfs]
    counts = Counter(cls for cls, _ in states)
    summary = ", ".join(f"{n} {STATE_WORDS[s]}" for s, n in sorted(counts.items()))
    flagged = sum(vf.name in ctx.own for vf in vfs)
    if flagged:
        summary += f"; {flagged} with findings"
    lines = []
    for vf, (cls, words) in zip(vfs, states):
        sev, flags = _flags(ctx, vf.name)
        lines.append(f'<div class="dev {cls}{sev}" id="{_anchor(vf.name)}">'
                     f'<a class="name" href="/api/devices/{quote(vf.name)}">{escape(vf.name)}</a> '
                     f'<span class="state">{escape(words)}</span>'
                     f"{' · group ' + str(vf.iommu_group) if vf.iommu_group is not None else ''}"
                     f"{' ' + flags if flags else ''}</div>")
    return f"<details><summary>{len(vfs)} virtual functions: {escape(summary)}</summary>{''.join(lines)}</details>"


def _folded(inv: Inventory, st: GroupStatus) -> bool:
    """A VF's own group: shown folded under its PF."""
    return bool(st.devices) and all(inv.devices[n].physfn in inv.devices for n in st.devices)


def _viability(ctx: _Context, st: GroupStatus) -> str:
    """Whether VFIO would take the group as it is now, in words that do not contradict "available"."""
    if st.viable:
        return "viable"
    if st.mixed:
        return "split: part on VFIO, part on host drivers; VFIO refuses it until all are on VFIO"
    verdicts = ctx.snap.verdicts
    if any(n in verdicts and verdicts[n].eligible for n in st.endpoints):
        # Not a defect: handing a device out binds the whole group to VFIO (libvirt managed='yes').
        return "host drivers bound now; handing it out rebinds them"
    return "host drivers bound"


def _groups(ctx: _Context) -> Iterator[str]:
    inv, facts = ctx.snap.inventory, ctx.snap.facts
    for number, st in facts.groups.items():
        if number not in ctx.boxes:
            continue
        members = [inv.devices[n] for n in st.devices]
        sev, flags = _flags(ctx, f"group:{number}")
        yield (f'<section class="group{sev}" id="group-{number}"><h3>IOMMU group {number}'
               f'{" " + flags if flags else ""} <span class="why">· {len(members)} '
               f"function{'s' if len(members) != 1 else ''} · {escape(_viability(ctx, st))}</span></h3>")
        for dev in members:
            if dev.physfn in inv.devices:  # under its PF
                continue
            yield _device(ctx, dev) + _vfs(ctx, dev)
        yield "</section>"
    loose = [d for d in inv if d.type == "pci" and d.iommu_group is None and d.physfn not in inv.devices]
    if loose:
        yield '<section class="group"><h3>No IOMMU group <span class="why">· the kernel has no IOMMU groups for these</span></h3>'
        for dev in loose:
            yield _device(ctx, dev) + _vfs(ctx, dev)
        yield "</section>"
    others = [d for d in inv if d.type in ("usb_device", "scsi") and not _under_pci(inv, d)]
    if others:
        yield '<section class="group"><h3>Other devices <span class="why">· not below a listed PCI function</span></h3>'
        for dev in others:
            yield _device(ctx, dev)
        yield "</section>"


def _under_pci(inv: Inventory, dev: Device) -> bool:
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
