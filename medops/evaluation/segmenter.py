"""Segmenter evaluation: Dice/IoU per patient (volume-wise) and per tumour slice, HD95, sizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from medops.errors import InvalidInputError
from medops.evaluation import metrics
from medops.evaluation.predict import predict_probs
from medops.training.arrays import SliceArrays, check_arrays


@dataclass
class SegmenterEvaluation:
    """Per-slice and per-patient overlap and size metrics of predicted tumour masks.

    The headline is the mean over patients of the volume Dice (all slices of a patient pooled),
    as in the LGG literature. Slice metrics are over tumour slices (non-empty truth); HD95 over
    tumour slices where the prediction is not empty (the missed ones are counted apart).
    """

    pred: np.ndarray
    """(N, S, S) bool predicted masks."""
    truth: np.ndarray
    probs: np.ndarray | None
    threshold: float
    spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    sample_ids: list[str]
    patient_ids: list[str]
    slice_dice: np.ndarray
    """(N,) Dice per slice (1.0 where both masks are empty)."""
    slice_iou: np.ndarray
    slice_hd95: np.ndarray
    """(N,) mm; NaN where either mask is empty."""
    slice_area_error_mm2: np.ndarray
    """(N,) predicted minus true area."""
    patients: dict[str, dict[str, float]]
    """Per patient: dice, iou, volume_ml, predicted_volume_ml, volume_error_ml, slices."""

    @property
    def tumour_slices(self) -> np.ndarray:
        return np.asarray(self.truth.reshape(len(self.truth), -1).any(axis=1))

    @property
    def predicted_slices(self) -> np.ndarray:
        return np.asarray(self.pred.reshape(len(self.pred), -1).any(axis=1))

    def headline(self) -> dict[str, float]:
        """Flat metrics for tracking (mm, mm², ml)."""
        tumour, predicted = self.tumour_slices, self.predicted_slices
        hd = self.slice_hd95[tumour & predicted]
        empty = ~tumour
        per = list(self.patients.values())
        return {
            "dice_patient_mean": float(np.mean([p["dice"] for p in per])),
            "dice_patient_median": float(np.median([p["dice"] for p in per])),
            "iou_patient_mean": float(np.mean([p["iou"] for p in per])),
            "dice_slice_mean": _mean(self.slice_dice[tumour]),
            "iou_slice_mean": _mean(self.slice_iou[tumour]),
            "hd95_mean": _mean(hd),
            "hd95_median": float(np.median(hd)) if len(hd) else float("nan"),
            "tumour_slices_missed": _mean(~predicted[tumour]),
            "empty_slices_false_positive": _mean(predicted[empty]),
            "area_abs_error_mm2_mean": _mean(np.abs(self.slice_area_error_mm2[tumour])),
            "volume_abs_error_ml_mean": float(np.mean([abs(p["volume_error_ml"]) for p in per])),
            "patients": float(len(per)),
            "tumour_slices": float(tumour.sum()),
        }

    def per_patient(self) -> list[dict[str, Any]]:
        """One row per patient: patient_id and its metrics."""
        return [{"patient_id": pid} | values for pid, values in self.patients.items()]

    def worst_slices(self, k: int = 6) -> list[int]:
        """Indices of the ``k`` tumour slices with the lowest Dice (larger tumours first)."""
        tumour = np.flatnonzero(self.tumour_slices)
        area = self.truth.reshape(len(self.truth), -1).sum(axis=1)
        order = sorted(tumour, key=lambda i: (self.slice_dice[i], -area[i]))
        return [int(i) for i in order[:k]]


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def segmentation_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    patient_ids: Sequence[str],
    *,
    sample_ids: Sequence[str] | None = None,
    probs: np.ndarray | None = None,
    threshold: float = 0.5,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    slice_thickness_mm: float = 1.0,
) -> SegmenterEvaluation:
    """Metrics of binary masks ``pred`` against ``truth`` (both (N, S, S) or (N, 1, S, S))."""
    pred = np.asarray(pred, dtype=bool).reshape(len(pred), *np.shape(pred)[-2:])
    truth = np.asarray(truth, dtype=bool).reshape(len(truth), *np.shape(truth)[-2:])
    if pred.shape != truth.shape:
        raise InvalidInputError(f"pred: shape {pred.shape} does not match masks {truth.shape}")
    pixel_mm2 = spacing_mm[0] * spacing_mm[1]
    n = len(pred)
    slice_dice = np.array([metrics.dice(pred[i], truth[i]) for i in range(n)])
    slice_iou = np.array([metrics.iou(pred[i], truth[i]) for i in range(n)])
    slice_hd = np.array([metrics.hd95(pred[i], truth[i], spacing_mm) for i in range(n)])
    p_area = pred.reshape(n, -1).sum(axis=1) * pixel_mm2
    t_area = truth.reshape(n, -1).sum(axis=1) * pixel_mm2
    ids = np.asarray(patient_ids)
    patients: dict[str, dict[str, float]] = {}
    for pid in dict.fromkeys(patient_ids):
        rows = ids == pid
        volume = float(t_area[rows].sum() * slice_thickness_mm / 1000)
        predicted = float(p_area[rows].sum() * slice_thickness_mm / 1000)
        patients[pid] = {
            "dice": metrics.dice(pred[rows], truth[rows]),
            "iou": metrics.iou(pred[rows], truth[rows]),
            "volume_ml": volume,
            "predicted_volume_ml": predicted,
            "volume_error_ml": predicted - volume,
            "slices": float(rows.sum()),
        }
    return SegmenterEvaluation(
        pred=pred,
        truth=truth,
        probs=probs,
        threshold=threshold,
        spacing_mm=(float(spacing_mm[0]), float(spacing_mm[1])),
        slice_thickness_mm=float(slice_thickness_mm),
        sample_ids=list(sample_ids) if sample_ids is not None else [str(i) for i in range(n)],
        patient_ids=list(patient_ids),
        slice_dice=slice_dice,
        slice_iou=slice_iou,
        slice_hd95=slice_hd,
        slice_area_error_mm2=p_area - t_area,
        patients=patients,
    )


def evaluate_segmenter(
    model_or_probs: nn.Module | np.ndarray,
    data: SliceArrays,
    *,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    slice_thickness_mm: float = 1.0,
    threshold: float = 0.5,
) -> SegmenterEvaluation:
    """Evaluate a segmenter (a model, or its (N, 1, S, S) probabilities) on ``data``'s masks.

    ``spacing_mm`` is the in-plane pixel size of these arrays (LGG slices carry none: the
    default 1 mm makes distances and areas pixel units); ``slice_thickness_mm`` turns areas
    into volumes.
    """
    check_arrays(data, name="data", needs_masks=True)
    assert data.masks is not None
    if isinstance(model_or_probs, nn.Module):
        probs = predict_probs(model_or_probs, data.images)
    else:
        probs = np.asarray(model_or_probs, dtype=np.float32)
    if probs.shape != np.shape(data.masks):
        raise InvalidInputError(
            f"probs: shape {probs.shape} does not match data.masks {np.shape(data.masks)}"
        )
    return segmentation_metrics(
        probs >= threshold,
        np.asarray(data.masks) > 0,
        data.patient_ids,
        sample_ids=data.sample_ids,
        probs=probs,
        threshold=threshold,
        spacing_mm=spacing_mm,
        slice_thickness_mm=slice_thickness_mm,
    )
