"""The `check` report: findings of a judged snapshot grouped into virt-host-validate style checks.

Each check names the finding codes it covers; its status is the worst severity among them
(critical -> FAIL, warning -> WARN, info or nothing -> PASS). Codes no check knows (third-party
plugins) go under a last check of their own, so nothing a plugin reports is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from passthrough_exporter.isolation import group_layout_hash, root_pci_functions
from passthrough_exporter.model import Finding
from passthrough_exporter.snapshot import Snapshot

STATUS_BY_SEVERITY = {"critical": "FAIL", "warning": "WARN", "info": "PASS"}
EXIT_CODES = {"PASS": 0, "WARN": 1, "FAIL": 2}
INFO_SHOWN = 5  # info findings printed per check; more are counted (a big host has many groups)

# (title, codes it covers)
CHECKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("IOMMU enabled in firmware and kernel", ("iommu_off_firmware", "iommu_off_kernel")),
    ("No ACS override on the kernel command line", ("acs_override",)),
    ("VFIO requires interrupt remapping", ("unsafe_interrupts",)),
    ("VFIO no-IOMMU mode off", ("unsafe_noiommu",)),
    ("No IOMMU group split between VMs and host", ("group_mixed", "group_not_viable")),
    ("Eligible devices have a function-level reset", ("no_flr", "no_reset")),
    ("Eligible devices alone in their IOMMU group", ("group_multi_device",)),
    ("Root filesystem devices kept on the host", ("root_device", "group_root_device", "root_device_unknown")),
    ("Boot VGA device", ("boot_vga", "group_boot_vga")),
)
OTHER = "Findings of other plugins"

FIXES = {
    "iommu_off_firmware": "enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup, then boot with "
    "intel_iommu=on (Intel) or amd_iommu=on (AMD)",
    "iommu_off_kernel": "add intel_iommu=on (Intel) or amd_iommu=on (AMD) to the kernel command line "
    "(and remove any intel_iommu=off / amd_iommu=off), then reboot",
    "acs_override": "remove pcie_acs_override= from the kernel command line; pass whole groups, or move "
    "the card to a slot behind an ACS-capable root port",
    "unsafe_interrupts": "remove allow_unsafe_interrupts=1 from the vfio_iommu_type1 options in "
    "/etc/modprobe.d and enable interrupt remapping (x2APIC/IR) in firmware",
    "unsafe_noiommu": "remove enable_unsafe_noiommu_mode=1 from the vfio options and enable the IOMMU instead",
    "group_mixed": "bind the whole group to vfio-pci (every endpoint, e.g. `driverctl set-override ADDR "
    "vfio-pci`, or libvirt managed='yes' hostdevs for all of them), or give it all back to the host",
    "group_not_viable": "to pass a device of such a group, bind every endpoint of the group to vfio-pci",
    "group_multi_device": "pass the whole group to one VM, or move the card to a slot with its own group",
    "no_flr": "expect failed or disruptive resets: avoid moving the device between VMs without a host "
    "reboot; for GPUs see vendor-reset",
    "no_reset": "the device cannot be reset: give it to one VM for good and reboot the host before "
    "giving it to another",
    "root_device": "none needed: it stays on the host; never bind it to vfio-pci",
    "group_root_device": "do not pass devices of this group; move them (or the root disk) to a slot with "
    "its own IOMMU group",
    "root_device_unknown": "find by hand which devices carry the root filesystem (NIC for NFS/iSCSI root, "
    "RAID adapter ...) and keep them on the host",
    "boot_vga": "make another GPU primary in firmware, or free it from the host console "
    "(video=efifb:off, no framebuffer driver) and give the VM a ROM file",
    "group_boot_vga": "pass the whole group along with the GPU",
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    title: str
    status: str  # PASS | WARN | FAIL
    findings: tuple[Finding, ...]


def _status(findings: tuple[Finding, ...]) -> str:
    worst = max((EXIT_CODES[STATUS_BY_SEVERITY[f.severity]] for f in findings), default=0)
    return next(s for s, code in EXIT_CODES.items() if code == worst)


def run_checks(snapshot: Snapshot) -> list[CheckResult]:
    known = {code for _, codes in CHECKS for code in codes}
    results = []
    for title, codes in CHECKS:
        mine = tuple(f for f in snapshot.findings if f.code in codes)
        results.append(CheckResult(title, _status(mine), mine))
    other = tuple(f for f in snapshot.findings if f.code not in known)
    if other:
        results.append(CheckResult(OTHER, _status(other), other))
    return results


def exit_code(results: list[CheckResult]) -> int:
    """0 when every check passes, 1 with warnings, 2 with failures."""
    return max((EXIT_CODES[r.status] for r in results), default=0)


def _notes(snapshot: Snapshot) -> list[str]:
    """Facts worth a line even when all is well: where `/` lives and what the groups look like."""
    inv = snapshot.inventory
    out = []
    for name in root_pci_functions(inv):
        state = "not eligible" if not snapshot.verdicts[name].eligible else "ELIGIBLE"
        out.append(f"root filesystem ({', '.join(inv.host.root_disks)}) is on {name}: {state}")
    groups = len(inv.groups)
    out.append(f"IOMMU group layout: {groups} groups, hash {group_layout_hash(inv)}")
    return out


def render_text(snapshot: Snapshot, results: list[CheckResult]) -> str:
    width = max(len(r.title) for r in results)
    lines = []
    for r in results:
        lines.append(f"{r.title:<{width}} : {r.status}")
        shown = [f for f in r.findings if f.severity != "info"]
        infos = [f for f in r.findings if f.severity == "info"]
        shown += infos[:INFO_SHOWN]
        for f in shown:
            lines.append(f"    {f.severity} {f.code} [{f.subject}]: {f.message}")
        if len(infos) > INFO_SHOWN:
            lines.append(f"    ... and {len(infos) - INFO_SHOWN} more info findings (see --json)")
        hints = dict.fromkeys(FIXES[f.code] for f in r.findings if f.severity != "info" and f.code in FIXES)
        for hint in hints:
            lines.append(f"    fix: {hint}")
    lines += [f"note: {n}" for n in _notes(snapshot)]
    return "\n".join(lines) + "\n"


def render_json(snapshot: Snapshot, results: list[CheckResult]) -> dict[str, Any]:
    inv = snapshot.inventory
    return {
        "status": next(s for s, c in EXIT_CODES.items() if c == exit_code(results)),
        "checks": [
            {
                "check": r.title,
                "status": r.status,
                "findings": [
                    {"code": f.code, "severity": f.severity, "subject": f.subject, "message": f.message,
                     "fix": FIXES.get(f.code)}
                    for f in r.findings
                ],
            }
            for r in results
        ],
        "root_devices": None if inv.host.root_devices is None else list(inv.host.root_devices),
        "root_disks": list(inv.host.root_disks),
        "group_layout_hash": group_layout_hash(inv),
    }
