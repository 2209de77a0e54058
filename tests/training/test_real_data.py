"""A tiny end-to-end run on a few real LGG patients: the data contract meets training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medops.data import ArraySet, Manifest, ingest, load_arrays
from medops.evaluation import (
    build_report,
    evaluate_classifier,
    evaluate_segmenter,
    evaluate_two_stage,
    subgroup_metrics,
)
from medops.export import export_onnx, read_model_metadata
from medops.training import TrainConfig, train_model


@pytest.fixture(scope="module")
def lgg(
    lgg_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Manifest, dict[str, ArraySet]]:
    home = tmp_path_factory.mktemp("lgg-home")
    manifest = ingest(lgg_dir, home)
    patients = sorted(manifest.patients)[:4]
    parts = {"train": patients[:2], "val": patients[2:3], "test": patients[3:]}
    sets = {
        name: load_arrays(
            manifest,
            [s.sample_id for s in manifest.samples if s.patient_id in chosen],
            size=32,
            home=home,
        )
        for name, chosen in parts.items()
    }
    return manifest, sets


def test_tiny_preset_trains_evaluates_and_exports_on_real_patients(
    lgg: tuple[Manifest, dict[str, ArraySet]], tmp_path: Path
) -> None:
    manifest, sets = lgg
    train, val, test = sets["train"], sets["val"], sets["test"]
    assert set(np.unique(train.labels)) == {0, 1}

    cls = train_model(TrainConfig.preset("classifier", "tiny"), train, val)
    seg = train_model(TrainConfig.preset("segmenter", "tiny"), train, val)
    assert len(cls.history) == 2 and len(seg.history) == 2
    assert all(math.isfinite(h["train_loss"]) for h in cls.history + seg.history)

    cls_ev = evaluate_classifier(cls.model, test, val=val)
    seg_ev = evaluate_segmenter(seg.model, test)
    assert seg_ev.probs is not None
    two = evaluate_two_stage(cls_ev.probs, seg_ev.probs, test, threshold=cls_ev.threshold)
    assert cls_ev.threshold_source == "validation" and 0.0 <= cls_ev.auc <= 1.0
    assert seg_ev.headline()["patients"] == 1.0
    assert 0.0 <= two.headline()["two_stage_dice_patient_mean"] <= 1.0

    groups = subgroup_metrics(cls_ev, manifest.patients)
    (institution,) = groups["institution"]
    assert institution == manifest.patients[test.patient_ids[0]]["institution"]
    page = build_report(
        classifier=cls_ev,
        segmenter=seg_ev,
        two_stage=two,
        subgroups={"classifier": groups},
        data=test,
        title="LGG tiny",
    )
    assert test.patient_ids[0] not in page

    exported = export_onnx(
        seg.model,
        tmp_path / "seg.onnx",
        task="segmenter",
        input_size=32,
        classes=["tumour"],
        threshold=0.5,
        dataset_version=manifest.version,
    )
    assert exported.max_abs_diff <= 1e-4
    assert read_model_metadata(exported.path)["dataset_version"] == manifest.version
