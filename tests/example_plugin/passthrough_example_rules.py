"""An example rule pack: AMD GPUs with the "reset bug" are not eligible.

These cards do not come back from a function or bus reset: once a VM using one stops, the GPU
stays dead until the host reboots (unless the out-of-tree `vendor-reset` module handles it).
"""

from __future__ import annotations

from passthrough_exporter import hookimpl
from passthrough_exporter.model import Device, Finding, Inventory, Verdict

AMD = "0x1002"
RESET_BUG = {
    "0x67df": "Polaris 10 (RX 470/480/570/580)",
    "0x687f": "Vega 10 (RX Vega 56/64)",
    "0x731f": "Navi 10 (RX 5600/5700)",
    "0x7340": "Navi 14 (RX 5500)",
}


def _reset_bug(device: Device) -> str | None:
    if device.type != "pci" or device.vendor_id != AMD:
        return None
    return RESET_BUG.get(device.product_id or "")


@hookimpl
def passthrough_verdict(device: Device) -> Verdict | None:
    model = _reset_bug(device)
    if model is None:
        return None  # abstain: the built-in rules decide
    return Verdict.deny(f"AMD {model}: reset bug, the GPU does not come back after the VM stops")


@hookimpl
def passthrough_findings(inventory: Inventory) -> list[Finding]:
    return [
        Finding("gpu_reset_bug", "warning", dev.name, f"AMD {model} needs vendor-reset to be reused by a VM")
        for dev in inventory
        if (model := _reset_bug(dev)) is not None
    ]
