"""Reading back what the exporter wrote: its logfmt log lines and log records, an exposition as
Prometheus parses it, and JSON as a strict parser reads it."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from prometheus_client.parser import text_string_to_metric_families

_LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line: str) -> dict[str, str]:
    """One logfmt line (`ts=... level=error msg="..."`) as its keys and unquoted values."""
    fields = {}
    for key, value in _LOGFMT_PAIR.findall(line):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), value[1:-1])
        fields[key] = value
    return fields


def log_messages(stderr: str, level: str | None = None) -> list[str]:
    """The msg of every logfmt line in `stderr` (of one level, if given); a line that is not logfmt fails."""
    out = []
    for line in stderr.splitlines():
        fields = logfmt(line)
        assert {"ts", "level", "logger", "msg"} <= fields.keys(), line
        if level is None or fields["level"] == level:
            out.append(fields["msg"])
    return out


def every_record(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records of the whole test so far: its set-up, its body and its tear-down (in a fixture's
    tear-down, caplog.records holds the tear-down's alone)."""
    return [r for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]


def without_process_metrics(exposition: bytes) -> bytes:
    """An exposition without the process_* families, which change from one scrape to the next."""
    return b"".join(line for line in exposition.splitlines(keepends=True)
                    if not line.startswith((b"process_", b"# HELP process_", b"# TYPE process_")))


def collect_errors(exposition: str) -> dict[str, float]:
    """passthrough_collect_errors_total by kind, parsed the way Prometheus parses it."""
    for family in text_string_to_metric_families(exposition):
        if family.name == "passthrough_collect_errors":
            return {s.labels["kind"]: s.value for s in family.samples if s.name.endswith("_total")}
    raise AssertionError("no passthrough_collect_errors_total in the exposition")


def strict_json(text: str | bytes) -> Any:
    """JSON as a strict parser reads it: NaN and the infinities are no JSON, and fail here."""
    return json.loads(text, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
