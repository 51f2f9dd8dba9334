"""Expected inventory: the `[[expect]]` tables of the policy file, checked against every read.

An expectation names a PCI address and, optionally, what the function there must look like::

    [[expect]]
    address = "0000:3b:00.0"
    vendor_id = "0x10de"
    driver = "vfio-pci"
    iommu_group = 42

A function that is not there is `expected_missing`; one that differs in any named field is
`expected_mismatch`, whose message names every field that differs. Both are critical: a GPU that
vanished after a firmware update, or came back on the host driver, is a VM that will not start.
The file format (and its checks) is in `rules.py`; this module only compares.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ...model import Check, Device, Finding, Inventory, device_name

# The fields an [[expect]] table may name beside its address, in the order messages list them.
ID_FIELDS = ("vendor_id", "product_id", "subsystem_vendor_id", "subsystem_product_id")
FIELDS = (*ID_FIELDS, "driver", "iommu_group", "sriov_numvfs")

CHECK = Check("Expected devices present and unchanged", ("expected_missing", "expected_mismatch"))

Value = str | int


@dataclass(frozen=True, slots=True)
class Expectation:
    address: str  # normalised: "0000:3b:00.0", lower-case hex
    fields: tuple[tuple[str, Value], ...] = ()  # (field, expected value) in FIELDS order; driver "" = unbound
    line: int | None = None

    @property
    def name(self) -> str:
        """The device name the function has when it is there (libvirt naming)."""
        return device_name("pci", self.address)


def findings(expectations: tuple[Expectation, ...], inventory: Inventory, path: str) -> Iterator[Finding]:
    """`expected_missing` / `expected_mismatch` for each expectation the inventory does not meet."""
    for exp in expectations:
        where = f"{path}:{exp.line}" if exp.line else path
        dev = inventory.get(exp.name)
        if dev is None or dev.type != "pci":
            yield Finding(
                "expected_missing", "critical", exp.name,
                f"PCI device {exp.address} is expected by {where} but is not on this host",
                f"check that the card at {exp.address} is seated, powered and enabled in the firmware setup "
                f"(a firmware update can disable slots or renumber buses); if it moved on purpose, "
                f"update its [[expect]] table in {path}",
            )
            continue
        diffs = [(field, want, _found(dev, field)) for field, want in exp.fields if not _same(dev, field, want)]
        if diffs:
            parts = "; ".join(f"{field}: expected {_show(field, want)}, found {_show(field, got)}"
                              for field, want, got in diffs)
            yield Finding(
                "expected_mismatch", "critical", exp.name,
                f"{exp.name} ({exp.address}) differs from {where}: {parts}",
                _fix(exp.address, diffs, path),
            )


def _found(dev: Device, field: str) -> Value | None:
    return getattr(dev, field)


def _same(dev: Device, field: str, want: Value) -> bool:
    got = _found(dev, field)
    if field == "driver":
        return (got or "") == want  # no driver bound: None, expected as ""
    # Ids are normalised "0x10de" on both sides. An id the source did not read (None) is not a
    # match: the expectation cannot be confirmed, and a PASS would claim it was.
    return got == want


def _show(field: str, value: Value | None) -> str:
    if field in ID_FIELDS:
        return "unknown (not read by this source)" if value is None else str(value)
    if value is None or value == "":
        return "none"
    return str(value)


def _fix(address: str, diffs: list[tuple[str, Value, Value | None]], path: str) -> str:
    """What to do, field by field, in one sentence."""
    steps: list[str] = []
    fields = {field: (want, got) for field, want, got in diffs}
    if any(f in fields for f in ID_FIELDS):
        steps.append(f"check which card answers at {address} (lspci -nn -s {address}): "
                     "other hardware or firmware is there")
    if "driver" in fields:
        want, got = fields["driver"]
        if want:
            steps.append(f"bind it to {want} (driverctl set-override {address} {want})")
        else:
            steps.append(f"unbind it from {got} (echo {address} > /sys/bus/pci/devices/{address}/driver/unbind)")
    if "iommu_group" in fields:
        _, got = fields["iommu_group"]
        if got is None:
            steps.append("turn the IOMMU back on (it has no IOMMU group: see the IOMMU check)")
        else:
            steps.append("see which devices share its new IOMMU group before passing it "
                         "(a firmware update or slot change regrouped it)")
    if "sriov_numvfs" in fields:
        want, got = fields["sriov_numvfs"]
        numvfs = f"/sys/bus/pci/devices/{address}/sriov_numvfs"
        if got is None:
            steps.append("enable SR-IOV for it in the firmware setup (it offers no virtual functions now)")
        elif want and got:  # the kernel refuses a new count until the VFs are gone
            steps.append(f"set its VF count (echo 0 > {numvfs}, then echo {want} > {numvfs})")
        else:
            steps.append(f"set its VF count (echo {want} > {numvfs})")
    steps.append(f"or, if the change is intended, update its [[expect]] table in {path}")
    return "; ".join(steps)
