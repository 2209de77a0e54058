from __future__ import annotations

import re

import numpy as np
from synthetic_arrays import make_arrays

from medops.evaluation import (
    build_report,
    evaluate_classifier,
    evaluate_segmenter,
    evaluate_two_stage,
    pseudonym,
    subgroup_metrics,
)


def test_report_is_one_self_contained_page_with_every_plot() -> None:
    data = make_arrays(16, seed=0, patients=4)
    val = make_arrays(16, seed=1, patients=4)
    rng = np.random.default_rng(0)
    tumour_prob = np.clip(data.labels * 0.6 + rng.uniform(0, 0.4, 16), 0, 1)
    val_prob = np.clip(val.labels * 0.6 + rng.uniform(0, 0.4, 16), 0, 1)
    assert data.masks is not None
    seg_probs = np.clip(
        data.masks.astype(np.float32) * 0.8 + rng.uniform(0, 0.3, data.masks.shape), 0, 1
    )
    seg_probs[2, 0, :4, :4] = 0.0  # one visible miss
    cls = evaluate_classifier(tumour_prob, data, val=val, val_probs=val_prob)
    seg = evaluate_segmenter(seg_probs, data)
    two = evaluate_two_stage(tumour_prob, seg_probs, data, threshold=cls.threshold)
    patients = {
        f"case{i}": {"sex": "FM"[i % 2], "age": 30 + 10 * i, "institution": "CS"} for i in range(4)
    }
    groups = {
        "classifier": subgroup_metrics(cls, patients),
        "segmenter": subgroup_metrics(seg, patients),
    }

    page = build_report(
        classifier=cls,
        segmenter=seg,
        two_stage=two,
        subgroups=groups,
        data=data,
        title="LGG fast run",
    )

    assert page.startswith("<!DOCTYPE html>") and "<title>LGG fast run</title>" in page
    for div in (
        "roc-curve",
        "pr-curve",
        "calibration",
        "dice-distribution",
        "worst-cases",
        "two-stage",
        "subgroups-classifier",
        "subgroups-segmenter",
    ):
        assert f'id="{div}"' in page
    # plotly.js itself is inlined exactly once and nothing is fetched from the network
    assert page.count("Plotly.newPlot") >= 8
    assert len(page) > 1_000_000
    assert not re.search(r'<script[^>]+src="http', page)
    assert page.count("png;base64,") >= 3 * 6  # image, truth, prediction for 6 worst slices
    # slices appear under pseudonyms, never under their identifiers
    assert pseudonym(data.sample_ids[2]) in page
    assert "case0_" not in page and '"case1"' not in page
    assert "auc" in page and "dice_patient_mean" in page


def test_report_for_a_multiclass_classifier_shows_a_confusion_matrix() -> None:
    data = make_arrays(12)
    data.labels = np.arange(12) % 3
    probs = np.eye(3)[data.labels] * 0.7 + 0.1
    page = build_report(
        classifier=evaluate_classifier(probs, data), segmenter=None, data=None, title="types"
    )
    assert 'id="confusion-matrix"' in page and 'id="roc-curve"' not in page
