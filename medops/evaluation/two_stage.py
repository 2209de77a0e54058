"""The two-stage system end to end: the classifier gates the segmenter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medops.errors import InvalidInputError
from medops.evaluation.segmenter import SegmenterEvaluation, segmentation_metrics
from medops.rle import dice_from_counts
from medops.training.arrays import SliceArrays, check_arrays
from medops.transforms import drop_small_components

GATE_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""Classifier P(tumour) from which a slice is segmented; 0 segments every slice."""
MIN_COMPONENT_GRID = (0, 4, 8, 16, 32, 64)
"""Smallest kept component, in pixels of a 128-pixel slice (scaled with the area)."""


@dataclass
class TwoStageEvaluation:
    """Masks after gating (zero where the classifier says no tumour) against the truth,
    next to the segmenter alone, plus slice-level detection by the final masks."""

    gated: SegmenterEvaluation
    segmenter_only: SegmenterEvaluation
    threshold: float
    gated_out: np.ndarray
    """(N,) bool: slices the classifier called tumour-free."""
    min_component_px: int = 0

    def headline(self) -> dict[str, float]:
        tumour = self.gated.tumour_slices
        found = self.gated.predicted_slices
        alone = self.segmenter_only.headline()
        gated = self.gated.headline()
        return {
            "two_stage_dice_patient_mean": gated["dice_patient_mean"],
            "two_stage_iou_patient_mean": gated["iou_patient_mean"],
            "segmenter_only_dice_patient_mean": alone["dice_patient_mean"],
            "two_stage_dice_gain": gated["dice_patient_mean"] - alone["dice_patient_mean"],
            "two_stage_detection_sensitivity": float(found[tumour].mean())
            if tumour.any()
            else float("nan"),
            "two_stage_detection_specificity": float((~found[~tumour]).mean())
            if (~tumour).any()
            else float("nan"),
            "two_stage_gated_fraction": float(self.gated_out.mean()),
            "two_stage_threshold": self.threshold,
            "two_stage_min_component_px": float(self.min_component_px),
        }


def evaluate_two_stage(
    classifier_probs: np.ndarray,
    segmenter_probs: np.ndarray,
    data: SliceArrays,
    *,
    threshold: float,
    seg_threshold: float = 0.5,
    min_component_px: int = 0,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    slice_thickness_mm: float = 1.0,
) -> TwoStageEvaluation:
    """Gate ``segmenter_probs`` (N, 1, S, S) with ``classifier_probs`` ((N, 2) or P(tumour) (N,))
    at ``threshold`` after dropping components below ``min_component_px``; per-patient Dice
    end to end, next to the (post-processed) segmenter alone."""
    check_arrays(data, name="data", needs_masks=True)
    assert data.masks is not None
    cls = np.asarray(classifier_probs, dtype=np.float64)
    tumour_prob = cls[:, 1] if cls.ndim == 2 else cls
    seg = np.asarray(segmenter_probs)
    n = len(data.labels)
    if tumour_prob.shape != (n,) or seg.shape != np.shape(data.masks):
        raise InvalidInputError(
            f"classifier_probs/segmenter_probs: shapes {cls.shape} and {seg.shape} do not match "
            f"{n} slices with masks {np.shape(data.masks)}"
        )
    gated_out = tumour_prob < threshold
    alone = drop_small_components(seg >= seg_threshold, min_component_px)
    gated = alone & ~gated_out[:, None, None, None]
    truth = np.asarray(data.masks) > 0
    common = dict(
        sample_ids=data.sample_ids,
        spacing_mm=spacing_mm,
        slice_thickness_mm=slice_thickness_mm,
        threshold=seg_threshold,
    )
    return TwoStageEvaluation(
        gated=segmentation_metrics(gated, truth, data.patient_ids, **common),  # type: ignore[arg-type]
        segmenter_only=segmentation_metrics(alone, truth, data.patient_ids, **common),  # type: ignore[arg-type]
        threshold=float(threshold),
        gated_out=gated_out,
        min_component_px=int(min_component_px),
    )


@dataclass(frozen=True)
class TwoStageRule:
    """How the served answer combines the two models, chosen on validation patients."""

    gate_threshold: float
    min_component_px: int
    val_dice_patient_mean: float


def _mean_patient_dice(
    keep: np.ndarray, inter: np.ndarray, pred: np.ndarray, truth: np.ndarray, groups: np.ndarray
) -> float:
    n = groups.max() + 1
    i = np.bincount(groups, weights=inter * keep, minlength=n)
    p = np.bincount(groups, weights=pred * keep, minlength=n)
    t = np.bincount(groups, weights=truth, minlength=n)
    return float(np.mean(dice_from_counts(i, p, t)))


def choose_two_stage_rule(
    tumour_prob: np.ndarray,
    segmenter_probs: np.ndarray,
    data: SliceArrays,
    *,
    gates: tuple[float, ...] = GATE_GRID,
    min_sizes: tuple[int, ...] = MIN_COMPONENT_GRID,
    seg_threshold: float = 0.5,
) -> TwoStageRule:
    """The gate threshold and smallest component that give the best mean per-patient Dice of
    the gated answer on ``data`` (validation patients: never the test split).

    Ties go to the earlier grid entry (no gate, no filtering first).
    """
    check_arrays(data, name="data", needs_masks=True)
    assert data.masks is not None
    prob = np.asarray(tumour_prob, dtype=np.float64).ravel()
    seg = np.asarray(segmenter_probs) >= seg_threshold
    if prob.shape != (len(data.labels),) or seg.shape != np.shape(data.masks):
        raise InvalidInputError(
            f"tumour_prob/segmenter_probs: shapes {prob.shape} and {seg.shape} do not match "
            f"{len(data.labels)} slices with masks {np.shape(data.masks)}"
        )
    truth = (np.asarray(data.masks) > 0).reshape(len(prob), -1)
    _, groups = np.unique(np.asarray(data.patient_ids), return_inverse=True)
    t_area = truth.sum(axis=1).astype(np.float64)
    scale = (seg.shape[-1] / 128) ** 2
    best = TwoStageRule(0.0, 0, -1.0)
    for size in min_sizes:
        px = round(size * scale)
        mask = drop_small_components(seg[:, 0], px).reshape(len(prob), -1)
        inter = (mask & truth).sum(axis=1).astype(np.float64)
        area = mask.sum(axis=1).astype(np.float64)
        for gate in gates:
            score = _mean_patient_dice(prob >= gate, inter, area, t_area, groups)
            if score > best.val_dice_patient_mean + 1e-12:
                best = TwoStageRule(float(gate), px, score)
    return best
