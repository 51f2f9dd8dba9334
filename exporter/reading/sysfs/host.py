"""Host-wide facts about the IOMMU and isolation: groups, IOMMU units and firmware tables, VFIO
module parameters, the kernel command line, interrupt remapping and the iommufd device."""

from __future__ import annotations

import logging
import os
from types import MappingProxyType

from ...model import HostFacts
from .devices import char_dev
from .files import Reader

log = logging.getLogger(__name__)

MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci", "iommufd")  # iommufd: the VFIO device nodes' backend
CMDLINE_LIMIT = 64 << 10  # bytes; the kernel caps its command line far below this
INTERRUPTS_LIMIT = 16 << 20  # bytes; 1,000 interrupts on 1,024 CPUs take about 11 MB
IOMMU_TABLES = ("DMAR", "IVRS")  # ACPI tables describing an Intel / AMD IOMMU
# x86 interrupt chips as the kernel names them without remapping; with it they are "IR-IO-APIC" ...
X86_CHIPS = ("IO-APIC", "PCI-MSI", "PCI-MSIX", "HPET-MSI", "DMAR-MSI", "AMD-Vi")
# <sysfs>/kernel/iommu_groups/<N>/reserved_regions (since 4.11), as the kernel's
# Documentation/ABI/testing/sysfs-kernel-iommu_groups describes it: one region a line, its base IOVA,
# its end IOVA and its type, e.g. `0x00000000fee00000 0x00000000feefffff msi`; the types are `direct`,
# `direct-relaxable`, `reserved` and `msi`. `direct` is a region the firmware requires mapped 1:1 (an
# RMRR): the kernel refuses to attach the group's devices to VFIO. Since 5.3 an RMRR used only by USB
# or graphics devices reads `direct-relaxable` instead, which the ABI calls relaxable and safe for
# device assignment: it does not count.
RMRR_REGION = "direct"


def host_facts(reader: Reader) -> HostFacts:
    params: dict[str, str] = {}
    for module in MODULES:
        pdir = os.path.join(reader.sysfs, "module", module, "parameters")
        for param in reader.listdir(pdir):
            value = reader.optional({param}, pdir, param, str, f"module {module}")
            if value is not None:
                params[f"{module}.{param}"] = value
    cmdline = reader.text_file(os.path.join(reader.procfs, "cmdline"), CMDLINE_LIMIT)
    cmdline = cmdline.strip() if cmdline is not None else None
    interrupts = reader.text_file(os.path.join(reader.procfs, "interrupts"), INTERRUPTS_LIMIT)
    tables = reader.listdir(os.path.join(reader.sysfs, "firmware", "acpi", "tables"))
    nodes, noiommu = vfio_groups(reader)
    groups = reader.listdir(os.path.join(reader.sysfs, "kernel", "iommu_groups"))
    numbers = [int(g) for g in groups if g.isascii() and g.isdigit()]
    return HostFacts(
        iommu_groups_present=any(n not in noiommu for n in numbers),
        noiommu_groups=noiommu,
        iommu_units=tuple(reader.listdir(os.path.join(reader.sysfs, "class", "iommu"))),
        cmdline=cmdline,
        module_params=MappingProxyType(params),
        interrupt_remapping=interrupt_remapping(interrupts, cmdline),
        acpi_iommu_tables=tuple(t for t in IOMMU_TABLES if t in tables),
        vfio_groups=MappingProxyType(nodes),
        rmrr_groups=rmrr_groups(reader, numbers),
        iommufd=iommufd_present(reader),
    )


def iommufd_present(reader: Reader) -> bool | None:
    """Whether the iommufd device (/dev/iommu) exists: `<sysfs>/class/misc/iommu`. None when
    `class/misc` itself is missing or unreadable: every kernel has misc devices, so its absence says the
    tree is partial (an old capture), not that iommufd is off. Tested by name, not listed: a capture
    archives `class/misc` and the one entry, not every misc device."""
    names = reader.listing(os.path.join(reader.sysfs, "class", "misc"))
    return None if names is None else "iommu" in names


def rmrr_groups(reader: Reader, numbers: list[int]) -> frozenset[int]:
    """The IOMMU groups whose `reserved_regions` hold a `direct` region (an RMRR). A group without
    the file (a kernel before 4.11) or whose file cannot be read is left out: unknown, never a claim."""
    out = set()
    base = os.path.join(reader.sysfs, "kernel", "iommu_groups")
    for number in numbers:
        gdir = os.path.join(base, str(number))
        attrs = reader.listing(gdir)  # None: gone since the groups were listed, or unlistable (counted)
        if attrs is None:
            continue
        text = reader.optional(attrs, gdir, "reserved_regions", str, f"iommu group {number}")
        if text is None:
            continue
        types, bad = region_types(text)
        if bad:  # one count for the attribute, however many lines are bad; the good ones still count
            log.warning("iommu group %d: %d line%s of reserved_regions skipped (bad_attribute): not "
                        "<start> <end> <type>", number, bad, "" if bad == 1 else "s")
            reader.count("bad_attribute")
        if RMRR_REGION in types:
            out.add(number)
    return frozenset(out)


def region_types(text: str) -> tuple[set[str], int]:
    """The region types a `reserved_regions` text holds, and how many of its lines are malformed (not
    two hex addresses, start <= end, then one type word). A type this code does not know is kept as
    it is: only `direct` is acted on."""
    types = set()
    bad = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not _ordered(fields[0], fields[1]):
            bad += 1
            continue
        types.add(fields[2])
    return types, bad


def vfio_groups(reader: Reader) -> tuple[dict[int, tuple[int, int]], frozenset[int]]:
    """IOMMU group -> (major, minor) of its VFIO group node, from `<sysfs>/class/vfio/<N>/dev`
    (groups without a readable number are left out); and the groups VFIO made in its unsafe
    no-IOMMU mode, whose node the kernel names `noiommu-<N>` (their `kernel/iommu_groups/<N>/name`
    is `vfio-noiommu`): no IOMMU stands behind those. One listing tells both, not a file per group."""
    out = {}
    noiommu = set()
    base = os.path.join(reader.sysfs, "class", "vfio")
    for name in reader.listdir(base):
        digits = name.removeprefix("noiommu-")
        if not (digits.isascii() and digits.isdigit()):
            continue
        if digits != name:
            noiommu.add(int(digits))
        # class/vfio/<N> links to devices/virtual/vfio/<N>: resolved, so a capture keeps the link.
        number = char_dev(reader, reader.resolve(os.path.join(base, name)), f"vfio group {name}")
        if number is not None:
            out.setdefault(int(digits), number)
    return out, frozenset(noiommu)


def interrupt_remapping(interrupts: str | None, cmdline: str | None) -> bool | None:
    """Whether the kernel remaps interrupts, from the chips its interrupts are routed through.

    On: a chip named "IR-..." (IR-IO-APIC, IR-PCI-MSI, IR-PCI-MSIX-0000:01:00.0 ...). Off:
    `intremap=off`, or x86 chips without the prefix. Unknown (None): no readable table, or no x86
    chip at all (another architecture, where MSI isolation has other names: say nothing wrong).
    """
    if "intremap=off" in (cmdline or "").split():
        return False
    if interrupts is None:
        return None
    chips = set(interrupts.split())
    if any(c.startswith("IR-") for c in chips):
        return True
    if any(c.startswith(X86_CHIPS) for c in chips):
        return False
    return None


def _ordered(start: str, end: str) -> bool:
    """Two addresses as the kernel writes them (`0x` and hex digits), the first not above the second."""
    if not (start.startswith("0x") and end.startswith("0x")):
        return False
    try:
        return int(start, 16) <= int(end, 16)
    except ValueError:
        return False
