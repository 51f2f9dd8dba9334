"""Host safety rules: is IOMMU isolation real, are groups safe to split, which devices the host needs.

Findings only judge what the source read (HostFacts, devices, groups); every code below is stable
and used by dashboards and alert rules, so rename one only together with them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from .. import hookimpl
from ..judging.facts import Facts, GroupStatus
from ..model import Check, Device, Finding, Inventory, Verdict

HOST = "host"
IOMMU_PARAMS = ("intel_iommu", "amd_iommu", "iommu")

# The lines of the `check` report, in order, and the codes each covers.
CHECKS = (
    Check("IOMMU enabled in firmware and kernel", ("iommu_off_firmware", "iommu_off_kernel")),
    Check("No ACS override on the kernel command line", ("acs_override", "kernel_cmdline_unknown")),
    Check("VFIO requires interrupt remapping",
          ("unsafe_interrupts", "no_interrupt_remapping", "interrupt_remapping_unknown")),
    Check("VFIO no-IOMMU mode off", ("unsafe_noiommu",)),
    Check("VFIO devices have cdev nodes (iommufd)", ("vfio_no_cdev", "vfio_cdev_unknown")),
    Check("No IOMMU group split between VMs and host", ("group_mixed", "group_not_viable")),
    Check("Eligible devices have a function-level reset", ("no_flr", "no_reset")),
    Check("Eligible devices alone in their IOMMU group", ("group_multi_device",)),
    Check("No group needs a firmware 1:1 mapping (RMRR)", ("group_rmrr",)),
    Check("Root filesystem devices kept on the host", ("root_device", "group_root_device", "root_device_unknown")),
    Check("Boot VGA device", ("boot_vga", "group_boot_vga")),
)

# code -> what an operator can do about it.
FIXES = {
    "iommu_off_firmware": "enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup, then boot with "
    "intel_iommu=on (Intel) or amd_iommu=on (AMD)",
    "iommu_off_kernel": "add intel_iommu=on (Intel) or amd_iommu=on (AMD) to the kernel command line "
    "(and remove any intel_iommu=off / amd_iommu=off), then reboot",
    "acs_override": "remove pcie_acs_override= from the kernel command line; pass whole groups, or move "
    "the card to a slot behind an ACS-capable root port",
    "unsafe_interrupts": "remove allow_unsafe_interrupts=1 from the vfio_iommu_type1 options in "
    "/etc/modprobe.d and enable interrupt remapping (x2APIC/IR) in firmware",
    "kernel_cmdline_unknown": "make <procfs>/cmdline readable to the exporter (mount the host's /proc), or "
    "check by hand that /proc/cmdline has no pcie_acs_override= and no intremap=off",
    "unsafe_noiommu": "remove enable_unsafe_noiommu_mode=1 from the vfio options and enable the IOMMU instead",
    "interrupt_remapping_unknown": "make <procfs>/interrupts readable to the exporter (mount the host's /proc), "
    "or check by hand that `grep IR- /proc/interrupts` lists remapped interrupt chips",
    "no_interrupt_remapping": "enable interrupt remapping: x2APIC and VT-d/AMD-Vi interrupt remapping in the "
    "firmware setup, and no intremap=off on the kernel command line; allow_unsafe_interrupts=1 is not a fix",
    "vfio_no_cdev": "to open them through iommufd (QEMU or libvirt with iommufd, KubeVirt 1.9 and newer), boot a "
    "kernel 6.6 or newer built with CONFIG_VFIO_DEVICE_CDEV=y and CONFIG_IOMMUFD; until then use VFIO's group "
    "interface (/dev/vfio/<group>)",
    "vfio_cdev_unknown": "read the host's own /sys (mount it whole into the container: -v /sys:/host/sys:ro; with "
    "a remote libvirt URI, run the check on the host itself), or check `ls /sys/bus/pci/devices/ADDR/vfio-dev/*/dev` "
    "by hand for each device named",
    "group_mixed": "bind the whole group to vfio-pci (every endpoint, e.g. `driverctl set-override ADDR "
    "vfio-pci`, or libvirt managed='yes' hostdevs for all of them), or give it all back to the host",
    "group_not_viable": "to pass a device of such a group, bind every endpoint of the group to vfio-pci",
    "group_multi_device": "pass the whole group to one VM, or move the card to a slot with its own group",
    "group_rmrr": "the kernel will refuse VFIO for its devices: move the card to another slot, or change the "
    "firmware setting that requires the mapping (firmware setup or the vendor's tool); else keep the group on the host",
    "no_flr": "expect failed or disruptive resets: avoid moving the device between VMs without a host "
    "reboot; for GPUs see vendor-reset",
    "no_reset": "the device cannot be reset: give it to one VM for good and reboot the host before "
    "giving it to another",
    "root_device": "none needed: it stays on the host; never bind it to vfio-pci",
    "group_root_device": "do not pass devices of this group; move them (or the root disk) to a slot with "
    "its own IOMMU group",
    "root_device_unknown": "give the exporter the host's /proc (--path.procfs; in a container, mount it "
    "at /host/proc), or find by hand which devices carry the root filesystem (NIC for NFS/iSCSI root, "
    "RAID adapter ...) and keep them on the host",
    "boot_vga": "make another GPU primary in firmware, or free it from the host console "
    "(video=efifb:off, no framebuffer driver) and give the VM a ROM file",
    "group_boot_vga": "pass the whole group along with the GPU",
}

# code -> severity it is reported with (several are raised to "warning" when the group is shared).
CODES: dict[str, str] = {
    "iommu_off_firmware": "warning",
    "iommu_off_kernel": "warning",
    "acs_override": "critical",
    "kernel_cmdline_unknown": "warning",
    "unsafe_interrupts": "critical",
    "unsafe_noiommu": "critical",
    "no_interrupt_remapping": "warning",  # critical when a device is already on a VFIO driver
    "interrupt_remapping_unknown": "warning",
    "vfio_no_cdev": "warning",  # the group interface still works: never critical
    "vfio_cdev_unknown": "warning",  # keeps check from passing the cdev line without evidence
    "group_mixed": "critical",
    "group_not_viable": "info",
    "group_multi_device": "info",
    "group_rmrr": "warning",
    "no_flr": "warning",
    "no_reset": "warning",
    "root_device": "info",
    "root_device_unknown": "warning",
    "group_root_device": "info",  # warning when other endpoints share the group
    "boot_vga": "warning",
    "group_boot_vga": "info",  # warning when other endpoints share the group
}

_WEAKENED_MESSAGES = {
    "acs_override": "pcie_acs_override is on the kernel command line: IOMMU groups are split by a "
    "kernel patch, not by hardware isolation; devices in 'separate' groups can still reach each other by DMA",
    "unsafe_interrupts": "allow_unsafe_interrupts=Y (vfio_iommu_type1 or iommufd): without interrupt remapping "
    "a VM can inject interrupts into the host",
    "unsafe_noiommu": "vfio enable_unsafe_noiommu_mode=Y: VFIO hands out devices with no IOMMU at all; "
    "a VM can read and write all host memory by DMA",
}


def group_subject(number: int) -> str:
    return f"group:{number}"


def _finding(code: str, subject: str, message: str, severity: str | None = None) -> Finding:
    return Finding(code, severity or CODES[code], subject, message, FIXES[code])


def _first(names: Sequence[str], shown: int = 5) -> str:
    """The first `shown` names, and how many more."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _disks(inventory: Inventory) -> str:
    return ", ".join(inventory.host.root_disks) or "?"


RMRR = "firmware requires a 1:1 mapping (RMRR)"  # DESIGN's wording for the reason


# --- verdicts --------------------------------------------------------------------------------


@hookimpl
def passthrough_checks() -> tuple[Check, ...]:
    return CHECKS


@hookimpl
def passthrough_verdicts(inventory: Inventory, facts: Facts) -> dict[str, Verdict | None]:
    # Only these types can hold the root filesystem; of them only PCI functions get more rules.
    return {d.name: _verdict(d, inventory, facts) for d in inventory if d.type in ("pci", "scsi", "usb_device")}


def _verdict(device: Device, inventory: Inventory, facts: Facts) -> Verdict | None:
    if device.name in (inventory.host.root_devices or ()):
        return Verdict.deny(f"holds the root filesystem ({_disks(inventory)}): the host cannot give it away")
    if device.type != "pci":
        return None
    root = facts.root_peers.get(device.name)
    if root is not None:
        return Verdict.deny(f"shares IOMMU group {device.iommu_group} with {root}, which holds the root filesystem")
    if device.iommu_group is not None and device.iommu_group in inventory.host.rmrr_groups:
        return Verdict.deny(RMRR)
    warning = _reset_warning(device)
    # A caveat, not a ruling: shown only on devices the other rules make eligible.
    return Verdict.warn(warning) if warning is not None else None


def _reset_warning(device: Device) -> str | None:
    if device.reset_methods is None:  # the kernel does not say: no claim either way
        return None
    if not device.reset_methods:
        return "no reset method: device state can leak from one VM (or the host) to the next"
    if "flr" not in device.reset_methods:
        return (f"no function-level reset (only {', '.join(device.reset_methods)}): "
                "resets may fail or take the other functions of the device with them")
    return None


# --- findings --------------------------------------------------------------------------------


@hookimpl
def passthrough_findings(inventory: Inventory, verdicts: Mapping[str, Verdict], facts: Facts) -> Iterator[Finding]:
    yield from _iommu(inventory)
    yield from _cmdline(inventory)
    yield from _weakened(facts)
    yield from _interrupts(inventory, facts)
    yield from _cdev(facts)
    statuses = facts.groups
    yield from _groups(inventory, statuses, verdicts)
    yield from _rmrr(inventory, statuses)
    yield from _resets(inventory, verdicts)
    yield from _root(inventory, statuses, facts)
    yield from _boot_vga(inventory, statuses)


def _iommu(inventory: Inventory) -> Iterator[Finding]:
    host = inventory.host
    n_pci = sum(1 for d in inventory if d.type == "pci")
    if host.iommu_groups_present or not n_pci:
        return
    params = host.cmdline_params()
    # With intel_iommu=off the kernel registers no units either: the command line tells it apart.
    switched_off = [f"{k}={params[k]}" for k in IOMMU_PARAMS if params.get(k, "").split(",")[0] == "off"]
    if switched_off:
        yield _finding("iommu_off_kernel", HOST, (
            f"{n_pci} PCI devices but no IOMMU groups: {' '.join(switched_off)} on the kernel command line "
            "turns the IOMMU off; VFIO cannot assign devices"))
    elif host.iommu_units:
        yield _finding("iommu_off_kernel", HOST, (
            f"{n_pci} PCI devices but no IOMMU groups, although the firmware exposes IOMMU units "
            f"({', '.join(host.iommu_units)}): the kernel has the IOMMU off; VFIO cannot assign devices"))
    elif host.acpi_iommu_tables:
        yield _finding("iommu_off_kernel", HOST, (
            f"{n_pci} PCI devices but no IOMMU groups, although the firmware describes an IOMMU (ACPI "
            f"{' and '.join(host.acpi_iommu_tables)} table): the kernel did not enable it; VFIO cannot assign devices"))
    else:
        yield _finding("iommu_off_firmware", HOST, (
            f"{n_pci} PCI devices but no IOMMU groups and no IOMMU units in /sys/class/iommu: "
            "the IOMMU (VT-d/AMD-Vi) is off in firmware or missing; VFIO cannot assign devices"))


def _cmdline(inventory: Inventory) -> Iterator[Finding]:
    """An unreadable kernel command line is no evidence that pcie_acs_override is absent."""
    if inventory.host.cmdline is None and any(d.type == "pci" for d in inventory):
        yield _finding("kernel_cmdline_unknown", HOST, (
            "the kernel command line (<procfs>/cmdline) cannot be read: pcie_acs_override= and intremap=off "
            "cannot be ruled out"))


def _interrupts(inventory: Inventory, facts: Facts) -> Iterator[Finding]:
    """Without interrupt remapping VFIO refuses every assignment, unless unsafe interrupts are
    allowed (which `unsafe_interrupts` reports instead). Said on a host without IOMMU groups too,
    so that `check` never passes the line on a host that lacks remapping."""
    host = inventory.host
    if facts.weakened["unsafe_interrupts"]:
        return
    if host.interrupt_remapping is None:
        # Never a silent PASS: without the interrupt chips nothing says VFIO will accept devices,
        # on a host without IOMMU groups either (turning the IOMMU on would not be the whole fix).
        if any(d.type == "pci" for d in inventory):
            yield _finding("interrupt_remapping_unknown", HOST, (
                "interrupt remapping cannot be told (no readable /proc/interrupts, or no x86 interrupt chip in "
                "it): VFIO refuses to assign devices without it"))
        return
    if host.interrupt_remapping:
        return
    why = ("intremap=off on the kernel command line" if "intremap=off" in (host.cmdline or "").split()
           else "no IR- interrupt chip in /proc/interrupts")
    if not host.iommu_groups_present:  # the IOMMU is off too (reported above): both need fixing
        if any(d.type == "pci" for d in inventory):
            yield _finding("no_interrupt_remapping", HOST, (
                f"interrupt remapping is off as well ({why}): turning the IOMMU on alone will not let VFIO "
                "assign devices"))
        return
    on_vfio = sorted(n for st in facts.groups.values() for n in st.vfio)
    if on_vfio:
        shown = _first(on_vfio)
        yield _finding("no_interrupt_remapping", HOST, (
            f"interrupt remapping is off ({why}): VFIO refuses to assign devices, and {shown} already "
            "wait on a VFIO driver"), severity="critical")
    else:
        yield _finding("no_interrupt_remapping", HOST, (
            f"interrupt remapping is off ({why}): VFIO will refuse to assign any device"))


def _cdev(facts: Facts) -> Iterator[Finding]:
    """Devices VFIO drives without a cdev node: iommufd users cannot open them (`Facts.cdev_missing`).
    Never a silent PASS either: devices VFIO drives whose cdev cannot be told (`Facts.cdev_unknown`)."""
    missing, unknown = facts.cdev_missing, facts.cdev_unknown
    if missing:
        yield _finding("vfio_no_cdev", HOST, (
            f"{_on_vfio(missing)} without a VFIO cdev node (/dev/vfio/devices/vfio<N>): {_first(missing)}; "
            "the kernel predates 6.6 or lacks CONFIG_VFIO_DEVICE_CDEV, so iommufd users cannot open them"))
    if unknown:
        yield _finding("vfio_cdev_unknown", HOST, (
            f"whether {_on_vfio(unknown)} {'has' if len(unknown) == 1 else 'have'} a VFIO cdev node "
            f"(/dev/vfio/devices/vfio<N>) cannot be told ({facts.backends_unknown['cdev']}): {_first(unknown)}"))


def _on_vfio(names: Sequence[str]) -> str:
    return f"{len(names)} device{'' if len(names) == 1 else 's'} on a VFIO driver"


def _weakened(facts: Facts) -> Iterator[Finding]:
    for reason, on in facts.weakened.items():
        if on:
            yield _finding(reason, HOST, _WEAKENED_MESSAGES[reason])


def _groups(inventory: Inventory, statuses: Mapping[int, GroupStatus], verdicts: Mapping[str, Verdict]) -> Iterator[Finding]:
    for number, st in statuses.items():
        subject = group_subject(number)
        if st.mixed:
            yield _finding("group_mixed", subject, (
                f"group {number} is split: {', '.join(st.vfio)} on vfio while the host still drives "
                f"{', '.join(st.host)}; bind the whole group to vfio-pci or none of it"))
        if not st.viable:
            drivers = ", ".join(f"{n} ({inventory.devices[n].driver})" for n in st.host)
            yield _finding("group_not_viable", subject, f"VFIO would refuse group {number}: host drivers hold {drivers}")
        endpoints = st.endpoints
        eligible = [n for n in endpoints if n in verdicts and verdicts[n].eligible]
        if eligible and len(endpoints) > 1:
            bridges = f" (and bridges {', '.join(st.bridges)})" if st.bridges else ""
            yield _finding("group_multi_device", subject, (
                f"group {number} holds {len(endpoints)} endpoints: {', '.join(endpoints)}{bridges}; "
                "passing any of them to a VM takes all of them along"))


def _rmrr(inventory: Inventory, statuses: Mapping[int, GroupStatus]) -> Iterator[Finding]:
    for number in sorted(inventory.host.rmrr_groups):
        st = statuses.get(number)
        functions = f" ({', '.join(st.devices)})" if st is not None and st.devices else ""
        yield _finding("group_rmrr", group_subject(number), (
            f"group {number}{functions} has a 1:1 mapping the firmware requires (an RMRR, a `direct` reserved "
            "region): the kernel refuses to attach its devices to VFIO"))


def _resets(inventory: Inventory, verdicts: Mapping[str, Verdict]) -> Iterator[Finding]:
    for dev in inventory:
        if dev.type != "pci" or dev.name not in verdicts or not verdicts[dev.name].eligible:
            continue
        warning = _reset_warning(dev)
        if warning is not None:
            yield _finding("no_reset" if not dev.reset_methods else "no_flr", dev.name, warning)


def _shared_group(inventory: Inventory, statuses: Mapping[int, GroupStatus], dev: Device,
                  code: str, what: str) -> Iterator[Finding]:
    st = statuses.get(dev.iommu_group) if dev.iommu_group is not None else None
    if st is None:
        return
    others = [n for n in st.endpoints if n != dev.name]
    if others:
        yield _finding(code, group_subject(st.number), (
            f"group {st.number} holds {dev.name} ({what}); passing {', '.join(others)} would take it along"),
            severity="warning")
    else:
        yield _finding(code, group_subject(st.number), f"group {st.number} holds {dev.name} ({what})")


def _root(inventory: Inventory, statuses: Mapping[int, GroupStatus], facts: Facts) -> Iterator[Finding]:
    if facts.root_unknown:
        if inventory.host.root_devices is None:
            why = "the mount table (<procfs>/1/mountinfo) cannot be read"
        else:
            why = "the root filesystem is not on a block device traced to a PCI function (network, overlay or unusual storage)"
        yield _finding("root_device_unknown", HOST, (
            f"{why}: storage controllers, disks and their IOMMU groups are not offered as available, "
            "since any of them may hold it"))
        return
    for name in facts.root_functions:
        yield _finding("root_device", name, (
            f"{name} holds the root filesystem ({_disks(inventory)}): not eligible, the host needs it"))
        yield from _shared_group(inventory, statuses, inventory.devices[name], "group_root_device", "the root filesystem")


def _boot_vga(inventory: Inventory, statuses: Mapping[int, GroupStatus]) -> Iterator[Finding]:
    for dev in inventory:
        if dev.type == "pci" and dev.boot_vga:
            yield _finding("boot_vga", dev.name, (
                f"{dev.name} is the boot VGA device: the firmware and host console use it; passing it "
                "needs the host to let go of it (no framebuffer console) and often a VBIOS ROM file"))
            yield from _shared_group(inventory, statuses, dev, "group_boot_vga", "the boot VGA device")
