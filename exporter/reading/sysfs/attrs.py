"""Parsing sysfs attributes: text, hex ids and numbers, the way the kernel writes them.

Shared by every reader of host data (the sysfs source, libvirt's fill, the policy file's ids), so a
value is spelled the same wherever it comes from.
"""

from __future__ import annotations

import re
import sys

ATTR_LIMIT = 4096  # bytes; sysfs text attributes fit in a page, anything longer is garbage


class BadAttribute(ValueError):
    """An attribute whose content is not what the kernel writes there.

    The message says what is wrong and never quotes the content: a hostile tree can put any file's
    bytes behind an attribute's name (a link to a key), and warnings end up in logs and bug reports.
    """


def shape(text: str) -> str:
    """What a bad value looks like without quoting it: its length."""
    if not text:
        return "empty"
    return f"{len(text)} character{'s' if len(text) != 1 else ''}"


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
        raise BadAttribute(f"not a {width}-digit hex number ({shape(text)})")
    return f"0x{int(digits, 16):0{width}x}"


# The largest count kept. The kernel's counters are u64, yet one counting a billion events a second
# takes 292 years to pass 2**63: anything bigger is garbage, not a count. It is also the largest
# integer an int64 holds (JSON readers in Go or Java, exporters' int fields) and converts to a
# finite float for the exposition, where a 400-digit "count" raised OverflowError in every refresh.
COUNT_MAX = 2**63 - 1
SRIOV_MAX = 0xFFFF  # TotalVFs and NumVFs are 16-bit registers of the SR-IOV capability
NUMA_NODES = 1 << 10  # MAX_NUMNODES: CONFIG_NODES_SHIFT is at most 10 on every architecture
WIDTH_MAX = 32  # lanes: x32 is the widest link the PCIe spec defines
SPEED_MAX = 1000.0  # GT/s: PCIe 7.0 runs 128; a four-digit speed is garbage

_DECIMAL_FRACTION = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")  # float() also takes "nan", "inf", "1e9"


def bounded_int(text: str, low: int, high: int) -> int:
    """A decimal integer as the kernel prints it (%d, %u, %llu), within low..high; else BadAttribute.

    The one check of every numeric attribute: a value out of range empties its field only, where it
    once reached the JSON and the exposition and failed them.
    """
    digits = text[1:] if text[:1] == "-" else text
    # ASCII digits only (int() also takes "1_000", " +5" and "٣"); 20 of them hold any 64-bit number.
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
        raise BadAttribute(f"not a number ({shape(text)})")
    value = int(text)
    if not low <= value <= high:
        raise BadAttribute(f"out of range {low}..{high} ({'above' if value > high else 'below'})")
    return value


def bounded_float(text: str, high: float) -> float:
    """A positive decimal fraction (16.0, 2.5, 8) no greater than `high`; never NaN or infinite."""
    if _DECIMAL_FRACTION.fullmatch(text) is None:
        raise BadAttribute(f"not a decimal number ({shape(text)})")
    value = float(text)
    if not 0.0 < value <= high:
        raise BadAttribute(f"out of range 0..{high:g} ({'above' if value > high else 'not positive'})")
    return value


def parse_int(text: str) -> int:
    """A count or a number (a group, a bus, instances): 0..COUNT_MAX."""
    return bounded_int(text, 0, COUNT_MAX)


def sriov_count(text: str) -> int:
    """sriov_totalvfs, sriov_numvfs: 0..65535."""
    return bounded_int(text, 0, SRIOV_MAX)


def numa_node(text: str) -> int | None:
    """A NUMA node number; -1 (NUMA_NO_NODE: the platform names none) is None."""
    node = bounded_int(text, -1, NUMA_NODES - 1)
    return None if node == -1 else node


def link_width(text: str) -> int | None:
    """Lanes, 1..32. The kernel's own "no value" spellings are unknown, not garbage: 0 (a link that
    is down: an empty hot-plug slot's port) and 255 (PCIE_LNK_WIDTH_UNKNOWN: no link capability)."""
    if text == "0" or text == "255":
        return None
    return bounded_int(text, 1, WIDTH_MAX)


MAX_MAJOR, MAX_MINOR = (1 << 12) - 1, (1 << 20) - 1  # the kernel's dev_t: 12 bits of major, 20 of minor


def dev_number(text: str) -> tuple[int, int]:
    """A `dev` attribute, `MAJ:MIN` in decimal -> (major, minor); else BadAttribute.

    Major 0 is no device (the kernel gives it to none, and anyone may create a 0:0 overlay whiteout).
    """
    major, sep, minor = text.partition(":")
    if not sep or not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        raise BadAttribute(f"not a device number MAJ:MIN ({shape(text)})")
    number = (int(major), int(minor))
    if not 0 < number[0] <= MAX_MAJOR or number[1] > MAX_MINOR:
        raise BadAttribute(f"not a device number: major 1..{MAX_MAJOR}, minor 0..{MAX_MINOR} expected")
    return number


# A PCI root bus directory of /sys/devices: pci<domain>:<bus>, the domain 4 hex digits (8 behind
# Intel VMD: pci10000:00).
_ROOT_BUS = re.compile(r"pci[0-9a-f]{4,8}:[0-9a-f]{2}")


def pcie_root(path: str | None, devices: str = "/sys/devices") -> str | None:
    """The PCI root bus a function hangs below, from its canonical directory under `devices` (the
    sysfs' `devices/`): the outermost `pci<domain>:<bus>` directory below it
    (`/sys/devices/pci0000:40/0000:40:01.1/0000:41:00.0` -> `pci0000:40`), as Kubernetes DRA's
    `resource.kubernetes.io/pcieRoot` spells it. The outermost, so a bus behind a VMD (pci10000:00
    inside pci0000:00) aligns with the root complex the VMD sits on. None for a path outside
    `devices` (a flat copy of /sys/bus/pci/devices) or without a root bus."""
    if path is None or not path.startswith(devices + "/"):
        return None
    root = next((part for part in path[len(devices) + 1:].split("/") if _ROOT_BUS.fullmatch(part)), None)
    return None if root is None else sys.intern(root)  # a handful of roots, thousands of functions: one copy each


def nvme_class(pci_class: str | None) -> bool:
    """An NVMe controller (class 0x0108xx): its serial is the controller's alone. Bound to vfio-pci it
    has no `nvme/` and its serial is unknown; its VPD `SN` is another number space, which would read
    as another device every time the driver changes (on every VM start)."""
    return pci_class is not None and pci_class.startswith("0x0108")


VGPU_TYPE_MAX = 0xFFFFFFFF  # NVIDIA's vGPU type ids are 32-bit
VGPU_TYPES_MAX = 256  # lines of a creatable list: a GPU offers a few dozen types; the page bounds it too


def vgpu_type(text: str) -> int:
    """`nvidia/current_vgpu_type`: 0 (none set) or the decimal id of the type the VF carries."""
    return bounded_int(text, 0, VGPU_TYPE_MAX)


def vgpu_types(text: str) -> tuple[tuple[int, str], ...]:
    """`nvidia/creatable_vgpu_types` -> ((id, name), ...), in the file's order; else BadAttribute.

    One type a line, `ID : NAME` (`1414 : NVIDIA H200X-1-18C`), under a header line `ID : vGPU Name`;
    empty when nothing can be created on the VF now. The format is NVIDIA's (vGPU software's user
    guide, vendor-specific VFIO framework), read as NVIDIA's own parser reads it (vgpu-device-manager,
    pkg/vfio): fields trimmed, blank lines and the header (ID field `ID`) skipped. Any other line is
    not a type: the whole list is then unknown, never a shorter list.
    """
    out: list[tuple[int, str]] = []
    for line in text.splitlines():
        type_id, sep, name = line.partition(":")
        type_id, name = type_id.strip(), name.strip()
        if not type_id and not sep:
            continue  # a blank line
        if type_id == "ID":
            continue  # the header
        if not sep or not name:
            raise BadAttribute(f"a line is not `ID : NAME` ({shape(line)})")
        if len(out) == VGPU_TYPES_MAX:
            raise BadAttribute(f"more than {VGPU_TYPES_MAX} types")
        out.append((bounded_int(type_id, 1, VGPU_TYPE_MAX), name))
    return tuple(out)
