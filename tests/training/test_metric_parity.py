"""Our metric primitives agree with sklearn and MONAI on seeded random data (ties, empty masks
and edge cases included); the RLE's parity with pycocotools is in ``tests/test_rle.py``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import (
    CalibrationErrorMetric,
    DiceMetric,
    MeanIoU,
    compute_hausdorff_distance,
)
from sklearn import metrics as sk
from sklearn.calibration import calibration_curve

from medops import monitoring, rle
from medops.evaluation import metrics
from medops.evaluation.classifier import binary_scores
from medops.evaluation.two_stage import _mean_patient_dice
from medops.monitoring.quality import window_quality


def _scores(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores rounded to two decimals, so that many scores tie."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.round(rng.random(n) * 0.8 + 0.25 * labels, 2)


def _masks(seed: int, shape: tuple[int, ...] = (32, 32)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape) > 0.6, rng.random(shape) > 0.5


def _batch(mask: np.ndarray) -> torch.Tensor:
    """MONAI's (batch, channel, spatial...) layout."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_auc_and_average_precision_match_sklearn(seed: int) -> None:
    labels, scores = _scores(seed)
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thresholds = sk.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    assert metrics.roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores))
    assert metrics.average_precision(labels, scores) == pytest.approx(
        sk.average_precision_score(labels, scores)
    )


def test_youdens_threshold_and_the_scores_at_it_match_sklearn() -> None:
    labels, scores = _scores(4)
    sk_fpr, sk_tpr, sk_thresholds = sk.roc_curve(labels, scores, drop_intermediate=False)
    # sklearn lists thresholds in decreasing order: the first maximum is the higher threshold
    youden = float(sk_thresholds[int(np.argmax(sk_tpr - sk_fpr))])
    threshold = metrics.choose_threshold(labels, scores)
    assert threshold == youden
    probs = np.stack([1 - scores, scores], axis=1)
    ours = binary_scores(labels, probs, 1, threshold)
    predicted = (scores >= threshold).astype(int)
    assert ours["sensitivity"] == pytest.approx(sk.recall_score(labels, predicted))
    assert ours["specificity"] == pytest.approx(sk.recall_score(labels, predicted, pos_label=0))
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))


def test_multiclass_confusion_and_one_vs_rest_macro_auc_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4)) + 1.5 * np.eye(4)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(labels, predicted, 4),
        sk.confusion_matrix(labels, predicted, labels=range(4)),
    )
    macro = np.mean([metrics.roc_auc(labels == c, probs[:, c]) for c in range(4)])
    assert macro == pytest.approx(sk.roc_auc_score(labels, probs, multi_class="ovr"))


@pytest.mark.parametrize("seed", [0, 1])
def test_expected_calibration_error_and_its_bins_match_monai(seed: int) -> None:
    rng = np.random.default_rng(seed)
    confidence = rng.random(2000)
    happened = rng.random(2000) < confidence**1.5  # over-confident
    ece, bins = metrics.calibration(confidence, happened, bins=10)
    monai_ece = CalibrationErrorMetric(num_bins=10, calibration_reduction="expected")
    monai_ece(_batch(confidence[None]), _batch(happened[None]))
    assert ece == pytest.approx(float(monai_ece.aggregate()), abs=1e-6)
    observed, predicted = calibration_curve(happened, confidence, n_bins=10, strategy="uniform")
    assert len(observed) == 10  # no empty bin at this size
    np.testing.assert_allclose([b.observed for b in bins], observed)
    np.testing.assert_allclose([b.mean_confidence for b in bins], predicted)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_iou_and_hd95_match_monai(seed: int) -> None:
    pred, truth = _masks(seed)
    dice_metric = DiceMetric(include_background=True, reduction="mean")
    assert rle.dice(pred, truth) == pytest.approx(float(dice_metric(_batch(pred), _batch(truth))))
    iou_metric = MeanIoU(include_background=True, reduction="mean")
    assert metrics.iou(pred, truth) == pytest.approx(float(iou_metric(_batch(pred), _batch(truth))))
    sparse_pred, sparse_truth = pred & _masks(seed + 10)[0], truth & _masks(seed + 20)[1]
    expected = compute_hausdorff_distance(
        _batch(sparse_pred), _batch(sparse_truth), include_background=True, percentile=95
    )
    assert metrics.hd95(sparse_pred, sparse_truth) == pytest.approx(float(expected), rel=1e-6)


def test_two_empty_masks_have_dice_one_as_monai_counts_them_when_told_not_to_ignore_them() -> None:
    empty = np.zeros((8, 8), bool)
    monai_dice = DiceMetric(include_background=True, ignore_empty=False)
    assert rle.dice(empty, empty) == float(monai_dice(_batch(empty), _batch(empty))) == 1.0
    full = np.ones((8, 8), bool)
    assert rle.dice(empty, full) == float(monai_dice(_batch(empty), _batch(full))) == 0.0


def test_there_is_one_dice_and_the_vectorised_per_patient_score_is_that_dice() -> None:
    assert metrics.dice is rle.dice is monitoring.dice
    rng = np.random.default_rng(7)
    pred, truth = rng.random((12, 16, 16)) > 0.7, rng.random((12, 16, 16)) > 0.6
    pred[4:6] = truth[4:6] = False  # one patient with empty masks: Dice 1
    groups = np.repeat(np.arange(6), 2)
    keep = rng.random(12) > 0.3  # the classifier's gate
    gated = pred & keep[:, None, None]
    flat_pred, flat_truth = pred.reshape(12, -1), truth.reshape(12, -1)
    score = _mean_patient_dice(
        keep,
        (flat_pred & flat_truth).sum(axis=1).astype(float),
        flat_pred.sum(axis=1).astype(float),
        flat_truth.sum(axis=1).astype(float),
        groups,
    )
    per_patient = [rle.dice(gated[groups == g], truth[groups == g]) for g in range(6)]
    assert score == pytest.approx(np.mean(per_patient))


def test_the_monitors_sensitivity_accuracy_and_dice_match_sklearn_and_monai() -> None:
    rng = np.random.default_rng(8)
    names = np.array(["no_tumour", "glioma", "meningioma", "pituitary"])
    truth, decided = names[rng.integers(0, 4, 200)], names[rng.integers(0, 4, 200)]
    masks = [_masks(seed) for seed in range(3)]
    window = pd.DataFrame(
        {
            "feedback_label": truth,
            "decision": decided,
            "mask_rle": [json.dumps(rle.rle_encode(p)) for p, _ in masks] + [None] * 197,
            "feedback_mask_rle": [json.dumps(rle.rle_encode(t)) for _, t in masks] + [None] * 197,
        }
    )
    quality = window_quality(window)
    monai_dice = DiceMetric(include_background=True, reduction="mean")
    for p, t in masks:
        monai_dice(_batch(p), _batch(t))
    assert quality.masks == 3 and quality.dice == pytest.approx(float(monai_dice.aggregate()))
    assert quality.sensitivity == pytest.approx(
        sk.recall_score(truth != "no_tumour", decided != "no_tumour")
    )
    assert quality.accuracy == pytest.approx(sk.accuracy_score(truth, decided))
