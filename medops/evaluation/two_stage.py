"""The two-stage system end to end: the classifier gates the segmenter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medops.errors import InvalidInputError
from medops.evaluation.segmenter import SegmenterEvaluation, segmentation_metrics
from medops.training.arrays import SliceArrays, check_arrays


@dataclass
class TwoStageEvaluation:
    """Masks after gating (zero where the classifier says no tumour) against the truth,
    next to the segmenter alone, plus slice-level detection by the final masks."""

    gated: SegmenterEvaluation
    segmenter_only: SegmenterEvaluation
    threshold: float
    gated_out: np.ndarray
    """(N,) bool: slices the classifier called tumour-free."""

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
        }


def evaluate_two_stage(
    classifier_probs: np.ndarray,
    segmenter_probs: np.ndarray,
    data: SliceArrays,
    *,
    threshold: float,
    seg_threshold: float = 0.5,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    slice_thickness_mm: float = 1.0,
) -> TwoStageEvaluation:
    """Gate ``segmenter_probs`` (N, 1, S, S) with ``classifier_probs`` ((N, 2) or P(tumour) (N,))
    at the classifier's operating ``threshold``; per-patient Dice end to end."""
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
    alone = seg >= seg_threshold
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
    )
