"""What the benchmarks share: the product as a command, its environment, the machine, medians and ratios."""

from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

START_TIMEOUT = 300  # seconds for a server to answer (ours reads the host once before it listens)
PCI_IDS = next((p for p in ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")
                if os.path.exists(p)), None)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def product_env(unbuffered: bool = False) -> dict[str, str]:
    """The environment the product runs in, as installed: bytecode cached, stdout buffered."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def product_cmd() -> list[str]:
    script = Path(sys.executable).with_name("passthrough-exporter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "passthrough_exporter"]


def compile_product() -> None:
    """Bytecode for the project's modules, as `pip install` leaves it: an editable install run under
    PYTHONDONTWRITEBYTECODE would otherwise compile every module on every start."""
    spec = importlib.util.find_spec("passthrough_exporter")
    plugins = importlib.util.find_spec("passthrough_exporter.plugins")
    dirs = [*(spec.submodule_search_locations or []), *(plugins.submodule_search_locations or [])]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True, env=product_env())


def ratios(a: list[dict] | list[float], b: list[dict] | list[float], key: str = "wall") -> float:
    """Median of the pairwise ratios a[i] / b[i]."""
    get = (lambda r: r[key]) if a and isinstance(a[0], dict) else (lambda r: r)  # noqa: E731
    return median([get(x) / get(y) for x, y in zip(a, b)])


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores (shared), {platform.system()} {_kernel()}, "
            f"Python {platform.python_version()} ({platform.python_implementation()})")


def _kernel() -> str:
    """The kernel's version without its build's local suffix (`6.1.0-18-amd64` -> `6.1.0`)."""
    return platform.release().split("-")[0]

