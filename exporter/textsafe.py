"""Text read from the host, shown safely: control characters written out, never sent.

A VM name, a USB product string or a libvirt domain name is whatever its owner wrote, and a
terminal obeys the control characters in it: `guest=x\\r\\x1b[1A\\x1b[2KPASS` would move the cursor
up and rewrite a FAIL line of the `check` report as PASS. Reading keeps the text as it is (JSON
escapes controls itself); every text output (the `check` report, plain listings, label values, log
lines, the host page) passes it through `visible` on the way out.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls (CSI is \x9b), and Unicode's line breaks and bidi controls,
# which break a line or reorder it on screen the same way.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _written_out(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character written out as Python writes it: ESC as `\\x1b`,
    a newline as `\\x0a`, U+202E as `\\u202e`. Text without any comes back as it is."""
    if text.isprintable():  # the common case, at C speed: no control character (nor other oddity)
        return text
    return _CONTROLS.sub(_written_out, text)
