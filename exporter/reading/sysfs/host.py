"""Host-wide facts about the IOMMU and isolation: groups, IOMMU units and firmware tables, VFIO
module parameters, the kernel command line and interrupt remapping."""

from __future__ import annotations

import os
from types import MappingProxyType

from ...model import HostFacts
from .devices import char_dev
from .files import Reader

MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci", "iommufd")  # iommufd: the VFIO device nodes' backend
CMDLINE_LIMIT = 64 << 10  # bytes; the kernel caps its command line far below this
INTERRUPTS_LIMIT = 16 << 20  # bytes; 1,000 interrupts on 1,024 CPUs take about 11 MB
IOMMU_TABLES = ("DMAR", "IVRS")  # ACPI tables describing an Intel / AMD IOMMU
# x86 interrupt chips as the kernel names them without remapping; with it they are "IR-IO-APIC" ...
X86_CHIPS = ("IO-APIC", "PCI-MSI", "PCI-MSIX", "HPET-MSI", "DMAR-MSI", "AMD-Vi")


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
    return HostFacts(
        iommu_groups_present=any(g.isascii() and g.isdigit() and int(g) not in noiommu for g in groups),
        noiommu_groups=noiommu,
        iommu_units=tuple(reader.listdir(os.path.join(reader.sysfs, "class", "iommu"))),
        cmdline=cmdline,
        module_params=MappingProxyType(params),
        interrupt_remapping=interrupt_remapping(interrupts, cmdline),
        acpi_iommu_tables=tuple(t for t in IOMMU_TABLES if t in tables),
        vfio_groups=MappingProxyType(nodes),
    )


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
