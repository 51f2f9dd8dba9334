"""The site policy file format: allow/deny rules with device selectors and the devices the host
must have, parsed once at start.

Selectors follow Nova's `[pci] device_spec` and KubeVirt's `permittedHostDevices`::

    unmatched = "abstain"          # or "deny": an allow list, as Nova and KubeVirt use them

    [[rule]]
    action = "deny"
    reason = "carries the management network"
    address = "0000:00:19.0"

    [[rule]]
    action = "allow"
    reason = "approved GPU models"
    vendor_id = "0x10de"
    product_id = ["0x2484", "0x2206"]

Every selector a rule names must match (AND); a list matches any of its values (OR).
The `policy` plugin (this package) turns matching rules into verdicts; deny beats allow.

`[[expect]]` tables name a PCI address and what must be found there (`expect.py` compares)::

    [[expect]]
    address = "0000:3b:00.0"
    vendor_id = "0x10de"
    driver = "vfio-pci"
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import translate
from pathlib import Path
from typing import Any

import tomllib

from ...inputs import read_operator_file
from ...model import KNOWN_TYPES, PASSABLE_TYPES, Device, Inventory, Verdict
from ...reading.sysfs.attrs import BadAttribute, hex_id
from ...settings import ConfigError
from .expect import FIELDS, ID_FIELDS, Expectation

ACTIONS = ("allow", "deny")
UNMATCHED = ("abstain", "deny")
SELECTORS = ("vendor_id", "product_id", "class", "address", "driver", "type", "numa_node", "name", "physfn")
RULE_KEYS = ("action", "reason", *SELECTORS)
EXPECT_KEYS = ("address", *FIELDS)
TABLES = ("rule", "expect")

# Bounds on what the operator's file may ask for, checked before it costs anything. A policy is a
# few kilobytes; tomllib's time and memory grow with the square of a dotted key's parts (80 KB of
# `a.a.a...` take 6 GB), and every refresh tests each device against every rule.
MAX_FILE_SIZE = 1 << 20
MAX_TABLES = 4096  # of each kind, [[rule]] and [[expect]]
MAX_KEY_PARTS = 16  # a policy's keys have one part; a key of more is refused before tomllib sees it
_KEY_PART = r"""[ \t]*(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')[ \t]*"""
# A line (where every TOML key/value statement starts) that begins with a key of too many parts.
_DEEP_KEY = re.compile(rf"^{_KEY_PART}(?:\.{_KEY_PART}){{{MAX_KEY_PARTS}}}", re.MULTILINE)

_HEX = re.compile(r"(?:0x)?([0-9a-f]+)")
_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
# domain:bus:device.function; the domain has more than 4 digits behind Intel VMD.
_PCI_ADDRESS = re.compile(r"([0-9a-f]{4,8}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])")

Match = Callable[[Device, Inventory], bool]


class PolicyError(ConfigError):
    """An invalid policy file; the message reads `FILE:LINE: what is wrong`."""


@dataclass(frozen=True, slots=True)
class Rule:
    action: str  # allow | deny
    reason: str
    selectors: tuple[tuple[str, Any], ...]  # (selector, normalized value), for display
    tests: tuple[Match, ...]
    line: int | None = None

    def matches(self, device: Device, inventory: Inventory) -> bool:
        for test in self.tests:  # a loop, not all(<generator>): this runs rules x devices times
            if not test(device, inventory):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    unmatched: str = "abstain"
    path: str = "<policy>"
    expectations: tuple[Expectation, ...] = ()

    def verdict(self, device: Device, inventory: Inventory) -> Verdict | None:
        """Every matching rule's reason; a matching deny wins over matching allows."""
        hits = [r for r in self.rules if r.matches(device, inventory)]
        denials = [r.reason for r in hits if r.action == "deny"]
        if denials:
            return Verdict(False, tuple(f"site policy: {r}" for r in denials))
        if hits:
            return Verdict(True, tuple(f"site policy: {r.reason}" for r in hits))
        if self.unmatched == "deny" and device.type in PASSABLE_TYPES:
            return Verdict.deny(f"site policy: no allow rule matches (unmatched = \"deny\" in {self.path})")
        return None


def load(path: str | Path) -> Policy:
    """Read and check a policy file; raise PolicyError naming the file, line and reason."""
    try:
        text = read_operator_file(str(path), MAX_FILE_SIZE, "policy file").decode("utf-8")
    except ConfigError as exc:
        raise PolicyError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return parse(text, str(path))


def parse(text: str, path: str = "<policy>") -> Policy:
    deep = _DEEP_KEY.search(text)
    if deep:
        line = text.count("\n", 0, deep.start()) + 1
        raise PolicyError(f"{path}:{line}: a key of more than {MAX_KEY_PARTS} dotted parts; policy keys have one")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _AT_LINE.search(msg)
        if m:
            raise PolicyError(f"{path}:{m.group(1)}:{m.group(2)}: {msg[:m.start()]}") from None
        raise PolicyError(f"{path}: {msg}") from None
    except RecursionError:  # arrays or inline tables nested thousands deep: tomllib recurses
        raise PolicyError(f"{path}: arrays or inline tables nested too deeply") from None
    lines = _Lines(text, path)
    for key in doc:
        if key not in ("unmatched", *TABLES):
            raise lines.error(f"unknown top-level key {key!r}; expected 'unmatched', [[rule]] or [[expect]] tables",
                              key=key)
    unmatched = doc.get("unmatched", "abstain")
    if unmatched not in UNMATCHED:
        raise lines.error(f"unmatched must be one of {', '.join(map(repr, UNMATCHED))}, not {unmatched!r}",
                          key="unmatched")
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        raise lines.error("rules are written as [[rule]] tables", key="rule")
    raw_expects = doc.get("expect", [])
    if not isinstance(raw_expects, list) or not all(isinstance(e, dict) for e in raw_expects):
        raise lines.error("expected devices are written as [[expect]] tables", key="expect")
    for table, raw in (("rule", raw_rules), ("expect", raw_expects)):
        if len(raw) > MAX_TABLES:
            raise PolicyError(f"{path}: {len(raw)} [[{table}]] tables; at most {MAX_TABLES} are read "
                              "(every refresh tests each device against each one)")
    rules = tuple(_rule(i, raw, lines) for i, raw in enumerate(raw_rules))
    expectations: dict[str, tuple[int, Expectation]] = {}  # address -> (index, expectation)
    for i, raw in enumerate(raw_expects):
        exp = _expect(i, raw, lines)
        if exp.address in expectations:  # two tables for one device: which one holds is a guess
            j, first = expectations[exp.address]
            at = f" (line {first.line})" if first.line else ""
            raise lines.error(f"expect {i + 1}: address {exp.address} is already expected by expect {j + 1}{at}",
                              ("expect", i), "address")
        expectations[exp.address] = (i, exp)
    return Policy(rules=rules, unmatched=unmatched, path=path,
                  expectations=tuple(exp for _, exp in expectations.values()))


def _rule(index: int, raw: dict[str, Any], lines: _Lines) -> Rule:
    def fail(msg: str, key: str | None = None) -> PolicyError:
        return lines.error(f"rule {index + 1}: {msg}", ("rule", index), key)

    for key in raw:
        if key not in RULE_KEYS:
            raise fail(f"unknown key {key!r}; selectors are {', '.join(SELECTORS)}", key)
    action = raw.get("action")
    if action not in ACTIONS:
        raise fail(f"action must be \"allow\" or \"deny\", not {action!r}", "action" if "action" in raw else None)
    reason = raw.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise fail("every rule needs a reason (a non-empty string): it is shown in the verdict",
                   "reason" if "reason" in raw else None)
    selectors, tests = [], []
    for key in SELECTORS:
        if key not in raw:
            continue
        try:
            value, test = _SELECTOR_BUILDERS[key](raw[key])
        except ValueError as exc:
            raise fail(f"{key}: {exc}", key) from None
        selectors.append((key, value))
        tests.append(test)
    if not tests:
        raise fail(f"no selector; give at least one of {', '.join(SELECTORS)} (name = \"*\" matches every device)")
    return Rule(action, reason.strip(), tuple(selectors), tuple(tests), lines.table_line("rule", index))


def _expect(index: int, raw: dict[str, Any], lines: _Lines) -> Expectation:
    def fail(msg: str, key: str | None = None) -> PolicyError:
        return lines.error(f"expect {index + 1}: {msg}", ("expect", index), key)

    for key in raw:
        if key not in EXPECT_KEYS:
            raise fail(f"unknown key {key!r}; keys are {', '.join(EXPECT_KEYS)}", key)
    if "address" not in raw:
        raise fail('no address; every [[expect]] names a PCI address like "0000:3b:00.0"')
    try:
        address = _pci_address(raw["address"])
    except ValueError as exc:
        raise fail(f"address: {exc}", "address") from None
    fields: list[tuple[str, str | int]] = []
    for key in FIELDS:
        if key not in raw:
            continue
        try:
            fields.append((key, _expected_value(key, raw[key])))
        except ValueError as exc:
            raise fail(f"{key}: {exc}", key) from None
    return Expectation(address, tuple(fields), lines.table_line("expect", index))


def _pci_address(value: Any) -> str:
    """'0000:3B:00.0' -> '0000:3b:00.0'. PCI only: USB bus and SCSI host numbers follow the order
    controllers are probed in, so they are no identity to expect across reboots."""
    m = _PCI_ADDRESS.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f'{value!r} is not a PCI address like "0000:3b:00.0" (domain:bus:device.function; '
                         "USB and SCSI addresses cannot be expected)")
    domain, bus, dev, fn = (int(g, 16) for g in m.groups())
    return f"{domain:04x}:{bus:02x}:{dev:02x}.{fn:x}"


def _expected_value(key: str, value: Any) -> str | int:
    if key in ID_FIELDS:
        if not isinstance(value, str):  # TOML reads 0x10de unquoted as the number 4318
            raise ValueError(f'{value!r} is not a hex id string like "0x10de" (write it in quotes)')
        return _hex_id(value)
    if key == "driver":
        if not isinstance(value, str) or (value and not re.fullmatch(r"[^\s/]+", value)):
            raise ValueError(f'{value!r} is not a driver name like "vfio-pci" ("" expects no driver)')
        return value
    # iommu_group, sriov_numvfs
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a number (0 or more)")
    return value


# --- selectors: each turns a TOML value into (normalized value, test) or raises ValueError ---


def _values(value: Any, kind: type, what: str) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("an empty list matches nothing")
    for v in items:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ValueError(f"{v!r} is not {what}")
    return items


def _hex_id(text: str) -> str:
    try:
        return hex_id(text, 4)
    except BadAttribute:
        raise ValueError(f"{text!r} is not a 4-digit hex id like \"0x10de\"") from None


def _id_selector(field: str) -> Callable[[Any], tuple[Any, Match]]:
    def build(value: Any) -> tuple[Any, Match]:
        raw = _values(value, str, "a hex id string like \"0x10de\"")
        if "*" in raw:  # Nova's wildcard: any id
            return ("*",), lambda d, inv: True
        ids = frozenset(_hex_id(v) for v in raw)
        return tuple(sorted(ids)), lambda d, inv: getattr(d, field) in ids

    return build


def _class(value: Any) -> tuple[Any, Match]:
    masks: list[tuple[int, int]] = []
    for text in _values(value, str, "a class string like \"0x0300\" or \"0x030000/0xff0000\""):
        val, sep, mask = text.strip().lower().partition("/")
        v = _HEX.fullmatch(val)
        if sep:  # value/mask, both full 24-bit class codes
            mm = _HEX.fullmatch(mask)
            if not v or not mm or len(v.group(1)) > 6 or len(mm.group(1)) > 6:
                raise ValueError(f"{text!r} is not a value/mask pair like \"0x030000/0xff0000\"")
            masks.append((int(v.group(1), 16), int(mm.group(1), 16)))
        else:  # prefix: base class (2 digits), base+subclass (4) or the full code (6)
            if not v or len(v.group(1)) not in (2, 4, 6):
                raise ValueError(f"{text!r} is not a class prefix like \"0x03\", \"0x0300\" or \"0x030000\"")
            digits = v.group(1)
            shift = 4 * (6 - len(digits))
            masks.append((int(digits, 16) << shift, (0xFFFFFF >> shift) << shift))

    def test(d: Device, inv: Inventory) -> bool:
        if not d.pci_class:
            return False
        try:
            code = int(d.pci_class, 16)
        except ValueError:
            return False
        return any(code & mask == val & mask for val, mask in masks)

    return tuple(f"0x{v:06x}/0x{m:06x}" for v, m in masks), test


def _glob(get: Callable[[Device, Inventory], str | None], lower: bool = True) -> Callable[[Any], tuple[Any, Match]]:
    def build(value: Any) -> tuple[Any, Match]:
        pats = tuple(p.lower() if lower else p for p in _values(value, str, "a string or glob"))
        # Compiled here, once: fnmatch compiles on each call through a cache of 32,768 patterns,
        # which thousands of rules would churn. Plain values are a set lookup.
        exact = frozenset(p for p in pats if not _GLOB_CHARS.search(p))
        globs = [translate(p) for p in pats if p not in exact]
        match = re.compile("|".join(globs)).match if globs else None

        def test(d: Device, inv: Inventory) -> bool:
            got = get(d, inv)
            if got is None:
                return False
            got = got.lower() if lower else got
            return got in exact or (match is not None and match(got) is not None)

        return pats, test

    return build


_GLOB_CHARS = re.compile(r"[*?\[]")


def _type(value: Any) -> tuple[Any, Match]:
    types = _values(value, str, "a device type")
    for t in types:
        if t not in KNOWN_TYPES:
            raise ValueError(f"{t!r} is not a device type; choose from {', '.join(KNOWN_TYPES)}")
    chosen = frozenset(types)
    return tuple(sorted(chosen)), lambda d, inv: d.type in chosen


def _numa_node(value: Any) -> tuple[Any, Match]:
    nodes = frozenset(_values(value, int, "a NUMA node number"))
    return tuple(sorted(nodes)), lambda d, inv: d.numa_node in nodes


def _pf_address(d: Device, inv: Inventory) -> str | None:
    if d.physfn is None:
        return None
    pf = inv.get(d.physfn)
    return pf.address if pf is not None and pf.address else None


_SELECTOR_BUILDERS: dict[str, Callable[[Any], tuple[Any, Match]]] = {
    "vendor_id": _id_selector("vendor_id"),
    "product_id": _id_selector("product_id"),
    "class": _class,
    "address": _glob(lambda d, inv: d.address),
    # A driverless device has driver "": `driver = ""` selects unbound devices.
    "driver": _glob(lambda d, inv: d.driver or "", lower=False),
    "type": _type,
    "numa_node": _numa_node,
    "name": _glob(lambda d, inv: d.name, lower=False),
    "physfn": _glob(_pf_address),  # address glob of an SR-IOV VF's physical function
}


class _Lines:
    """Line numbers for semantic errors, which tomllib cannot give: found by scanning the text."""

    _HEADER = re.compile(r"^\s*\[")
    _TABLE = re.compile(rf"^\s*\[\[\s*({'|'.join(TABLES)})\s*\]\]")

    def __init__(self, text: str, path: str) -> None:
        self.lines = text.splitlines()
        self.path = path
        self.starts: dict[str, list[int]] = {name: [] for name in TABLES}  # table -> 0-based header lines
        for i, line in enumerate(self.lines):
            m = self._TABLE.match(line)
            if m:
                self.starts[m.group(1)].append(i)

    def table_line(self, table: str, index: int) -> int | None:
        """The 1-based line of the header of the `index`th [[table]]."""
        starts = self.starts[table]
        return starts[index] + 1 if index < len(starts) else None

    def _key_line(self, start: int, key: str) -> int | None:
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(start, len(self.lines)):
            if i > start and self._HEADER.match(self.lines[i]):
                break
            if pattern.match(self.lines[i]):
                return i + 1
        return None

    def error(self, msg: str, table: tuple[str, int] | None = None, key: str | None = None) -> PolicyError:
        """`table`: (name, index) of the [[name]] table at fault; None for a top-level key."""
        line: int | None = None
        if table is None:
            if key:
                top = re.compile(rf"^\s*(\[+\s*)?[\"']?{re.escape(key)}[\"']?\s*[=\].]")
                line = next((i + 1 for i, text in enumerate(self.lines) if top.match(text)), None)
        else:
            start = self.table_line(*table)
            if start is not None:
                line = (self._key_line(start - 1, key) if key else None) or start
        return PolicyError(f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}")
