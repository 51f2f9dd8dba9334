"""The Prometheus text format (0.0.4), written straight from metric families held as plain data.

Byte-identical to prometheus-client's `generate_latest` for the families the exporter makes (gauges
and counters, legacy-valid names): HELP/TYPE lines, a counter's `_total` suffix, label names
sorted, label values and help escaped the same way, values as its `floatToGoString` writes them.
At 20,000 devices generate_latest spends most of its time building a Sample tuple and a label
dict per series; this writes each line with one format call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..textsafe import visible

DEFAULT_TELEMETRY_PATH = "/metrics"  # where `serve` serves the metrics unless told otherwise

_VALUES = {0: "0.0", 1: "1.0"}  # the common values, preformatted


@dataclass(frozen=True, slots=True)
class Spec:
    type: str  # "gauge" | "counter"
    documentation: str
    labels: tuple[str, ...] = ()


Row = tuple[tuple[str, ...], float]  # label values (in the spec's label order), value


@dataclass(slots=True)
class Family:
    """One metric family as plain data: rendered by `render_families` directly, or by prometheus-client."""

    name: str  # without the "_total" of a counter, as prometheus-client spells it
    documentation: str
    type: str  # "gauge" | "counter"
    labels: tuple[str, ...]
    rows: list[Row]

    @classmethod
    def of(cls, name: str, spec: Spec, rows: list[Row]) -> Family:
        return cls(name, spec.documentation, spec.type, spec.labels, rows)


def go_float(value: float) -> str:
    """A sample value as prometheus-client's `floatToGoString` writes it (tests hold the two side by
    side). Its own copy: importing prometheus-client costs the serving process 4 MB, and the server
    writes the status families itself."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape(value: str) -> str:
    """A label value: control characters written out (`visible`: a newline too, so no `\\n` is
    left to escape), then the format's own escapes. SnapshotCollector does the same."""
    if value.isprintable() and "\\" not in value and '"' not in value:
        return value
    return visible(value).replace("\\", r"\\").replace('"', r"\"")


def _value(v: float) -> str:
    s = _VALUES.get(v) if type(v) is int else None  # noqa: E721 - bools format as 1.0/0.0 too, but are not used
    return s if s is not None else go_float(v)


def render_families(families: Iterable[Family]) -> bytes:
    # Encoded family by family: the lines of one family are held as strings at a time, not of all
    # 170,000 series of a 20,000-device host (half the peak memory of a refresh's rendering).
    chunks: list[bytes] = []
    for fam in families:
        out: list[str] = []
        _render_family(fam, out)
        chunks.append("".join(out).encode("utf-8"))
    return b"".join(chunks)


def _render_family(fam: Family, out: list[str]) -> None:
    """The lines of one family, appended to `out`."""
    name = fam.name + "_total" if fam.type == "counter" else fam.name
    doc = fam.documentation.replace("\\", r"\\").replace("\n", r"\n")
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {fam.type}\n")
    if not fam.labels:
        out.extend(f"{name} {_value(v)}\n" for _, v in fam.rows)
        return
    # generate_latest sorts label names; keep the value positions that go with them.
    order = sorted(range(len(fam.labels)), key=fam.labels.__getitem__)
    prefix = [f'{"," if i else ""}{fam.labels[j]}="' for i, j in enumerate(order)]
    if len(order) == 1:
        p0 = name + "{" + prefix[0]
        out.extend(f'{p0}{_escape(values[0])}"}} {_value(v)}\n' for values, v in fam.rows)
        return
    for values, v in fam.rows:
        labels = "".join([f'{p}{_escape(values[j])}"' for p, j in zip(prefix, order)])
        out.append(f"{name}{{{labels}}} {_value(v)}\n")
