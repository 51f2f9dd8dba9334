"""PCI Vital Product Data (a function's `vpd` file): who the card is, whatever slot it sits in.

The format is the PCI spec's: a list of resources, each a small item (bit 7 clear: its name in bits
6..3, its length in bits 2..0) or a large item (bit 7 set: the byte is its name, a 16-bit
little-endian length follows). Large 0x82 is the identifier string (the product's name), 0x90 the
read-only keywords (VPD-R), 0x91 the writable ones (VPD-W, not read here); small item 0xF (the byte
0x78) is the end. A keyword is two ASCII characters, a length byte and that many bytes of data:
`SN` the serial number, `PN` the part number; `RV` closes VPD-R, its first data byte making the sum
of every byte from the start of the VPD up to it zero (mod 256).

The rules are the Linux kernel's, drivers/pci/vpd.c:
- `pci_vpd_size`: at most 32 KiB (PCI_VPD_MAX_SIZE); a first byte of 0x00 or 0xff is no VPD
  (nothing answers: a device without the EEPROM reads all ones); small items other than the end
  tag, and unknown large items, are skipped by their length; what follows the end tag is not VPD;
- `pci_vpd_find_tag` and `pci_vpd_find_ro_info_keyword`: keywords are found in the VPD-R section,
  each field's data inside the VPD;
- `pci_vpd_check_csum`: no `RV` is no checksum to check; an `RV` without data, or a sum that is not
  zero, is an error: a VPD that fails its checksum gives no serial.
Stricter, as libvirt's parser is (src/util/virpcivpd.c, `virPCIVPDParse`), so both sources agree:
the end tag must be there, `RV` must be the last keyword of VPD-R, text is trimmed of whitespace and
must be printable ASCII (libvirt also cuts a string at its first NUL: trailing NULs are padding
here, anything after one is garbage). Stricter than both, rather than guess: a length running past
the end of the VPD or of its section, two identifier strings, two VPD-R sections or a `SN` or `PN`
given twice.

Any of these is one bad input, said in `Vpd.error` without quoting the bytes (a serial number is
not for logs); `parse_vpd` never raises and never indexes past the blob it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

VPD_MAX = 0x8000  # PCI_VPD_MAX_SIZE: the VPD address register has 15 bits

_LARGE = 0x80
_ID_STRING, _VPD_R = 0x82, 0x90
_END = 0x0F  # small item name of the end tag (the byte 0x78)
_KEYWORD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_KEPT = {b"SN": "serial", b"PN": "part_number"}


@dataclass(frozen=True, slots=True)
class Vpd:
    """What a VPD says about the card; every field None when it says nothing or is bad (`error`)."""

    identifier: str | None = None  # the 0x82 string: "BlueField-2 DPU 25GbE Dual-Port SFP56, ..."
    part_number: str | None = None  # VPD-R `PN`
    serial: str | None = None  # VPD-R `SN`
    error: str | None = None  # why the VPD was refused; None when it was read (or is empty)


class _Bad(Exception):
    """A malformed VPD; the message says where and what, never the content."""


def parse_vpd(data: bytes) -> Vpd:
    """The identifier, part number and serial number of a VPD blob, or why it was refused.

    An empty blob is no VPD (older kernels give one for a device whose VPD is not valid at offset 0),
    not an error.
    """
    if not data:
        return Vpd()
    try:
        return _parse(data)
    except _Bad as exc:
        return Vpd(error=str(exc))


def _parse(data: bytes) -> Vpd:
    size = len(data)
    if size > VPD_MAX:
        raise _Bad(f"longer than {VPD_MAX} bytes")
    if data[0] == 0x00 or data[0] == 0xFF:  # the kernel's pci_vpd_size: no VPD, as a device without an EEPROM reads
        return Vpd()
    identifier: tuple[int, int] | None = None
    read_only: tuple[int, int] | None = None
    pos = 0
    while pos < size:
        tag = data[pos]
        if tag & _LARGE:
            if pos + 3 > size:
                raise _Bad(f"resource 0x{tag:02x} at offset {pos}: header cut short")
            length = data[pos + 1] | data[pos + 2] << 8
            start = pos + 3
            if start + length > size:
                raise _Bad(f"resource 0x{tag:02x} at offset {pos}: {length} bytes run past the end ({size})")
            if tag == _ID_STRING:
                if identifier is not None:
                    raise _Bad(f"a second identifier string at offset {pos}")
                identifier = (start, length)
            elif tag == _VPD_R:
                if read_only is not None:
                    raise _Bad(f"a second VPD-R section at offset {pos}")
                read_only = (start, length)
            pos = start + length
        else:
            length = tag & 0x07
            if pos + 1 + length > size:
                raise _Bad(f"small resource 0x{tag:02x} at offset {pos}: {length} bytes run past the end ({size})")
            if tag >> 3 == _END:
                fields = _keywords(data, *read_only) if read_only is not None else {}
                return Vpd(
                    identifier=_text(data, *identifier, "identifier string") if identifier is not None else None,
                    part_number=fields.get("part_number"),
                    serial=fields.get("serial"),
                )
            pos += 1 + length
    raise _Bad(f"no end tag in {size} bytes")


def _keywords(data: bytes, start: int, length: int) -> dict[str, str | None]:
    """`serial` and `part_number` of the VPD-R section at `start`, its checksum checked."""
    out: dict[str, str | None] = {}
    pos, end = start, start + length
    while pos < end:
        if pos + 3 > end:
            raise _Bad(f"VPD-R keyword at offset {pos}: header cut short by the section's end")
        keyword = data[pos:pos + 2]
        if not (keyword[0] in _KEYWORD_CHARS and keyword[1] in _KEYWORD_CHARS):
            raise _Bad(f"VPD-R keyword at offset {pos} is not two letters or digits")
        first, length_ = pos + 3, data[pos + 2]
        if first + length_ > end:
            raise _Bad(f"VPD-R keyword {keyword.decode()} at offset {pos}: {length_} bytes run past the section")
        if keyword == b"RV":
            if length_ == 0:
                raise _Bad(f"RV at offset {pos} has no checksum byte")
            if sum(data[:first + 1]) & 0xFF:
                raise _Bad(f"checksum at offset {first} does not match")
            if first + length_ != end:
                raise _Bad(f"RV at offset {pos} is not the last keyword of VPD-R")
            break
        name = _KEPT.get(keyword)
        if name is not None:
            if name in out:
                raise _Bad(f"VPD-R keyword {keyword.decode()} given twice")
            out[name] = _text(data, first, length_, keyword.decode())
        pos = first + length_
    return out


def _text(data: bytes, start: int, length: int, what: str) -> str | None:
    """A VPD string: trailing NULs and surrounding whitespace trimmed, printable ASCII; "" is None."""
    raw = data[start:start + length].rstrip(b"\x00").strip()
    if any(c < 0x20 or c > 0x7E for c in raw):
        raise _Bad(f"{what} at offset {start} holds bytes that are not printable ASCII")
    return raw.decode("ascii") or None
