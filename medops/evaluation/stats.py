"""Intervals over patients: the unit that is sampled, so the unit that is resampled."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from medops.errors import InvalidInputError

if TYPE_CHECKING:
    from medops.evaluation.classifier import ClassifierEvaluation
    from medops.evaluation.segmenter import SegmenterEvaluation


def patient_bootstrap(
    patient_ids: Sequence[str],
    statistic: Callable[[np.ndarray], float],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` with patients resampled (a cluster
    bootstrap): ``statistic`` gets the row indices of the drawn patients (repeats included).

    Slices of one patient are correlated, so resampling slices would give intervals that are
    too narrow. Draws where the statistic is undefined (NaN, e.g. one class only) are skipped.
    """
    ids = np.asarray(patient_ids)
    patients = np.unique(ids)
    if len(patients) == 0:
        raise InvalidInputError("patient_ids: no patients to resample")
    rows = [np.flatnonzero(ids == p) for p in patients]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(patients), len(patients))
        value = statistic(np.concatenate([rows[i] for i in drawn]))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_interval(
    values: Sequence[float], *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-patient ``values`` (one value per patient)."""
    v = np.asarray(values, dtype=np.float64)
    return patient_bootstrap(
        [str(i) for i in range(len(v))],
        lambda idx: float(v[idx].mean()),
        resamples=resamples,
        seed=seed,
    )


def mean_intervals(values: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``<name>_ci_low`` / ``<name>_ci_high`` of the mean of each list of per-patient values."""
    out: dict[str, float] = {}
    for name, per_patient in values.items():
        low, high = mean_interval(per_patient)
        out |= {f"{name}_ci_low": low, f"{name}_ci_high": high}
    return out


def classifier_intervals(ev: ClassifierEvaluation, names: Sequence[str]) -> dict[str, float]:
    """Patient-bootstrap intervals of a classifier's auc, sensitivity, specificity (at its
    operating threshold) or accuracy, as ``<name>_ci_low`` / ``<name>_ci_high``."""
    from medops.evaluation.classifier import binary_scores
    from medops.evaluation.metrics import roc_auc

    def figure(name: str) -> Callable[[np.ndarray], float]:
        def statistic(idx: np.ndarray) -> float:
            if name == "auc":
                truth = ev.labels[idx] == ev.positive_class
                return roc_auc(truth, ev.probs[idx, ev.positive_class])
            if name == "accuracy":
                return float(np.mean(ev.predictions[idx] == ev.labels[idx]))
            scores = binary_scores(ev.labels[idx], ev.probs[idx], ev.positive_class, ev.threshold)
            return scores[name]

        return statistic

    out: dict[str, float] = {}
    for name in names:
        low, high = patient_bootstrap(ev.patient_ids, figure(name))
        out |= {f"{name}_ci_low": low, f"{name}_ci_high": high}
    return out


def _mean_of(values: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda idx: float(values[idx].mean())


SEGMENTER_INTERVALS = ("dice_patient_mean", "iou_patient_mean", "dice_slice_mean", "iou_slice_mean")
"""Segmenter headline figures :func:`segmenter_intervals` can bound."""


def segmenter_intervals(ev: SegmenterEvaluation, names: Sequence[str]) -> dict[str, float]:
    """Patient-bootstrap intervals of a segmenter's per-patient means or of its per-slice
    means over foreground slices (slices resampled with their patient or group)."""
    out: dict[str, float] = {}
    for name in names:
        if name not in SEGMENTER_INTERVALS:
            raise InvalidInputError(
                f"interval of {name!r}: a segmenter bounds {', '.join(SEGMENTER_INTERVALS)}"
            )
        figure, _, unit = name.removesuffix("_mean").partition("_")
        if unit == "patient":
            low, high = mean_interval([p[figure] for p in ev.patients.values()])
        else:
            per_slice = (ev.slice_dice if figure == "dice" else ev.slice_iou)[ev.tumour_slices]
            groups = [g for g, keep in zip(ev.patient_ids, ev.tumour_slices, strict=True) if keep]
            low, high = patient_bootstrap(groups, _mean_of(per_slice))
        out |= {f"{name}_ci_low": low, f"{name}_ci_high": high}
    return out
