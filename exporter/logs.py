"""Structured logs in logfmt (`ts=... level=... logger=... msg="..."`) or JSON lines (`{"ts": ...,
"level": ..., "logger": ..., "msg": ...}`), as Prometheus exporters write them (--log.format)."""

from __future__ import annotations

import json
import logging
import sys
import time

from .textsafe import visible

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
FORMATS = ("logfmt", "json")


def _quote(value: str) -> str:
    # Control characters written out (a VM name's ESC never reaches a terminal), line by line: a
    # traceback's newlines stay the format's own \n.
    value = "\n".join(map(visible, value.split("\n")))
    if value and not any(c in value for c in ' "=\n\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _ts(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _level(record: logging.LogRecord) -> str:
    """Level names as Prometheus' exporters write them: warn and error, not WARNING and CRITICAL."""
    return {"WARNING": "warn", "CRITICAL": "error"}.get(record.levelname, record.levelname.lower())


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"ts={_ts(record)} level={_level(record)} logger={record.name} msg={_quote(record.getMessage())}"
        if record.exc_info:
            line += " err=" + _quote(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, and err with the traceback where there is one.
    Non-ASCII and control characters are escaped (\\uXXXX), so a line is always one line of ASCII."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": _ts(record),
            "level": _level(record),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["err"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"))


class RepeatFilter(logging.Filter):
    """Logs a recurring problem when it starts, not on every refresh.

    The refresher calls `next_refresh()` before each refresh. A warning or error whose logger,
    message and arguments were already logged during the previous refresh is dropped: a broken
    device, an unmatched hostdev or a source that stays down is told once, and told again only
    after a refresh without it. Memory holds the keys of two refreshes at most.
    """

    def __init__(self) -> None:
        super().__init__()
        self._previous: set[tuple] = set()
        self._current: set[tuple] = set()

    def next_refresh(self) -> None:
        self._previous, self._current = self._current, set()

    def carry_over(self) -> None:
        """This refresh repeats the last one without logging (an unchanged host is not judged
        again): what the last one logged counts as logged again, so it is not told anew later."""
        self._current |= self._previous

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        try:
            key = (record.name, record.levelno, str(record.msg), tuple(map(str, record.args or ())))
        except Exception:  # an argument whose str() fails: log it, never break logging
            return True
        self._current.add(key)
        return key not in self._previous


#: Installed on the stderr handler by `setup` (unless at debug level); the refresher advances it.
REPEATS = RepeatFilter()


def setup(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    if LEVELS[level] > logging.DEBUG:  # debugging wants every line
        handler.addFilter(REPEATS)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)  # a library's warning is a log line in the same format, not raw text
