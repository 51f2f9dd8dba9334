"""Turns a umockdev recording (P:/E:/A:/H:/L: records) into a sysfs tree the sysfs source can read."""

from __future__ import annotations

import os
from pathlib import Path


def parse(text: str) -> list[dict]:
    """Records of a recording: {"path", "env": {..}, "attrs": {..}, "binary": {..}, "links": {..}}."""
    records, cur = [], None
    for line in text.splitlines():
        if line.startswith("P: "):
            cur = {"path": line[3:].strip(), "env": {}, "attrs": {}, "binary": {}, "links": {}}
            records.append(cur)
        elif cur is None or len(line) < 3 or line[1:3] != ": ":
            continue
        elif line[0] in "EALH":
            key, _, value = line[3:].partition("=")
            if line[0] == "E":
                cur["env"][key] = value
            elif line[0] == "A":
                # Values are C-escaped; newer recordings keep the attribute's trailing newline as "\n".
                cur["attrs"][key] = value.replace("\\n", "\n").replace("\\\\", "\\")
            elif line[0] == "H":
                cur["binary"][key] = bytes.fromhex(value)
            else:
                cur["links"][key] = value
    return records


def build(recording: Path, sys_root: Path) -> list[dict]:
    records = parse(recording.read_text(errors="replace"))
    for rec in records:
        d = sys_root / rec["path"].lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        for name, value in rec["attrs"].items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(value)
        for name, value in rec["binary"].items():
            (d / name).write_bytes(value)
        for name, target in rec["links"].items():
            if not (d / name).exists() and not (d / name).is_symlink():
                (d / name).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, d / name)
        subsystem = rec["env"].get("SUBSYSTEM")
        if subsystem in ("pci", "usb", "scsi"):
            bus = sys_root / "bus" / subsystem / "devices"
            bus.mkdir(parents=True, exist_ok=True)
            link = bus / d.name
            if not link.is_symlink():
                os.symlink(os.path.relpath(d, bus), link)
    return records
