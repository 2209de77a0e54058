"""Calibrated drift alarms on real data: false alarms, detection and delay, and their cost.

Per model, on LGG patients split as the pipeline splits them: a reference (half the
patients, the training split's role), calibration patients (a quarter, the validation
split's), and held-out development patients (the last quarter, used for nothing else).
The classifier sees every slice; the segmenter the slices the classifier flags, here the
tumour-labelled ones (what a perfect classifier flags; no model is trained for this).

1. The false-alarm rate on the development patients at the calibrated thresholds, for
   windows of 100 predictions drawn from one patient, from half of them, and from all.
2. Detection on shifted sets: other-scanner images (the 4-class JPEGs; tumour classes
   only for the segmenter), Gaussian noise and a bias field on development slices. A
   stream of healthy predictions turns shifted; the newest 100 are judged after every
   prediction: the detection rate (windows fully shifted that alarm) and the delay (shifted
   predictions until the first alarm).
3. What it costs: calibration at export, one window at run time (the fast statistic and
   Evidently's report on the same columns).

    python -m bench drift   (or: python bench/drift.py --streams 100)
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

from medops.monitoring.drift import (
    CalibrationSet,
    ReferenceDistances,
    build_reference,
    compute_drift,
    draw_windows,
    load_reference,
)
from medops.transforms import preprocess_slice

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDOPS_DATA_DIR", ROOT.parent / "shared" / "data"))
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
WINDOW = 100


def lgg_patients() -> list[Path]:
    base = DATA / "lgg-mri-segmentation"
    if not base.is_dir():
        raise SystemExit(f"real data not found at {DATA} (set MEDOPS_DATA_DIR)")
    return sorted(p for p in base.iterdir() if p.is_dir())


def read_lgg(patients: list[Path]) -> tuple[list[np.ndarray], list[int], list[bool]]:
    """Raw (3, H, W) uint8 slices, a patient index and a has-tumour flag per slice."""
    images, groups, tumour = [], [], []
    for gi, patient in enumerate(patients):
        for f in sorted(patient.glob("*.tif")):
            if not f.name.endswith("_mask.tif"):
                images.append(np.moveaxis(tifffile.imread(f), -1, 0))
                groups.append(gi)
                tumour.append(bool(tifffile.imread(f.with_name(f"{f.stem}_mask.tif")).any()))
    return images, groups, tumour


def read_fourclass(per_class: int, classes: tuple[str, ...]) -> list[np.ndarray]:
    base = DATA / "brain-tumor-mri-4class" / "Training"
    out = []
    for cls in classes:
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


def _pick(items: list, keep: list[bool]) -> list:
    return [x for x, k in zip(items, keep, strict=True) if k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="model input size")
    parser.add_argument("--streams", type=int, default=50, help="shifted streams per cell")
    parser.add_argument("--windows", type=int, default=2000, help="healthy windows per cell")
    parser.add_argument("--per-class", type=int, default=100, help="4-class images per class")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    patients = lgg_patients()
    parts = {
        name: read_lgg([p for i, p in enumerate(patients) if i % 4 in quarters])
        for name, quarters in (("reference", (0, 1)), ("calibration", (2,)), ("dev", (3,)))
    }
    print(
        "data: "
        + ", ".join(
            f"{name} {len(imgs)} slices / {len(set(groups))} patients"
            for name, (imgs, groups, _) in parts.items()
        )
        + f" ({time.perf_counter() - t0:.1f} s)"
    )
    models = {
        "brain-tumor-classifier": (lambda tumour: [True] * len(tumour), CLASSES),
        "brain-tumor-segmenter": (lambda tumour: tumour, ("glioma", "meningioma", "pituitary")),
    }
    for model, (population, jpeg_classes) in models.items():
        chosen = {}
        for name, (imgs, groups, tumour) in parts.items():
            keep = population(tumour)
            chosen[name] = (_pick(imgs, keep), _pick(groups, keep))
        (ref_raw, ref_groups), (cal_raw, cal_groups) = chosen["reference"], chosen["calibration"]
        dev_raw, dev_groups = chosen["dev"]
        print(f"\n-- {model}: reference {len(ref_raw)}, calibration {len(cal_raw)}, dev "
              f"{len(dev_raw)} slices")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            t0, c0 = time.perf_counter(), time.process_time()
            build_reference(
                [preprocess_slice(im, args.size) for im in ref_raw],
                model=model,
                model_version="bench",
                home=home,
                groups=ref_groups,
                original_shapes=[im.shape for im in ref_raw],
                calibration=CalibrationSet(
                    [preprocess_slice(im, args.size) for im in cal_raw],
                    groups=cal_groups,
                    original_shapes=[im.shape for im in cal_raw],
                ),
            )
            ref = load_reference(model, "bench", home=home)
            print(
                f"reference built and calibrated: {time.perf_counter() - t0:.1f} s wall, "
                f"{time.process_time() - c0:.1f} s CPU (features of every slice included)"
            )
        assert ref.calibration is not None
        cal = ref.calibration
        print(
            f"calibrated: target {cal.false_alarm_rate:.1%} of windows of {cal.window}, "
            f"{cal.draws} windows of one held-out patient over {cal.rounds} splits of "
            f"{cal.groups} patients; per-column level {cal.column_level:.4f}, rate on the "
            f"calibration windows {cal.calibration_rate:.2%}"
        )
        columns = list(ref.thresholds)
        limits = np.array([ref.thresholds[c] for c in columns])
        distance = ReferenceDistances(ref.frame, columns)
        dev = features(ref, dev_raw, args.size)[columns].to_numpy()
        labels = np.asarray(dev_groups)
        count = int(np.unique(labels).size)
        print(f"false alarms on {count} development patients ({args.windows} windows of 100):")
        for mix, k in (("one patient", 1), ("half of them", max(1, count // 2)), ("all", count)):
            windows = draw_windows(
                dev, labels, window=WINDOW, draws=args.windows, patients=k, rng=rng
            )
            rate = float((distance(windows) > limits).any(axis=1).mean())
            sd = np.sqrt(max(rate, 1e-3) * (1 - rate) / args.windows)
            print(
                f"  windows from {mix:>13} ({k:>2} patients): {rate:6.2%} ± {sd:.2%} "
                f"(target {cal.false_alarm_rate:.0%}: ratio {rate / cal.false_alarm_rate:.1f})"
            )

        shifted = {
            "4-class JPEG (other scanners)": read_fourclass(args.per_class, jpeg_classes),
            "Gaussian noise (sd 20)": [noisy(im, rng) for im in dev_raw],
            "bias field (0.4-1.6 ramp)": [bias_field(im) for im in dev_raw],
        }
        print(
            f"detection, {args.streams} streams of 100 healthy (all development patients) then "
            "shifted predictions; window = newest 100 after each prediction:"
        )
        print(f"  {'shift':<30} {'detected':>9} {'delay median':>13} {'p90':>6} {'never':>6}")
        for name, images in shifted.items():
            bad = features(ref, images, args.size)[columns].to_numpy()
            delays, detected = [], 0
            for _ in range(args.streams):
                healthy = dev[rng.choice(len(dev), WINDOW, replace=False)]
                after = bad[rng.choice(len(bad), WINDOW, replace=len(bad) < WINDOW)]
                stream = np.concatenate([healthy, after])
                windows = np.stack([stream[t : t + WINDOW] for t in range(1, WINDOW + 1)])
                fired = (distance(windows) > limits).any(axis=1)
                detected += bool(fired[-1])
                delays.append(int(np.argmax(fired)) + 1 if fired.any() else None)
            seen = [d for d in delays if d is not None]
            median = f"{np.median(seen):.0f}" if seen else "-"
            p90 = f"{np.percentile(seen, 90):.0f}" if seen else "-"
            print(
                f"  {name:<30} {detected / args.streams:>9.0%} {median:>13} {p90:>6} "
                f"{len(delays) - len(seen):>6}"
            )

        window = pd.DataFrame(dev[rng.choice(len(dev), WINDOW)], columns=columns)
        compute_drift(ref.frame, window.head(50), model=model, thresholds=ref.thresholds,
                      calibration=cal, html=False)  # fmt: skip  # warm-up
        w0, c0 = time.perf_counter(), time.process_time()
        compute_drift(ref.frame, window, model=model, thresholds=ref.thresholds,
                      calibration=cal, html=False)  # fmt: skip
        ev_cpu = time.process_time() - c0
        ev_wall = time.perf_counter() - w0
        w0, c0 = time.perf_counter(), time.process_time()
        (distance(window.to_numpy()[None]) > limits).any()
        fast_cpu, fast_wall = time.process_time() - c0, time.perf_counter() - w0
        print(
            f"one window of 100 at run time: Evidently {ev_wall:.2f} s wall {ev_cpu:.2f} s CPU, "
            f"fast statistic {fast_wall * 1e3:.1f} ms wall {fast_cpu * 1e3:.1f} ms CPU "
            f"(ratio {ev_cpu / max(fast_cpu, 1e-6):.0f}x CPU)"
        )


if __name__ == "__main__":
    main()
