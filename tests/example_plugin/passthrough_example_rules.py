"""An example rule pack: AMD GPUs with the "reset bug" are not eligible.

These cards do not come back from a function or bus reset: once a VM using one stops, the GPU
stays dead until the host reboots, unless the out-of-tree `vendor-reset` module handles it. On a
host that has it, `--amd-reset-bug.vendor-reset` turns the denial into a warning.

It shows every part of a plugin: its own option and what it makes of it at start, a verdict, a
finding with its fix, and the line of the `check` report its finding belongs to.
"""

from __future__ import annotations

from passthrough_exporter import hookimpl
from passthrough_exporter.model import Check, Device, Finding, Inventory, Verdict

AMD = "0x1002"
RESET_BUG = {
    "0x67df": "Polaris 10 (RX 470/480/570/580)",
    "0x687f": "Vega 10 (RX Vega 56/64)",
    "0x731f": "Navi 10 (RX 5600/5700)",
    "0x7340": "Navi 14 (RX 5500)",
}
VENDOR_RESET = "amd_reset_bug.vendor_reset"  # our key in settings.stash
FIX = ("install and load the vendor-reset module (github.com/gnif/vendor-reset), then run the exporter "
       "with --amd-reset-bug.vendor-reset")


def _reset_bug(device: Device) -> str | None:
    if device.type != "pci" or device.vendor_id != AMD:
        return None
    return RESET_BUG.get(device.product_id or "")


@hookimpl
def passthrough_addoption(parser):
    parser.addoption("--amd-reset-bug.vendor-reset", dest="amd_reset_bug_vendor_reset", action="store_true",
                     help="the vendor-reset module is loaded here: GPUs with the AMD reset bug get a warning, "
                     "not a denial")


@hookimpl
def passthrough_configure(settings):
    settings.stash[VENDOR_RESET] = bool(settings.getoption("amd_reset_bug_vendor_reset"))


@hookimpl
def passthrough_verdict(device: Device, settings) -> Verdict | None:
    model = _reset_bug(device)
    if model is None:
        return None  # abstain: the built-in rules decide
    if settings.stash[VENDOR_RESET]:
        return Verdict.warn(f"AMD {model}: reset bug, handled by vendor-reset")
    return Verdict.deny(f"AMD {model}: reset bug, the GPU does not come back after the VM stops")


@hookimpl
def passthrough_findings(inventory: Inventory, settings) -> list[Finding]:
    if settings.stash[VENDOR_RESET]:
        return []
    return [
        Finding("gpu_reset_bug", "warning", dev.name, f"AMD {model} needs vendor-reset to be reused by a VM", FIX)
        for dev in inventory
        if (model := _reset_bug(dev)) is not None
    ]


@hookimpl
def passthrough_checks() -> list[Check]:
    return [Check("AMD GPUs come back after a VM stops", ("gpu_reset_bug",))]
