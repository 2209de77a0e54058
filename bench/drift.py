"""Drift detection on real data, and what a drift computation costs.

1. Reference: LGG slices of 30 patients (every institution), calibrated by patient groups.
   Windows of n predictions drawn from: 10 held-out LGG patients (same distribution: every
   flag is a false alarm), 4-class JPEG slices (other scanners), and held-out LGG slices
   with a strong bias field or added noise. Prints the share of windows flagged per window
   size: the false-alarm rate and the detection rate, i.e. how many requests it takes.
   Decisions on every window use the statistic Evidently computes (normed Wasserstein); a
   subset is re-run through Evidently itself and the agreement printed.
2. Time of ``compute_drift`` (Evidently) for windows of 100, 1,000 and 10,000 predictions,
   against the bare SciPy statistics on the same columns (the baseline) in the same run.

    python -m bench drift   (or: python bench/drift.py --windows 200 --size 256)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image as PILImage

from medops.monitoring.drift import build_reference, compute_drift, load_reference
from medops.monitoring.drift import normed_wasserstein as nw
from medops.transforms import preprocess_slice

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDOPS_DATA_DIR", ROOT.parent / "shared" / "data"))
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def lgg_patients() -> list[Path]:
    base = DATA / "lgg-mri-segmentation"
    if not base.is_dir():
        raise SystemExit(f"real data not found at {DATA} (set MEDOPS_DATA_DIR)")
    return sorted(p for p in base.iterdir() if p.is_dir())


def read_lgg(patients: list[Path]) -> tuple[list[np.ndarray], list[int]]:
    """Raw (3, H, W) uint8 slices and a patient index per slice."""
    images, groups = [], []
    for gi, patient in enumerate(patients):
        for f in sorted(patient.glob("*.tif")):
            if not f.name.endswith("_mask.tif"):
                images.append(np.moveaxis(tifffile.imread(f), -1, 0))
                groups.append(gi)
    return images, groups


def read_fourclass(per_class: int) -> list[np.ndarray]:
    base = DATA / "brain-tumor-mri-4class" / "Training"
    out = []
    for cls in CLASSES:
        for f in sorted((base / cls).glob("*.jpg"))[:per_class]:
            out.append(np.moveaxis(np.asarray(PILImage.open(f).convert("RGB")), -1, 0))
    return out


def bias_field(raw: np.ndarray) -> np.ndarray:
    """A strong multiplicative ramp, 0.4 to 1.6 across the field of view (coil shading)."""
    _, h, w = raw.shape
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = 0.4 + 1.2 * (0.6 * xx / (w - 1) + 0.4 * yy / (h - 1))
    return np.clip(raw * ramp[None], 0, 255).astype(np.uint8)


def noisy(raw: np.ndarray, rng: np.random.Generator, sigma: float = 20.0) -> np.ndarray:
    """Gaussian noise of ``sigma`` grey levels (about 8 % of the range)."""
    return np.clip(raw + rng.normal(0.0, sigma, raw.shape), 0, 255).astype(np.uint8)


def features(ref, images: list[np.ndarray], size: int) -> pd.DataFrame:
    rows = [ref.features(preprocess_slice(im, size), original_shape=im.shape) for im in images]
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="model input size")
    parser.add_argument("--windows", type=int, default=200, help="windows per cell")
    parser.add_argument("--evidently-checks", type=int, default=2, help="Evidently runs per cell")
    parser.add_argument("--per-class", type=int, default=100, help="4-class images per class")
    parser.add_argument("--timing-only", action="store_true", help="skip the detection table")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    patients = lgg_patients()
    ref_p = [p for i, p in enumerate(patients) if i % 4 != 3]
    held_p = [p for i, p in enumerate(patients) if i % 4 == 3]
    ref_raw, groups = read_lgg(ref_p)
    held_raw, _ = read_lgg(held_p)
    four_raw = read_fourclass(args.per_class)
    print(
        f"data: reference {len(ref_raw)} slices / {len(ref_p)} patients, held-out "
        f"{len(held_raw)} slices / {len(held_p)} patients, 4-class {len(four_raw)} slices "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        inputs = [preprocess_slice(im, args.size) for im in ref_raw]
        build_reference(
            inputs,
            model="brain-tumor-classifier",
            model_version="bench",
            home=home,
            groups=groups,
            original_shapes=[im.shape for im in ref_raw],
        )
        ref = load_reference("brain-tumor-classifier", "bench", home=home)
        per_image = (time.perf_counter() - t0) / len(ref_raw)
        print(f"reference built: {per_image * 1e3:.1f} ms per slice (preprocess + features)")
        sets = {
            "held-out LGG (false alarms)": features(ref, held_raw, args.size),
            "4-class JPEG": features(ref, four_raw, args.size),
            "LGG + bias field": features(ref, [bias_field(im) for im in held_raw], args.size),
            "LGG + noise": features(ref, [noisy(im, rng) for im in held_raw], args.size),
        }
    thresholds, frame = ref.thresholds, ref.frame
    columns = list(thresholds)
    share_limit = 0.1

    def flagged(window: pd.DataFrame) -> bool:
        drifted = sum(
            nw(frame[c].to_numpy(), window[c].to_numpy()) >= thresholds[c] for c in columns
        )
        return drifted / len(columns) >= share_limit

    sizes = () if args.timing_only else (10, 20, 30, 50, 100)
    if sizes:
        print(f"\nshare of {args.windows} random windows flagged (drift share >= {share_limit}):")
        print(f"{'window':>8} " + " ".join(f"{name:>28}" for name in sets))
    agree = total = 0
    for n in sizes:
        cells = []
        for data in sets.values():
            hits = 0
            for w in range(args.windows):
                window = data.sample(n=min(n, len(data)), random_state=w)
                hit = flagged(window)
                hits += hit
                if w < args.evidently_checks:
                    res = compute_drift(frame, window, model="m", thresholds=thresholds, html=False)
                    agree += res.drift_detected == hit
                    total += 1
            cells.append(f"{hits / args.windows:>28.3f}")
        print(f"{n:>8} " + " ".join(cells))
    if sizes:
        print(f"Evidently agreed with the fast statistic on {agree}/{total} windows")

    print(
        "\ncompute_drift per window (Evidently DataDriftPreset, HTML off) vs the bare SciPy"
        f" statistics (baseline); {len(columns)} columns, reference {len(frame)} rows;"
        " wall and CPU seconds (the CPU is shared: CPU time is the steadier figure):"
    )
    pool = pd.concat(list(sets.values()), ignore_index=True)
    compute_drift(frame, pool.head(50), model="m", thresholds=thresholds, html=False)  # warm-up
    for n in (100, 1_000, 10_000):
        window = pool.sample(n=n, replace=True, random_state=n)
        w0, c0 = time.perf_counter(), time.process_time()
        compute_drift(frame, window, model="m", thresholds=thresholds, html=False)
        ev_wall, ev_cpu = time.perf_counter() - w0, time.process_time() - c0
        w0, c0 = time.perf_counter(), time.process_time()
        for c in columns:
            nw(frame[c].to_numpy(), window[c].to_numpy())
        np_wall, np_cpu = time.perf_counter() - w0, time.process_time() - c0
        print(
            f"  window {n:>6}: Evidently {ev_wall:6.2f} s wall {ev_cpu:6.2f} s CPU   "
            f"SciPy {np_wall * 1e3:7.1f} ms wall {np_cpu * 1e3:7.1f} ms CPU   "
            f"ratio {ev_cpu / max(np_cpu, 1e-6):6.0f}x CPU"
        )
    window = pool.sample(n=1000, replace=True, random_state=1)
    w0, c0 = time.perf_counter(), time.process_time()
    compute_drift(frame, window, model="m", thresholds=thresholds, html=True)
    print(
        f"  window   1000 with the HTML report: {time.perf_counter() - w0:.2f} s wall "
        f"{time.process_time() - c0:.2f} s CPU"
    )


if __name__ == "__main__":
    main()
