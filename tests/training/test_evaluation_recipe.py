"""Calibration, patient-level intervals, post-processing and the two-stage rule, on seeded
synthetic data (the metric primitives' parity with sklearn and MONAI: test_metric_parity.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medops.evaluation import calibration, roc_auc
from medops.evaluation.stats import mean_interval, patient_bootstrap
from medops.evaluation.temperature import apply_temperature, fit_temperature
from medops.evaluation.two_stage import choose_two_stage_rule, evaluate_two_stage
from medops.models import ServingWrapper
from medops.transforms import drop_small_components


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities, and the same logits sharpened threefold."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    sharp = 3 * logit
    p = 1 / (1 + np.exp(-sharp))
    return np.stack([1 - p, p], axis=1), labels


def test_temperature_scaling_recovers_the_sharpening_and_lowers_ece() -> None:
    probs, labels = _overconfident()
    temperature = fit_temperature(probs, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    fixed = apply_temperature(probs, temperature)
    before = calibration(probs[:, 1], labels == 1)[0]
    after = calibration(fixed[:, 1], labels == 1)[0]
    assert before > 0.08 and after < 0.03
    # a monotone map: the ranking, and so the AUC, is unchanged
    assert roc_auc(labels, fixed[:, 1]) == pytest.approx(roc_auc(labels, probs[:, 1]))


def test_the_serving_wrapper_applies_the_same_temperature_in_the_graph() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    x = torch.rand(5, 3, 4, 4)
    plain = ServingWrapper(net, "classifier")(x).detach().numpy()
    scaled = ServingWrapper(net, "classifier", temperature=2.5)(x).detach().numpy()
    np.testing.assert_allclose(scaled, apply_temperature(plain, 2.5), atol=1e-5)


def test_flip_averaging_of_a_segmenter_is_mirror_symmetric() -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 3, padding=1)
    wrapper = ServingWrapper(net, "segmenter", flip_average=True)
    x = torch.rand(2, 3, 8, 8)
    out = wrapper(x).detach()
    mirrored = wrapper(torch.flip(x, dims=[-1])).detach()
    torch.testing.assert_close(torch.flip(mirrored, dims=[-1]), out)


def test_the_patient_bootstrap_resamples_patients_not_slices() -> None:
    # two patients, each with many identical slices: resampling slices would give a point
    ids = ["a"] * 50 + ["b"] * 50
    values = np.r_[np.zeros(50), np.ones(50)]
    low, high = patient_bootstrap(ids, lambda idx: float(values[idx].mean()), resamples=400)
    assert low == 0.0 and high == 1.0
    low, high = mean_interval([0.8] * 10)
    assert low == high == pytest.approx(0.8)
    low, high = mean_interval(np.random.default_rng(0).normal(0.7, 0.1, 40))
    assert low < 0.7 < high and high - low < 0.08


def test_small_components_are_dropped_and_large_ones_kept() -> None:
    mask = np.zeros((2, 16, 16), bool)
    mask[0, 1:3, 1:3] = True  # 4 px
    mask[0, 8:14, 8:14] = True  # 36 px
    mask[1, 0, 0] = True
    out = drop_small_components(mask, 5)
    assert out[0, 8:14, 8:14].all() and not out[0, 1:3, 1:3].any() and not out[1].any()
    assert (drop_small_components(mask, 0) == mask).all()


def _volume(seed: int = 0) -> SimpleNamespace:
    """Two patients of 6 slices, tumour on slices 2-4, a segmenter with a speck of noise on
    empty slices and a classifier that misses one tumour slice."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((12, 1, 16, 16), np.uint8)
    for p in (0, 6):
        masks[p + 2 : p + 5, 0, 4:12, 4:12] = 1
    seg = masks.astype(np.float32) * 0.9
    seg[[0, 5, 6, 11], 0, 0, 0] = 0.8  # one-pixel false positives
    prob = np.where(masks.reshape(12, -1).any(1), 0.9, 0.1) + rng.normal(0, 0.01, 12)
    prob[3] = 0.2  # the classifier misses a tumour slice
    data = SimpleNamespace(
        images=np.zeros((12, 3, 16, 16), np.float32),
        masks=masks,
        labels=masks.reshape(12, -1).any(1).astype(np.int64),
        sample_ids=[str(i) for i in range(12)],
        patient_ids=["p1"] * 6 + ["p2"] * 6,
    )
    return SimpleNamespace(data=data, seg=seg, prob=prob)


def test_the_rule_chosen_on_validation_beats_the_plain_gate() -> None:
    v = _volume()
    rule = choose_two_stage_rule(v.prob, v.seg, v.data, gates=(0.0, 0.5), min_sizes=(0, 16))
    # a low gate keeps the missed slice; filtering removes the specks (16 px at 128 -> 0 at 16:
    # so the chosen size is scaled to the slice side)
    assert rule.gate_threshold == 0.0
    chosen = evaluate_two_stage(
        v.prob, v.seg, v.data, threshold=rule.gate_threshold, min_component_px=2
    )
    plain = evaluate_two_stage(v.prob, v.seg, v.data, threshold=0.5)
    assert chosen.headline()["two_stage_dice_patient_mean"] == pytest.approx(1.0)
    assert plain.headline()["two_stage_dice_patient_mean"] < 0.95
    assert rule.val_dice_patient_mean == pytest.approx(
        evaluate_two_stage(
            v.prob,
            v.seg,
            v.data,
            threshold=rule.gate_threshold,
            min_component_px=rule.min_component_px,
        ).headline()["two_stage_dice_patient_mean"]
    )


def test_classifier_intervals_cover_the_point_estimate_and_widen_with_fewer_patients() -> None:
    from medops.evaluation import evaluate_classifier
    from medops.evaluation.stats import classifier_intervals

    rng = np.random.default_rng(5)

    def evaluation(patients: int) -> object:
        labels = rng.integers(0, 2, patients * 30)
        scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
        data = SimpleNamespace(
            images=np.zeros((len(labels), 3, 2, 2), np.float32),
            masks=None,
            labels=labels,
            sample_ids=[str(i) for i in range(len(labels))],
            patient_ids=[f"p{i // 30}" for i in range(len(labels))],
        )
        return evaluate_classifier(scores, data, threshold=0.5)

    many, few = evaluation(40), evaluation(4)
    wide = classifier_intervals(few, ["auc", "sensitivity"])
    narrow = classifier_intervals(many, ["auc", "sensitivity"])
    assert narrow["auc_ci_low"] <= many.auc <= narrow["auc_ci_high"]
    assert narrow["sensitivity_ci_low"] <= many.sensitivity <= narrow["sensitivity_ci_high"]
    assert wide["auc_ci_high"] - wide["auc_ci_low"] > narrow["auc_ci_high"] - narrow["auc_ci_low"]
