"""Host-wide facts about the IOMMU and isolation: groups, IOMMU units, VFIO module parameters and
the kernel command line."""

from __future__ import annotations

import os
from types import MappingProxyType

from ..model import HostFacts
from .files import Reader

MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")
CMDLINE_LIMIT = 64 << 10  # bytes; the kernel caps its command line far below this


def host_facts(reader: Reader) -> HostFacts:
    params: dict[str, str] = {}
    for module in MODULES:
        pdir = os.path.join(reader.sysfs, "module", module, "parameters")
        for param in reader.listdir(pdir):
            value = reader.optional({param}, pdir, param, str, f"module {module}")
            if value is not None:
                params[f"{module}.{param}"] = value
    cmdline = reader.text_file(os.path.join(reader.procfs, "cmdline"), CMDLINE_LIMIT) or ""
    return HostFacts(
        iommu_groups_present=bool(reader.listdir(os.path.join(reader.sysfs, "kernel", "iommu_groups"))),
        iommu_units=tuple(reader.listdir(os.path.join(reader.sysfs, "class", "iommu"))),
        cmdline=cmdline.strip(),
        module_params=MappingProxyType(params),
    )
