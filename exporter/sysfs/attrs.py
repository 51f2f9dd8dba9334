"""Parsing sysfs attributes: text, hex ids and numbers, the way the kernel writes them.

Shared by every reader of host data (the sysfs source, libvirt's fill, the policy file's ids), so a
value is spelled the same wherever it comes from.
"""

from __future__ import annotations

ATTR_LIMIT = 4096  # bytes; sysfs text attributes fit in a page, anything longer is garbage


class BadAttribute(ValueError):
    """An attribute whose content is not what the kernel writes there."""


def escape_bytes(text: str) -> str:
    """Undecodable bytes (held as surrogates by os.listdir/os.readlink) shown as `\\xff`."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def decode_attr(path: str, data: bytes, limit: int = ATTR_LIMIT) -> str:
    """A sysfs text attribute read with `limit + 1` bytes, stripped.

    Oversized or NUL-holding content is a BadAttribute; bytes that are not UTF-8 (a USB product
    string from a broken device) are kept, escaped as `\\xff`.
    """
    if len(data) > limit:
        raise BadAttribute(f"{path}: longer than {limit} bytes")
    if b"\x00" in data:
        raise BadAttribute(f"{path}: not text")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = data.decode("utf-8", "backslashreplace")
    return text.strip()


def hex_id(text: str, width: int) -> str:
    """'0x8086' / '8086' / '0X8086' -> '0x8086', zero-padded to `width` digits; else BadAttribute."""
    digits = text.strip().lower().removeprefix("0x")
    if not digits or len(digits) > width or digits.strip("0123456789abcdef"):  # strip: a C loop, not a genexpr
        raise BadAttribute(f"not a {width}-digit hex number: {text[:40]!r}")
    return f"0x{int(digits, 16):0{width}x}"


def parse_int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise BadAttribute(f"not a number: {text[:40]!r}") from None


MAX_MAJOR, MAX_MINOR = (1 << 12) - 1, (1 << 20) - 1  # the kernel's dev_t: 12 bits of major, 20 of minor


def dev_number(text: str) -> tuple[int, int]:
    """A `dev` attribute, `MAJ:MIN` in decimal -> (major, minor); else BadAttribute.

    Major 0 is no device (the kernel gives it to none, and anyone may create a 0:0 overlay whiteout).
    """
    major, sep, minor = text.partition(":")
    if not sep or not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        raise BadAttribute(f"not a device number: {text[:40]!r}")
    number = (int(major), int(minor))
    if not 0 < number[0] <= MAX_MAJOR or number[1] > MAX_MINOR:
        raise BadAttribute(f"not a device number: {text[:40]!r}")
    return number
