"""Calibrated drift alarms on real data: false alarms, detection and delay, and their cost.

Per model, on the LGG patients in leave-patients-out rounds: each quarter of the patients in
turn is the held-out development set (used for nothing else in its round); of the others, two
thirds make the reference (the training split's role) and one third joins them to calibrate
(the validation split's), as the pipeline does. The classifier sees every slice; the
segmenter the slices the classifier flags, here the tumour-labelled ones (what a perfect
classifier flags; no model is trained for this). Healthy traffic arrives as whole studies:
every slice of one patient, then the next, patients in random order.

1. The false-alarm rate on the development patients at the calibrated thresholds, windows of
   100 consecutive predictions of that stream (the stated target, with a binomial 95 %
   interval; windows overlap and share patients, so the disjoint windows the data holds are
   counted too), and as a stress case windows of one patient's slices alone.
2. Detection on shifted sets: other-scanner images (the 4-class JPEGs; tumour classes only
   for the segmenter), Gaussian noise and a bias field on development studies. A stream of
   healthy predictions turns shifted; the newest 100 are judged after every prediction: the
   detection rate (windows fully shifted that alarm) and the delay (shifted predictions until
   the first alarm).
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
from scipy import stats

from medops.monitoring.drift import (
    CalibrationSet,
    ReferenceDistances,
    build_reference,
    compute_drift,
    draw_stream_windows,
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


def interval(hits: int, total: int) -> str:
    """``rate [low, high]``: the exact binomial 95 % interval."""
    ci = stats.binomtest(hits, total).proportion_ci(0.95)
    return f"{hits / total:6.2%} [{ci.low:.2%}, {ci.high:.2%}]"


def healthy_then_shifted(healthy: np.ndarray, shifted: np.ndarray) -> np.ndarray:
    """Windows of the newest 100 after each shifted prediction of ``healthy`` then ``shifted``."""
    stream = np.concatenate([healthy, shifted])
    return np.stack([stream[t : t + WINDOW] for t in range(1, len(shifted) + 1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="model input size")
    parser.add_argument("--streams", type=int, default=20, help="shifted streams per round")
    parser.add_argument("--windows", type=int, default=1000, help="healthy windows per round")
    parser.add_argument("--per-class", type=int, default=100, help="4-class images per class")
    parser.add_argument("--rounds", type=int, default=4, help="leave-patients-out rounds")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    patients = lgg_patients()
    raw, groups, tumour = read_lgg(patients)
    print(f"data: {len(raw)} slices of {len(patients)} patients ({time.perf_counter() - t0:.1f} s)")
    models = {
        "brain-tumor-classifier": (lambda tumour: [True] * len(tumour), CLASSES),
        "brain-tumor-segmenter": (lambda tumour: tumour, ("glioma", "meningioma", "pituitary")),
    }
    table = []
    for model, (population, jpeg_classes) in models.items():
        keep = population(tumour)
        images, labels = _pick(raw, keep), np.asarray(_pick(groups, keep))
        jpegs = read_fourclass(args.per_class, jpeg_classes)
        false, single, windows_seen, disjoint, heldout_est = 0, 0, 0, 0, []
        detection: dict[str, list[tuple[bool, int | None]]] = {}
        calibrate_s, fast_ms, evidently_s = [], [], []
        print(f"\n-- {model}: {len(images)} slices, {args.rounds} leave-patients-out rounds")
        for fold in range(args.rounds):
            # each patient index's quarter: development in one round, never calibration there
            quarter = np.arange(len(patients)) % args.rounds
            rest = [i for i in range(len(patients)) if quarter[i] != fold]
            role = {i: "dev" for i in range(len(patients)) if quarter[i] == fold}
            role |= {i: "reference" if k % 3 < 2 else "calibration" for k, i in enumerate(rest)}
            part = {
                name: [k for k, g in enumerate(labels) if role[int(g)] == name]
                for name in ("reference", "calibration", "dev")
            }
            with tempfile.TemporaryDirectory() as tmp:
                home = Path(tmp)
                c0 = time.process_time()
                build_reference(
                    [preprocess_slice(images[k], args.size) for k in part["reference"]],
                    model=model,
                    model_version="bench",
                    home=home,
                    groups=[int(labels[k]) for k in part["reference"]],
                    original_shapes=[images[k].shape for k in part["reference"]],
                    calibration=CalibrationSet(
                        [preprocess_slice(images[k], args.size) for k in part["calibration"]],
                        groups=[int(labels[k]) for k in part["calibration"]],
                        original_shapes=[images[k].shape for k in part["calibration"]],
                    ),
                )
                calibrate_s.append(time.process_time() - c0)
                ref = load_reference(model, "bench", home=home)
            cal = ref.calibration
            assert cal is not None and cal.heldout_rate is not None
            heldout_est.append(cal.heldout_rate)
            columns = list(ref.thresholds)
            limits = np.array([ref.thresholds[c] for c in columns])
            distance = ReferenceDistances(ref.frame, columns)
            dev_raw = [images[k] for k in part["dev"]]
            dev_groups = labels[part["dev"]]
            dev = features(ref, dev_raw, args.size)[columns].to_numpy()
            streamed = draw_stream_windows(
                dev, dev_groups, window=WINDOW, draws=args.windows, rng=rng
            )
            false += int((distance(streamed) > limits).any(axis=1).sum())
            alone = draw_windows(
                dev, dev_groups, window=WINDOW, draws=args.windows, patients=1, rng=rng
            )
            single += int((distance(alone) > limits).any(axis=1).sum())
            windows_seen += args.windows
            disjoint += len(dev) // WINDOW
            print(
                f"  round {fold + 1}: {len(set(dev_groups))} development patients "
                f"({len(dev)} slices); calibrated on {cal.groups} patients, per-column level "
                f"{cal.column_level:.4f}, rate {cal.calibration_rate:.2%} on calibration "
                f"windows, {cal.heldout_rate:.2%} on folds left out of it"
            )
            shifted = {
                "4-class JPEG (other scanners)": (features(ref, jpegs, args.size), None),
                "Gaussian noise (sd 20)": (
                    features(ref, [noisy(im, rng) for im in dev_raw], args.size),
                    dev_groups,
                ),
                "bias field (0.4-1.6 ramp)": (
                    features(ref, [bias_field(im) for im in dev_raw], args.size),
                    dev_groups,
                ),
            }
            for name, (frame, shifted_groups) in shifted.items():
                bad = frame[columns].to_numpy()
                healthy = draw_stream_windows(
                    dev, dev_groups, window=WINDOW, draws=args.streams, rng=rng
                )
                if shifted_groups is None:  # no patients: images in random order
                    after = np.stack(
                        [bad[rng.choice(len(bad), WINDOW, len(bad) < WINDOW)] for _ in healthy]
                    )
                else:
                    after = draw_stream_windows(
                        bad, shifted_groups, window=WINDOW, draws=args.streams, rng=rng
                    )
                for before, then in zip(healthy, after, strict=True):
                    fired = np.asarray(
                        (distance(healthy_then_shifted(before, then)) > limits).any(axis=1)
                    )
                    first = int(np.argmax(fired)) + 1 if fired.any() else None
                    detection.setdefault(name, []).append((bool(fired[-1]), first))
            window = pd.DataFrame(streamed[0], columns=columns)
            compute_drift(ref.frame, window.head(50), model=model, thresholds=ref.thresholds,
                          calibration=cal, html=False)  # fmt: skip  # warm-up
            c0 = time.process_time()
            compute_drift(ref.frame, window, model=model, thresholds=ref.thresholds,
                          calibration=cal, html=False)  # fmt: skip
            evidently_s.append(time.process_time() - c0)
            w0 = time.perf_counter()
            for _ in range(20):
                (distance(streamed[:1]) > limits).any()
            fast_ms.append((time.perf_counter() - w0) / 20 * 1e3)

        print(
            f"false alarms, target {cal.false_alarm_rate:.0%} of windows of {WINDOW} "
            f"({windows_seen} windows over {args.rounds} rounds, {disjoint} disjoint):"
        )
        stream_rate = interval(false, windows_seen)
        print(f"  stream of whole studies (the target): {stream_rate}")
        print(f"  expected from calibration (folds left out of it): {np.mean(heldout_est):.2%}")
        print(f"  stress case, one patient per window:  {interval(single, windows_seen)}")
        print(f"detection, {args.streams * args.rounds} streams of healthy then shifted studies:")
        print(f"  {'shift':<30} {'detected':>9} {'delay median':>13} {'p90':>6} {'never':>6}")
        cells = []
        for name, results in detection.items():
            seen = [d for _, d in results if d is not None]
            rate = sum(hit for hit, _ in results) / len(results)
            median = f"{np.median(seen):.0f}" if seen else "-"
            p90 = f"{np.percentile(seen, 90):.0f}" if seen else "-"
            never = len(results) - len(seen)
            print(f"  {name:<30} {rate:>9.0%} {median:>13} {p90:>6} {never:>6}")
            cells.append(f"{name.split(' (')[0]} {rate:.0%} / {median}")
        print(
            f"cost: calibration {np.mean(calibrate_s):.1f} s CPU per reference (features "
            f"included); one window of 100: fast statistic {np.mean(fast_ms):.2f} ms, "
            f"Evidently's report {np.mean(evidently_s):.2f} s CPU"
        )
        table.append((model, stream_rate, interval(single, windows_seen), cells, fast_ms))

    print("\nsummary (false alarms per window of 100 with the binomial 95 % interval; "
          "detection rate / median delay in predictions):")  # fmt: skip
    for model, stream_rate, single_rate, cells, fast_ms in table:
        print(f"  {model}: stream {stream_rate}; one patient {single_rate}; "
              f"{'; '.join(cells)}; {np.mean(fast_ms):.2f} ms per window")  # fmt: skip


if __name__ == "__main__":
    main()
