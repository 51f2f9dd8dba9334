"""The PCI VPD parser: blobs built byte by byte, answers worked out by hand; hostile blobs refused."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passthrough_exporter.reading.sysfs.vpd import VPD_MAX, Vpd, parse_vpd
from tests.support.sysfs_builder import vpd_blob

# A NIC's VPD, as the PCI spec lays it out:
IDENT = b"\x82\x0b\x00" + b"Example NIC"  # identifier string, 11 bytes
VPD_R = b"\x90\x34\x00"  # read-only keywords, 52 bytes: 10 + 6 + 15 + 14 + 3 + 4
PN = b"PN\x07" + b"EX-1234"
EC = b"EC\x03" + b"A01"
SN = b"SN\x0c" + b"MT1234X00001"
V0 = b"V0\x0b" + b"PCIeGen3 x8"
# Every byte before the checksum adds up to 0x8d + 0x3c6 + 0xc4 + 0x239 + 0x12d + 0x361 + 0x3ef + 0xac
# (RV's header) = 0x1079: 0x79 mod 256, so the checksum byte is 0x100 - 0x79 = 0x87.
RV = b"RV\x04" + b"\x87\x00\x00\x00"
END = b"\x78"
NIC = IDENT + VPD_R + PN + EC + SN + V0 + RV + END
GOOD = Vpd(identifier="Example NIC", part_number="EX-1234", serial="MT1234X00001")


def test_a_nic_vpd_worked_out_by_hand():
    assert len(NIC) == 70 and sum(NIC[:NIC.index(b"RV") + 4]) % 256 == 0
    assert parse_vpd(NIC) == GOOD
    assert vpd_blob(b"Example NIC", [(b"PN", b"EX-1234"), (b"EC", b"A01"), (b"SN", b"MT1234X00001"),
                                     (b"V0", b"PCIeGen3 x8")]) == NIC  # the fixtures' builder agrees


def test_what_follows_the_end_tag_is_not_vpd():
    # Kernels before the VPD size was computed gave the whole 32 KiB: the EEPROM's padding follows.
    assert parse_vpd(NIC + b"\xff" * 1000) == GOOD


def test_an_empty_file_is_no_vpd_and_no_error():
    assert parse_vpd(b"") == Vpd()


def test_a_device_without_an_eeprom_is_no_vpd_and_no_error():
    """Older kernels show 32 KiB of 0xff (or zeros) where a device has no VPD EEPROM; the kernel's
    pci_vpd_size takes a first byte of 0x00 or 0xff for no VPD: so do we, counting nothing."""
    for blob in (b"\xff" * 4096, b"\x00" * 4096, b"\xff" * VPD_MAX):
        assert parse_vpd(blob) == Vpd()


def test_no_checksum_is_nothing_to_check():
    # pci_vpd_check_csum: a VPD-R without RV has no checksum, and is read.
    body = PN + SN
    blob = IDENT + b"\x90" + len(body).to_bytes(2, "little") + body + END
    assert parse_vpd(blob) == GOOD


def test_without_vpd_r_there_is_a_name_and_no_serial():
    assert parse_vpd(IDENT + END) == Vpd(identifier="Example NIC")


def test_vpd_w_and_unknown_resources_are_skipped():
    vpd_w = b"\x91\x08\x00" + b"YA\x02ab" + b"RW\x00"  # writable: an asset tag and the free space
    odd_small = b"\x22\xaa\xbb"  # small item 4 with two bytes: no VPD meaning, skipped by its length
    assert parse_vpd(IDENT + odd_small + VPD_R + PN + EC + SN + V0 + RV + vpd_w + END) == Vpd(
        error="checksum at offset 68 does not match")  # the skipped bytes count in the sum, as they must
    # The same with the checksum computed over them: read, the writable section ignored.
    fixed = bytearray(IDENT + odd_small + VPD_R + PN + EC + SN + V0 + RV + vpd_w + END)
    at = fixed.index(b"RV") + 3
    fixed[at] = (0x87 - 0x22 - 0xAA - 0xBB) & 0xFF
    assert parse_vpd(bytes(fixed)) == GOOD


def test_padding_and_whitespace_around_text_are_trimmed():
    sn = b"SN\x10" + b" MT1234X00001\x00\x00\x00"  # 16 bytes: a space before, NULs after
    ident = b"\x82\x0d\x00" + b"Example NIC  "
    body = PN + sn
    assert parse_vpd(ident + b"\x90" + len(body).to_bytes(2, "little") + body + END) == GOOD


def test_an_empty_serial_is_none_not_an_error():
    body = PN + b"SN\x00"
    assert parse_vpd(IDENT + b"\x90" + len(body).to_bytes(2, "little") + body + END) == Vpd(
        identifier="Example NIC", part_number="EX-1234")


def _refused(blob: bytes) -> str:
    found = parse_vpd(blob)
    assert (found.identifier, found.part_number, found.serial) == (None, None, None)
    assert found.error is not None
    assert b"MT1234" not in found.error.encode()  # never quotes the content
    return found.error


def test_hostile_blobs_give_no_serial_and_say_why():
    assert _refused(NIC[:40]) == "resource 0x90 at offset 14: 52 bytes run past the end (40)"
    long_sn = PN + b"SN\x20" + b"MT1234X00001"  # says 32 bytes, has 12
    assert _refused(IDENT + b"\x90" + len(long_sn).to_bytes(2, "little") + long_sn + END) == (
        "VPD-R keyword SN at offset 27: 32 bytes run past the section")
    assert _refused(NIC[:-1]) == "no end tag in 69 bytes"
    assert _refused(NIC[:2]) == "resource 0x82 at offset 0: header cut short"
    assert _refused(b"\x82\xff\x00Example NIC" + END) == "resource 0x82 at offset 0: 255 bytes run past the end (15)"
    assert _refused(NIC + bytes(VPD_MAX)) == f"longer than {VPD_MAX} bytes"
    assert _refused(IDENT + b"\x7f\xaa") == "small resource 0x7f at offset 14: 7 bytes run past the end (16)"


def test_a_bad_checksum_drops_the_serial():
    # pci_vpd_check_csum: the sum must be zero; one flipped bit anywhere before RV breaks it.
    for at in (5, NIC.index(b"MT1234") + 3, NIC.index(b"RV") + 3):
        bad = bytearray(NIC)
        bad[at] ^= 0x01
        assert _refused(bytes(bad)) == "checksum at offset 65 does not match"


def test_checksum_rules():
    no_byte = VPD_R[:1] + (len(PN + SN) + 3).to_bytes(2, "little") + PN + SN + b"RV\x00"
    assert _refused(IDENT + no_byte + END).startswith("RV at offset 42 has no checksum byte")
    # RV must close VPD-R: a keyword after it would not be covered by the checksum.
    after = PN + EC + SN + V0 + b"RV\x04\x84\x00\x00\x00" + b"YB\x00"  # the section 3 longer: 0x87 - 3
    assert _refused(IDENT + b"\x90" + len(after).to_bytes(2, "little") + after + END).startswith(
        "RV at offset 62 is not the last keyword")


def test_ambiguous_or_malformed_keywords_are_refused():
    twice = PN + SN + SN
    assert _refused(IDENT + b"\x90" + len(twice).to_bytes(2, "little") + twice + END) == "VPD-R keyword SN given twice"
    lower = PN + b"sn\x01x"
    assert _refused(IDENT + b"\x90" + len(lower).to_bytes(2, "little") + lower + END) == (
        "VPD-R keyword at offset 27 is not two letters or digits")
    stray = PN + b"S"  # a keyword header cut by the section's end
    assert _refused(IDENT + b"\x90" + len(stray).to_bytes(2, "little") + stray + END).startswith(
        "VPD-R keyword at offset 27: header cut short")
    two_r = IDENT + VPD_R + PN + EC + SN + V0 + RV + b"\x90\x00\x00" + END
    assert _refused(two_r) == "a second VPD-R section at offset 69"
    assert _refused(IDENT + IDENT + END) == "a second identifier string at offset 14"


def test_text_that_is_not_printable_ascii_is_refused():
    for junk in (b"MT1234\x1bX0001", b"MT1234\xc3\xa9X001", b"MT\x00234X00001"):
        body = PN + b"SN" + bytes([len(junk)]) + junk
        assert _refused(IDENT + b"\x90" + len(body).to_bytes(2, "little") + body + END).startswith(
            "SN at offset 30 holds bytes that are not printable ASCII")
    assert _refused(b"\x82\x03\x00a\x07b" + END) == "identifier string at offset 3 holds bytes that are not printable ASCII"


def test_binary_data_in_keywords_not_read_is_fine():
    v1 = b"V1\x04\x00\x01\xfe\xff"
    body = PN + SN + v1
    assert parse_vpd(IDENT + b"\x90" + len(body).to_bytes(2, "little") + body + END) == GOOD


class _Bounded(bytes):
    """Bytes that fail on any index or slice reaching past their end."""

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, slice):
            assert key.step is None and (key.stop is None or key.stop <= len(self)), (key, len(self))
            assert key.start is None or 0 <= key.start <= len(self), (key, len(self))
        else:
            assert 0 <= key < len(self), (key, len(self))
        return super().__getitem__(key)


# Mutations of a real-looking blob reach deeper than random bytes, which the first byte mostly ends.
_mutated = st.builds(
    lambda cut, flips, tail: bytes(_flip(NIC[:cut], flips)) + tail,
    st.integers(0, len(NIC)), st.lists(st.tuples(st.integers(0, len(NIC) - 1), st.integers(1, 255)), max_size=4),
    st.binary(max_size=8),
)


def _flip(blob: bytes, flips: list[tuple[int, int]]) -> bytearray:
    out = bytearray(blob)
    for at, bits in flips:
        if at < len(out):
            out[at] ^= bits
    return out


@given(st.binary(max_size=600) | _mutated)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_never_raises_nor_reads_past_the_blob(blob):
    found = parse_vpd(_Bounded(blob))
    assert isinstance(found, Vpd)
    assert (found.error is None) or (found.serial is None and found.part_number is None and found.identifier is None)
    for text in (found.identifier, found.part_number, found.serial):
        assert text is None or (text.isascii() and text.isprintable() and text == text.strip())
