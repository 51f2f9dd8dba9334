"""Synthetic hosts for the benchmarks, built once into a cache and kept there.

The hosts are tests/support/synthetic.py's: thousands of devices laid out like the kernel's.

    .venv/bin/python -m benchmarks.generate 20000 [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from tests.support.synthetic import VERSION, generate

# sysfs lives in memory (kernfs): a tmpfs is the closer model, and a disk-backed tree of 20k devices
# takes minutes to create. Falls back to benchmarks/.cache (git-ignored).
SHM = Path("/dev/shm")
CACHE = SHM / "passthrough-bench" if SHM.is_dir() and os.access(SHM, os.W_OK) else Path(__file__).resolve().parent / ".cache"


def cached(size: int, seed: int = 7) -> tuple[Path, Path]:
    """(sysfs, procfs) of a generated host, built once into the cache."""
    root = CACHE / f"host-{size}-s{seed}-v{VERSION}"
    if not (root / "complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(root, size, seed)
        (root / "complete").write_text("ok\n")
    return root / "sys", root / "proc"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("size", type=int)
    ap.add_argument("--out", type=Path, help="directory to build into (default: the cache)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.out:
        _, m = generate(args.out, args.size, args.seed)
        print(f"{m.devices} devices, {m.groups} IOMMU groups, {len(m.pfs)} PFs: {args.out}")
    else:
        print(*cached(args.size, args.seed))


if __name__ == "__main__":
    main()
