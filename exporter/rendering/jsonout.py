"""JSON text exactly as `json.dumps(value, indent=2)` writes it, several times faster.

CPython (3.11 and 3.12) uses its C encoder only without `indent`; with it, every token goes through a
chain of Python generators. The command line prints device lists of 20,000 objects indented, so
this builds the same text with one call per value: strings through the C string encoder,
containers joined once. Anything but plain str/int/float/bool/None, lists and dicts with str keys
is handed to `json.dumps` itself (its text re-indented), so the output is the same for any value.
`write_array` writes a long array in pieces, so neither its objects nor its text are held whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as _string  # the C function where CPython has it

_INF = float("inf")
_KEYS: dict[str, str] = {}  # key -> its encoding and ": ", for the keys every object repeats
_KEYS_MAX = 4096


def dumps(value: object) -> str:
    """`json.dumps(value, indent=2)`: the same text."""
    return _encode(value, "\n")


def array_item(value: object) -> str:
    """`value` as an item of an indented array: its lines two spaces deeper, without the leading two."""
    return _encode(value, "\n  ")


def write_array(items: Iterable[object], write: Callable[[str], object], chunk: int = 1 << 20) -> None:
    """`json.dumps(list(items), indent=2)`, written in pieces of about `chunk` characters: a few
    writes for 20,000 device objects, and neither all the objects nor the whole text held at once."""
    first = separator = "[\n  "
    parts: list[str] = []
    size = 0
    for item in items:
        text = separator + _encode(item, "\n  ")
        separator = ",\n  "
        parts.append(text)
        size += len(text)
        if size >= chunk:
            write("".join(parts))
            parts, size = [], 0
    if separator is first:  # no item
        write("[]")
        return
    parts.append("\n]")
    write("".join(parts))


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value == _INF:
        return "Infinity"
    if value == -_INF:
        return "-Infinity"
    return float.__repr__(value)


def _encode(value: object, newline: str) -> str:
    """`value` at the indentation `newline` carries (a newline and the spaces of the current level)."""
    kind = type(value)
    if kind is str:
        return _string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        return _float(value)
    if kind is list:
        if not value:
            return "[]"
        inner = newline + "  "
        return "[" + inner + ("," + inner).join([_encode(v, inner) for v in value]) + newline + "]"
    if kind is dict:
        if not value:
            return "{}"
        inner = newline + "  "
        keys = _KEYS
        parts = []
        append = parts.append
        # The scalar values, most of a device object, inline: a call per value costs a third more.
        for k, v in value.items():
            key = keys.get(k) if type(k) is str else None
            if key is None:
                if not isinstance(k, str):  # json's own rules for other keys
                    return _fallback(value, newline)
                key = _string(k) + ": "
                if len(keys) < _KEYS_MAX:
                    keys[k] = key
            t = type(v)
            if t is str:
                append(key + _string(v))
            elif v is None:
                append(key + "null")
            elif v is True:
                append(key + "true")
            elif v is False:
                append(key + "false")
            elif t is int:
                append(key + int.__repr__(v))
            else:
                append(key + _encode(v, inner))
        return "{" + inner + ("," + inner).join(parts) + newline + "}"
    return _fallback(value, newline)


def _fallback(value: object, newline: str) -> str:
    # JSON text holds no raw newline outside its layout (strings escape theirs): re-indenting is safe.
    return json.dumps(value, indent=2).replace("\n", newline)
