"""Classifier evaluation: ROC/PR, a validation-chosen operating point, calibration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from medops.errors import InvalidInputError
from medops.evaluation import metrics
from medops.evaluation.predict import predict_probs
from medops.training.arrays import SliceArrays, check_arrays


@dataclass
class ClassifierEvaluation:
    """Metrics of a classifier on one dataset, plus everything needed to plot and audit them.

    Binary: the positive class probability ``scores`` is thresholded at ``threshold``
    (chosen on validation data with Youden's J unless given). Multi-class: the arg-max class.
    """

    labels: np.ndarray
    probs: np.ndarray
    """(N, K) class probabilities."""
    num_classes: int
    positive_class: int
    threshold: float
    threshold_source: str
    """given | validation (Youden's J on the validation set) | default (0.5, no validation set)."""
    predictions: np.ndarray
    accuracy: float
    auc: float
    """Binary ROC AUC; multi-class: macro one-vs-rest AUC."""
    ece: float
    reliability: list[metrics.ReliabilityBin]
    confusion: np.ndarray
    sample_ids: list[str]
    patient_ids: list[str]
    pr_auc: float = float("nan")
    sensitivity: float = float("nan")
    specificity: float = float("nan")
    roc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    pr: tuple[np.ndarray, np.ndarray] | None = None
    per_class_auc: list[float] = field(default_factory=list)

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def scores(self) -> np.ndarray:
        """Probability of the positive class (binary) or of the predicted class."""
        if self.binary:
            return self.probs[:, self.positive_class]
        return self.probs.max(axis=1)

    def headline(self) -> dict[str, float]:
        """Flat metrics for tracking."""
        out = {
            "accuracy": self.accuracy,
            "auc": self.auc,
            "ece": self.ece,
            "n": float(len(self.labels)),
        }
        if self.binary:
            out |= {
                "pr_auc": self.pr_auc,
                "sensitivity": self.sensitivity,
                "specificity": self.specificity,
                "threshold": self.threshold,
            }
        else:
            out["auc_macro"] = self.auc
        return out

    def per_sample(self) -> list[dict[str, Any]]:
        """One row per slice: patient_id, label, prediction, score, correct."""
        return [
            {
                "sample_id": s,
                "patient_id": p,
                "label": int(y),
                "prediction": int(q),
                "score": float(c),
                "correct": bool(y == q),
            }
            for s, p, y, q, c in zip(
                self.sample_ids,
                self.patient_ids,
                self.labels,
                self.predictions,
                self.scores,
                strict=True,
            )
        ]


def _as_probs(probs: np.ndarray, n: int, name: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=1)
    if probs.ndim != 2 or probs.shape[0] != n or probs.shape[1] < 2:
        raise InvalidInputError(f"{name}: expected ({n}, K) probabilities, got shape {probs.shape}")
    return probs


def binary_scores(
    labels: np.ndarray, probs: np.ndarray, positive_class: int, threshold: float
) -> dict[str, float]:
    """Sensitivity, specificity and accuracy of ``probs[:, positive_class] >= threshold``."""
    truth = np.asarray(labels) == positive_class
    pred = probs[:, positive_class] >= threshold
    pos, neg = truth.sum(), (~truth).sum()
    return {
        "sensitivity": float((pred & truth).sum() / pos) if pos else float("nan"),
        "specificity": float((~pred & ~truth).sum() / neg) if neg else float("nan"),
        "accuracy": float((pred == truth).mean()),
    }


def evaluate_classifier(
    model_or_probs: nn.Module | np.ndarray,
    data: SliceArrays,
    *,
    threshold: float | None = None,
    val: SliceArrays | None = None,
    val_probs: np.ndarray | None = None,
    positive_class: int = 1,
    min_specificity: float | None = None,
) -> ClassifierEvaluation:
    """Evaluate a classifier (a model, or its (N, K) or P(positive) (N,) probabilities) on ``data``.

    The binary operating threshold is, in order: ``threshold`` if given; else chosen on the
    validation set (``val`` run through the model, or ``val_probs`` with ``val``'s labels) by
    Youden's J, or by the highest sensitivity with specificity >= ``min_specificity``; else 0.5.
    It is never chosen on ``data`` itself.
    """
    check_arrays(data, name="data")
    n = len(data.labels)
    model = model_or_probs if isinstance(model_or_probs, nn.Module) else None
    raw = predict_probs(model, data.images) if model is not None else np.asarray(model_or_probs)
    probs = _as_probs(raw, n, "probs")
    labels = np.asarray(data.labels, dtype=np.int64)
    k = probs.shape[1]
    if labels.min() < 0 or labels.max() >= k:
        raise InvalidInputError(f"data.labels: labels must lie in [0, {k - 1}] for {k} classes")
    source = "given"
    if k == 2 and threshold is None:
        if val is not None:
            if val_probs is None:
                if model is None:
                    raise InvalidInputError(
                        "val_probs: needed with val when probabilities are given"
                    )
                val_probs = predict_probs(model, val.images)
            vp = _as_probs(val_probs, len(val.labels), "val_probs")
            threshold = metrics.choose_threshold(
                np.asarray(val.labels) == positive_class,
                vp[:, positive_class],
                min_specificity=min_specificity,
            )
            source = "validation"
        else:
            threshold, source = 0.5, "default"
    if k == 2:
        assert threshold is not None
        truth = labels == positive_class
        scores = probs[:, positive_class]
        pred_positive = scores >= threshold
        predictions = np.where(pred_positive, positive_class, 1 - positive_class)
        ece, curve = metrics.calibration(scores, truth)
        scores_at = binary_scores(labels, probs, positive_class, threshold)
        return ClassifierEvaluation(
            labels=labels,
            probs=probs,
            num_classes=2,
            positive_class=positive_class,
            threshold=float(threshold),
            threshold_source=source,
            predictions=predictions,
            auc=metrics.roc_auc(truth, scores),
            pr_auc=metrics.average_precision(truth, scores),
            ece=ece,
            reliability=curve,
            confusion=metrics.confusion_matrix(labels, predictions, 2),
            roc=metrics.roc_curve(truth, scores),
            pr=metrics.pr_curve(truth, scores),
            sample_ids=list(data.sample_ids),
            patient_ids=list(data.patient_ids),
            sensitivity=scores_at["sensitivity"],
            specificity=scores_at["specificity"],
            accuracy=scores_at["accuracy"],
        )
    predictions = probs.argmax(axis=1)
    per_class = [metrics.roc_auc(labels == c, probs[:, c]) for c in range(k)]
    ece, curve = metrics.calibration(probs.max(axis=1), predictions == labels)
    return ClassifierEvaluation(
        labels=labels,
        probs=probs,
        num_classes=k,
        positive_class=positive_class,
        threshold=float("nan"),
        threshold_source="argmax",
        predictions=predictions,
        accuracy=float((predictions == labels).mean()),
        auc=float(np.nanmean(per_class)) if not np.isnan(per_class).all() else float("nan"),
        ece=ece,
        reliability=curve,
        confusion=metrics.confusion_matrix(labels, predictions, k),
        sample_ids=list(data.sample_ids),
        patient_ids=list(data.patient_ids),
        per_class_auc=per_class,
    )
