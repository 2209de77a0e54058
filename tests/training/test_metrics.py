from __future__ import annotations

import math

import numpy as np
import pytest
from synthetic_arrays import Arrays

from medops.evaluation import (
    average_precision,
    calibration,
    choose_threshold,
    dice,
    evaluate_classifier,
    evaluate_segmenter,
    evaluate_two_stage,
    hd95,
    iou,
    roc_auc,
    subgroup_metrics,
)
from medops.evaluation.subgroups import age_band


def _labels_only(labels: list[int], patients: list[str] | None = None) -> Arrays:
    n = len(labels)
    return Arrays(
        images=np.zeros((n, 3, 4, 4), np.float32),
        masks=None,
        labels=np.array(labels),
        sample_ids=[f"s{i}" for i in range(n)],
        patient_ids=patients or [f"p{i}" for i in range(n)],
    )


def test_auc_counts_correctly_ordered_pairs() -> None:
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs in order
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_average_precision_matches_hand_computation() -> None:
    # thresholds 0.9 (P 1, R .5), 0.8 (P .5, R .5), 0.7 (P 2/3, R 1)
    ap = average_precision(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7]))
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_expected_calibration_error_on_known_probabilities() -> None:
    conf = np.array([0.05] * 4 + [0.95] * 4)
    happened = np.array([0, 0, 0, 0, 1, 1, 1, 0])
    ece, bins = calibration(conf, happened)
    assert ece == pytest.approx(0.5 * 0.05 + 0.5 * 0.2)
    assert [b.count for b in bins] == [4, 0, 0, 0, 0, 0, 0, 0, 0, 4]
    assert bins[9].observed == 0.75


def test_dice_and_iou_on_known_masks() -> None:
    pred = np.zeros((6, 6), bool)
    truth = np.zeros((6, 6), bool)
    pred[0:2, 0:2] = True  # 4 pixels
    truth[0:2, 0:3] = True  # 6 pixels, 4 shared
    assert dice(pred, truth) == pytest.approx(0.8)
    assert iou(pred, truth) == pytest.approx(4 / 6)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_hd95_is_the_surface_distance_in_millimetres() -> None:
    pred = np.zeros((10, 10), bool)
    truth = np.zeros((10, 10), bool)
    pred[0, 0] = truth[3, 4] = True
    assert hd95(pred, truth) == pytest.approx(5.0)
    assert hd95(pred, truth, spacing=(2.0, 1.0)) == pytest.approx(math.hypot(6, 4))
    assert hd95(truth, truth) == 0.0
    assert math.isnan(hd95(np.zeros((4, 4), bool), truth[:4, :4]))


def test_threshold_is_chosen_on_validation_not_on_test_data() -> None:
    val = _labels_only([0, 0, 0, 1, 1, 1])
    val_scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    assert choose_threshold(val.labels, val_scores) == 0.6
    test = _labels_only([0, 1, 1, 0])
    result = evaluate_classifier(
        np.array([0.55, 0.65, 0.9, 0.2]), test, val=val, val_probs=val_scores
    )
    assert result.threshold == 0.6 and result.threshold_source == "validation"
    assert result.sensitivity == 1.0 and result.specificity == 1.0
    # without validation data the default 0.5 would call the 0.55 negative a tumour
    default = evaluate_classifier(np.array([0.55, 0.65, 0.9, 0.2]), test)
    assert default.threshold_source == "default" and default.specificity == 0.5
    headline = result.headline()
    assert headline["auc"] == 1.0 and headline["threshold"] == 0.6 and "ece" in headline


def test_min_specificity_rule_trades_sensitivity_for_specificity() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9])
    assert choose_threshold(labels, scores, min_specificity=1.0) == 0.8
    assert choose_threshold(labels, scores, min_specificity=0.75) == 0.4


def test_multiclass_evaluation_reports_accuracy_macro_auc_and_confusion() -> None:
    data = _labels_only([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    result = evaluate_classifier(probs, data)
    assert result.accuracy == 0.75
    assert result.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert result.headline()["auc_macro"] == pytest.approx(np.mean(result.per_class_auc))


def _seg_data() -> tuple[Arrays, np.ndarray]:
    masks = np.zeros((4, 1, 8, 8), np.uint8)
    probs = np.zeros((4, 1, 8, 8), np.float32)
    masks[0, 0, 0:2, 0:3] = 1  # patient a: 6 true px, prediction covers 4 of them
    probs[0, 0, 0:2, 0:2] = 0.9
    probs[1, 0, 5:7, 5:7] = 0.8  # patient a: 4 false-positive px on an empty slice
    masks[2, 0, 2:4, 2:4] = 1  # patient b: perfect
    probs[2, 0, 2:4, 2:4] = 0.7
    data = Arrays(
        images=np.zeros((4, 3, 8, 8), np.float32),
        masks=masks,
        labels=np.array([1, 0, 1, 0]),
        sample_ids=["a0", "a1", "b0", "b1"],
        patient_ids=["a", "a", "b", "b"],
    )
    return data, probs


def test_segmenter_dice_is_per_patient_volume_and_per_tumour_slice() -> None:
    data, probs = _seg_data()
    result = evaluate_segmenter(probs, data, spacing_mm=(0.5, 0.5), slice_thickness_mm=2.0)
    # patient a: |P| = 8, |T| = 6, overlap 4 -> 8/14; patient b: 1
    assert result.patients["a"]["dice"] == pytest.approx(8 / 14)
    assert result.patients["b"]["dice"] == 1.0
    headline = result.headline()
    assert headline["dice_patient_mean"] == pytest.approx((8 / 14 + 1) / 2)
    assert headline["dice_slice_mean"] == pytest.approx((0.8 + 1.0) / 2)
    assert headline["empty_slices_false_positive"] == 0.5
    # volume of a: 6 px x 0.25 mm2 x 2 mm = 3 mm3 = 0.003 ml; predicted 8 px -> 0.004 ml
    assert result.patients["a"]["volume_error_ml"] == pytest.approx(0.001)
    assert headline["area_abs_error_mm2_mean"] == pytest.approx((0.5 + 0.0) / 2)
    assert result.worst_slices(1) == [0]


def test_two_stage_gating_removes_false_positives_on_tumour_free_slices() -> None:
    data, probs = _seg_data()
    classifier = np.array([0.9, 0.1, 0.8, 0.2])  # says slice 1 has no tumour
    result = evaluate_two_stage(classifier, probs, data, threshold=0.5)
    headline = result.headline()
    assert result.gated.patients["a"]["dice"] == pytest.approx(0.8)
    assert headline["segmenter_only_dice_patient_mean"] == pytest.approx((8 / 14 + 1) / 2)
    assert headline["two_stage_dice_gain"] == pytest.approx((0.8 - 8 / 14) / 2)
    assert headline["two_stage_detection_specificity"] == 1.0


def test_subgroups_group_by_sex_age_band_and_institution() -> None:
    data = _labels_only([1, 0, 1, 0], patients=["p1", "p1", "p2", "p2"])
    ev = evaluate_classifier(np.array([0.9, 0.2, 0.4, 0.6]), data, threshold=0.5)
    patients = {
        "p1": {"sex": "F", "age": 35, "institution": "CS"},
        "p2": {"sex": "M", "age": 61, "institution": "DU"},
    }
    groups = subgroup_metrics(ev, patients)
    assert set(groups) == {"sex", "age_band", "institution"}
    assert groups["sex"]["F"]["accuracy"] == 1.0 and groups["sex"]["M"]["accuracy"] == 0.0
    assert groups["age_band"]["60+"]["n"] == 2
    assert "p1" not in str(groups)
    seg_data, probs = _seg_data()
    seg = evaluate_segmenter(probs, seg_data)
    seg_groups = subgroup_metrics(seg, {"a": {"sex": "F"}, "b": {"sex": "M", "age": None}})
    assert seg_groups["sex"]["M"]["dice"] == 1.0
    assert seg_groups["institution"]["unknown"]["n"] == 2


def test_age_bands() -> None:
    assert [age_band(a) for a in (12, 40, 59.9, 60, None, "n/a")] == [
        "<40",
        "40-59",
        "40-59",
        "60+",
        "unknown",
        "unknown",
    ]
