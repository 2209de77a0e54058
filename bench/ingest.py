"""Dataset preparation on the full LGG data: ingest, split + validate, and preprocessed arrays
at 128 and 256 pixels, first on a fresh MEDOPS_HOME (cold) and then again on the same home
(cached); the ratio cold/cached is what the caches buy.

Baseline measured in the same run: reading every file's bytes once (the I/O floor). The data
files themselves stay in the OS page cache between runs (dropping it needs root), so "cold"
means cold medops caches, not a cold disk.

    python bench/ingest.py [--data DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medops.data import ingest, load_arrays, split_dataset, validate
from medops.settings import MedopsSettings


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _run(data: Path, home: Path) -> tuple[dict[str, float], dict[str, Any]]:
    times: dict[str, float] = {}
    facts: dict[str, Any] = {}
    times["ingest"], manifest = _timed(lambda: ingest(data, home))

    def check() -> Any:
        return validate(manifest, split_dataset(manifest, seed=0))

    times["split + validate"], report = _timed(check)
    ids = [s.sample_id for s in manifest.samples]
    for size in (128, 256):
        t0 = time.perf_counter()
        arrays = load_arrays(manifest, ids, size=size, home=home)
        times[f"load_arrays {size}px"] = time.perf_counter() - t0
        facts[f"decoded {size}"] = arrays.decoded
        facts[f"shape {size}"] = arrays.images.shape
        del arrays
    facts.update(version=manifest.version, samples=len(ids), ok=report.ok)
    return times, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="LGG folder")
    args = parser.parse_args()
    data = args.data or MedopsSettings().data_dir / "lgg-mri-segmentation"
    import torch

    torch.set_num_threads(2)
    files = [p for p in data.rglob("*") if p.is_file()]
    floor, nbytes = _timed(lambda: sum(len(p.read_bytes()) for p in files))
    with tempfile.TemporaryDirectory(prefix="medops-bench-") as tmp:
        home = Path(tmp)
        cold, facts = _run(data, home)
        cached, again = _run(data, home)
    print(
        f"LGG data: {facts['samples']} slices, {len(files)} files, {nbytes / 1e6:.0f} MB, "
        f"version {facts['version']}, valid: {facts['ok']}"
    )
    print(f"baseline: read every file once  {floor:7.2f} s")
    print(
        f"{'stage':22s} {'cold s':>8s} {'cached s':>9s} {'cold/cached':>12s} {'cold/baseline':>14s}"
    )
    cold["total"], cached["total"] = sum(cold.values()), sum(cached.values())
    for stage in cold:
        c, w = cold[stage], cached[stage]
        print(f"{stage:22s} {c:8.2f} {w:9.2f} {c / w:12.1f} {c / floor:14.1f}")
    print(
        f"slices decoded: cold {facts['decoded 128']} + {facts['decoded 256']}, "
        f"cached {again['decoded 128']} + {again['decoded 256']}; "
        f"arrays {facts['shape 128']} and {facts['shape 256']} float32"
    )


if __name__ == "__main__":
    main()
