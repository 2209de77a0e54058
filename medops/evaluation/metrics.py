"""Metric primitives on numpy arrays: ROC/PR, operating thresholds, calibration, overlap, HD95.

Written out in numpy (and scipy for distances) so each is small and exact; checked by hand and
against sklearn and MONAI in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# The one Dice of the code base, re-exported beside the other metric primitives.
from medops.rle import dice as dice


def _binary(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.shape[0]} labels for {s.shape[0]} scores")
    return y, s


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score used as a ``>=`` threshold.

    Returns (fpr, tpr, thresholds), starting at (0, 0) with threshold +inf.
    """
    y, s = _binary(y_true, scores)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.flatnonzero(np.diff(s_sorted)) if len(s) > 1 else np.array([], dtype=int)
    ends = np.r_[distinct, len(s) - 1]
    tps = np.cumsum(y_sorted)[ends]
    fps = (ends + 1) - tps
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fps / neg]
    tpr = np.r_[0.0, tps / pos]
    return fpr, tpr, np.r_[np.inf, s_sorted[ends]]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the probability a positive outranks a negative; ties count 1/2).

    NaN when only one class is present.
    """
    y, s = _binary(y_true, scores)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    for end in np.r_[np.flatnonzero(np.diff(sorted_values)) + 1, len(values)]:
        ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1 .. end
        start = end
    return ranks


def pr_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold (recall increasing)."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    y, _s = _binary(y_true, scores)
    pos, neg = int(y.sum()), int((~y).sum())
    tp, fp = tpr[1:] * pos, fpr[1:] * neg
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 1.0)
    return np.r_[1.0, precision], tpr


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """PR AUC as average precision: sum over thresholds of (recall step) x precision."""
    y, _ = _binary(y_true, scores)
    if not y.any():
        return float("nan")
    precision, recall = pr_curve(y_true, scores)
    return float(np.sum(np.diff(recall) * precision[1:]))


def choose_threshold(
    y_true: np.ndarray, scores: np.ndarray, *, min_specificity: float | None = None
) -> float:
    """The operating threshold (positive when score >= threshold), chosen on validation data.

    Default: Youden's J, the threshold maximising sensitivity + specificity - 1 (ties: the
    higher threshold). With ``min_specificity``: the threshold with the highest sensitivity
    among those whose specificity is at least that value. 0.5 when a class is missing.
    """
    y, _ = _binary(y_true, scores)
    if y.all() or not y.any():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if min_specificity is not None:
        ok = (1 - fpr) >= min_specificity
        if not ok.any():
            return float(thresholds[0])
        candidates = np.flatnonzero(ok)
        best = candidates[np.argmax(tpr[candidates])]
    else:
        best = int(np.argmax(tpr - fpr))
    return float(thresholds[best])


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = truth, columns = prediction."""
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return out


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_confidence: float
    observed: float


def calibration(
    confidence: np.ndarray, correct: np.ndarray, *, bins: int = 10
) -> tuple[float, list[ReliabilityBin]]:
    """Expected calibration error over equal-width bins, and the reliability curve.

    ``confidence`` is a predicted probability of an event and ``correct`` whether it happened
    (binary: P(tumour) vs tumour present; multi-class: top-class probability vs prediction right).
    ECE = sum over bins of (bin share) x |observed frequency - mean confidence|.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hit = np.asarray(correct, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    curve: list[ReliabilityBin] = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            mean_conf, observed = float(conf[members].mean()), float(hit[members].mean())
            ece += count / len(conf) * abs(observed - mean_conf)
        else:
            mean_conf = observed = float("nan")
        curve.append(
            ReliabilityBin(float(edges[b]), float(edges[b + 1]), count, mean_conf, observed)
        )
    return float(ece), curve


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two binary masks; 1.0 when both are empty."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    union = int(np.logical_or(p, t).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, t).sum()) / union


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance between mask surfaces, in spacing units.

    Like MONAI's ``compute_hausdorff_distance(percentile=95)``: the larger of the two directed
    95th percentiles of surface-to-surface distances. NaN when either mask is empty.
    """
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if not p.any() or not t.any():
        return float("nan")
    sp, st = _surface(p), _surface(t)
    to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(to_truth[sp], 95), np.percentile(to_pred[st], 95)))
