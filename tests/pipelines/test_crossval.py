"""Cross-validation of a recipe with the pipeline's own steps (tiny preset, real LGG data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medops.errors import DatasetError
from pipelines.crossval import cross_validate


def test_every_patient_is_judged_once_by_models_that_never_saw_it(
    lgg_dir: Path, medops_home: Path
) -> None:
    result = cross_validate("tiny", lgg_dir, medops_home, folds=3, work=medops_home / "cv")
    assert len(result.folds) == 3
    tested = [
        json.loads((medops_home / "cv" / f"fold-{i}" / "splits.json").read_text())
        for i in (1, 2, 3)
    ]
    everyone = sorted(p for fold in tested for p in fold["test"])
    assert len(everyone) == len(set(everyone)) == 40
    for fold in tested:
        assert not set(fold["test"]) & set(fold["train"] + fold["val"])
    summary = result.summary()
    pooled = summary["pooled_two_stage_dice"]
    assert pooled["patients"] == 40 and pooled["ci_low"] <= pooled["mean"] <= pooled["ci_high"]
    assert summary["pooled_slices"]["slices"] == 1288
    assert {"auc", "ece", "two_stage_dice_patient_mean"} <= set(summary)
    text = result.to_text()
    assert "3-fold patient-level cross-validation" in text and "95% CI" in text
    saved = json.loads((medops_home / "cv" / "crossval.json").read_text())
    assert saved["metrics"]["cv_pooled_two_stage_dice_mean"] == pytest.approx(pooled["mean"])


def test_more_folds_than_patients_fail_before_any_training(
    lgg_dir: Path, medops_home: Path
) -> None:
    with pytest.raises(DatasetError, match=r"41 folds need at least 41 patients.*has 40"):
        cross_validate("tiny", lgg_dir, medops_home, folds=41, work=medops_home / "cv")
    assert not list((medops_home / "cv").glob("fold-*/*.pt"))


def test_pipeline_run_with_folds_and_int8_registers_cross_validated_and_int8_versions(
    data_dir: Path, medops_home: Path
) -> None:
    from click.testing import CliRunner

    from medops.modelspec import CHALLENGER, CHAMPION
    from medops.registry import Registry
    from medops.registry.cli import models
    from medops.settings import MedopsSettings
    from pipelines.brain import CLASSIFIER, SEGMENTER
    from pipelines.cli import pipeline

    settings = MedopsSettings(home=medops_home, data_dir=data_dir)
    result = CliRunner().invoke(
        pipeline, ["run", "--preset", "tiny", "--folds", "3", "--int8"], obj=settings
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "3-fold patient-level cross-validation" in result.output
    registry = Registry(settings.mlflow_uri)
    for name in (CLASSIFIER, SEGMENTER):
        summary = {m.name: m for m in registry.list_models()}[name]
        # the run's champion, then its int8 variant, the challenger its gate judged
        int8, trained = summary.versions[0], summary.versions[1]
        assert int8.tags["precision"] == "int8" and CHALLENGER in int8.aliases
        assert CHAMPION in trained.aliases and "precision" not in trained.tags
        assert f"{name} v{int8.version} registered (int8, from v{trained.version}" in result.output
        metrics = trained.metrics
        assert 0 <= metrics["cv_pooled_two_stage_dice_mean"] <= 1
        assert "cv_auc_mean" in metrics and "cv_auc_std" in metrics
        assert registry.version_tags(name, trained.version)["evaluation"] == "cross-validated"
    listed = CliRunner().invoke(models, ["list"], obj=settings)
    assert listed.exit_code == 0 and "cross-validated" in listed.output, listed.output
