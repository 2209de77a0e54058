"""Evaluation: classifier, segmenter and two-stage metrics, subgroups, and the HTML report.

Every evaluation object has ``headline() -> dict[str, float]`` with flat metric names for
tracking. Thresholds are chosen on validation data, never on the data being evaluated.
"""

from medops.evaluation.classifier import ClassifierEvaluation, evaluate_classifier
from medops.evaluation.metrics import (
    average_precision,
    calibration,
    choose_threshold,
    dice,
    hd95,
    iou,
    roc_auc,
    roc_curve,
)
from medops.evaluation.predict import predict_probs
from medops.evaluation.report import PLOT_IDS, build_report, pseudonym
from medops.evaluation.segmenter import (
    SegmenterEvaluation,
    evaluate_segmenter,
    segmentation_metrics,
)
from medops.evaluation.subgroups import age_band, subgroup_metrics
from medops.evaluation.two_stage import TwoStageEvaluation, evaluate_two_stage

__all__ = [
    "PLOT_IDS",
    "ClassifierEvaluation",
    "SegmenterEvaluation",
    "TwoStageEvaluation",
    "age_band",
    "average_precision",
    "build_report",
    "calibration",
    "choose_threshold",
    "dice",
    "evaluate_classifier",
    "evaluate_segmenter",
    "evaluate_two_stage",
    "hd95",
    "iou",
    "predict_probs",
    "pseudonym",
    "roc_auc",
    "roc_curve",
    "segmentation_metrics",
    "subgroup_metrics",
]
