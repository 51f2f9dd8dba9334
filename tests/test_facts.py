from __future__ import annotations

from types import MappingProxyType

from passthrough_exporter.judging.facts import group_status, weakened
from passthrough_exporter.model import Device, HostFacts, Inventory


def pci(name, driver, cls="0x020000", header=0, group=7):
    return Device(name=name, type="pci", pci_class=cls, header_type=header, driver=driver, iommu_group=group)


def test_group_viability_by_the_vfio_rule():
    inv = Inventory([
        pci("pci_a", "vfio-pci"), pci("pci_b", "pci-stub"), pci("pci_c", None),
        pci("pci_d", "pcieport", cls="0x060400", header=1),
        pci("pci_e", "vfio-pci", group=8), pci("pci_f", "igb", group=8),
        pci("pci_g", "nvme", group=9),
    ])
    st = group_status(inv)
    assert (st[7].vfio, st[7].host, st[7].bridges) == (("pci_a", "pci_b"), (), ("pci_d",))
    assert st[7].viable and not st[7].mixed
    assert st[8].mixed and not st[8].viable and st[8].host == ("pci_f",)
    assert not st[9].viable and not st[9].mixed


def test_weakened_isolation_reasons():
    assert weakened(HostFacts()) == {"acs_override": False, "unsafe_interrupts": False, "unsafe_noiommu": False}
    host = HostFacts(
        cmdline="root=/dev/sda pcie_acs_override=downstream",
        module_params=MappingProxyType({"vfio_iommu_type1.allow_unsafe_interrupts": "Y",
                                        "vfio.enable_unsafe_noiommu_mode": "N"}),
    )
    assert weakened(host) == {"acs_override": True, "unsafe_interrupts": True, "unsafe_noiommu": False}
