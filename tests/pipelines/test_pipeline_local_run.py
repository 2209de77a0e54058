"""The tiny pipeline end to end through kfp.local against a real MLflow server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from medops.cli import cli
from medops.data import Splits, ingest
from medops.modelspec import CHALLENGER, CHAMPION
from medops.monitoring import load_reference
from medops.registry import CARD_PATH, GATE_PATH, REPORT_PATH, Registry
from medops.settings import MedopsSettings
from pipelines.brain import CLASSIFIER, SEGMENTER
from pipelines.cli import pipeline
from pipelines.presets import get_preset
from pipelines.steps import split_data

TINY_CAP = get_preset("tiny").max_patients


def flagged_train(registry: Registry, home: Path) -> list[str]:
    """The training slices the champion classifier flags at the segmenter's gate."""
    from pipelines.steps import load_split

    classifier = registry.resolve(CLASSIFIER, CHAMPION)
    rule = registry.resolve(SEGMENTER, CHAMPION).info
    gate = classifier.info.threshold if rule.gate_threshold is None else rule.gate_threshold
    splits = home / "flag-splits.json"
    manifest = next(home.glob("datasets/*/*/manifest.json"))
    split_data(str(manifest), str(splits), max_patients=TINY_CAP)
    train = load_split(
        str(manifest), str(splits), "train", size=classifier.info.input_size, home=str(home)
    )
    session = ort.InferenceSession(str(classifier.onnx_path))
    tumour = session.run(None, {"image": train.images})[0][:, -1]
    return [i for i, p in zip(train.sample_ids, tumour, strict=True) if p >= gate]


@pytest.mark.integration
def test_the_tiny_pipeline_trains_registers_promotes_and_publishes_both_models(
    mlflow_server: str,
    data_dir: Path,
    lgg_dir: Path,
    medops_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = MedopsSettings(home=medops_home, data_dir=data_dir, tracking_uri=mlflow_server)
    # one Optuna trial per model exercises the optional tuning branch of the graph
    result = CliRunner().invoke(pipeline, ["run", "--preset", "tiny", "--hpo", "1"], obj=settings)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "pipeline tiny finished" in result.output

    registry = Registry(mlflow_server, cache_dir=tmp_path / "cache")
    manifest = ingest(lgg_dir, medops_home)
    dataset_version = manifest.version
    split_data(str(manifest.path), str(tmp_path / "splits.json"), max_patients=TINY_CAP)
    train_ids = Splits.load(tmp_path / "splits.json").sample_ids(manifest, "train")
    models = {m.name: m for m in registry.list_models()}
    for name, output_shape in ((CLASSIFIER, (1, 2)), (SEGMENTER, (1, 1, 32, 32))):
        summary = models[name]
        assert [v.version for v in summary.versions] == ["1"]
        assert summary.aliases == {CHAMPION: "1", CHALLENGER: "1"}
        tags = registry.version_tags(name, "1")
        assert tags["dataset_version"] == dataset_version
        # other commits may land while the pipeline runs: the tag is a real commit of this repo
        assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"])
        assert subprocess.run(["git", "cat-file", "-e", tags["git_commit"]]).returncode == 0
        assert tags["gate.promote"] == "true"
        params = MlflowClient(mlflow_server).get_run(summary.versions[0].run_id).data.params
        assert params["hpo_trials"] == "1" and params["pipeline_preset"] == "tiny"
        assert float(params["lr"]) != 3e-3  # the tiny preset's rate was replaced by the search
        assert params["batch_size"] in {"8", "16", "32"}
        metrics = summary.versions[0].metrics
        assert metrics["onnx_max_abs_diff"] < 1e-3
        assert "train_seconds" in metrics

        report = registry.download_artifact(name, CHAMPION, REPORT_PATH, tmp_path / name)
        assert "plotly" in report.read_text().lower()
        card = registry.download_artifact(name, CHAMPION, CARD_PATH, tmp_path / name).read_text()
        assert "Intended use" in card and dataset_version in card and "Known limits" in card
        gate = json.loads(
            registry.download_artifact(name, CHAMPION, GATE_PATH, tmp_path / name).read_text()
        )
        assert gate["promote"] is True and gate["evidence"]["champion"] is None

        resolved = registry.resolve(name, CHAMPION)
        assert resolved.info.input_size == 32
        out = ort.InferenceSession(str(resolved.onnx_path)).run(
            None, {"image": np.zeros((1, 3, 32, 32), np.float32)}
        )[0]
        assert out.shape == output_shape

        folder = medops_home / "triton-repo" / name
        assert (folder / "1" / "model.onnx").read_bytes() == resolved.onnx_path.read_bytes()
        assert "KIND_GPU" in (folder / "config.pbtxt").read_text()
        assert "KIND_CPU" in (folder / "configs" / "cpu.pbtxt").read_text()

        # the monitor's drift reference for the served version: the training patients' slices
        reference = load_reference(name, "1", home=medops_home)
        # the segmenter sees the slices the champion classifier flags under the segmenter's
        # gate: its reference is those training slices, whatever their labels
        expected = train_ids if name == CLASSIFIER else flagged_train(registry, medops_home)
        assert len(reference.frame) == len(expected) > 0
        assert reference.calibration is not None
        assert reference.calibration.traffic == "whole studies, patients in random order"
        assert reference.reducer is not None
        assert ("prob_tumour" in reference.frame.columns) == (name == CLASSIFIER)
    assert (medops_home / "pipeline-runs").is_dir()

    # the segmenter was judged as it serves, gated by this run's classifier, and carries the
    # rule chosen on validation in its ONNX metadata
    segmenter_metrics = models[SEGMENTER].versions[0].metrics
    assert 0.0 <= segmenter_metrics["test_two_stage_dice_patient_mean"] <= 1.0
    low = segmenter_metrics["test_two_stage_dice_patient_mean_ci_low"]
    assert low <= segmenter_metrics["test_two_stage_dice_patient_mean"]
    assert "test_segmenter_only_dice_patient_mean" in segmenter_metrics
    rule = registry.resolve(SEGMENTER, "1").info
    assert rule.gate_threshold == segmenter_metrics["test_two_stage_threshold"]
    assert rule.min_component_px == segmenter_metrics["test_two_stage_min_component_px"]
    report = registry.download_artifact(SEGMENTER, "1", REPORT_PATH, tmp_path / "sys")
    assert "two-stage" in report.read_text().lower()
    assert registry.version_tags(SEGMENTER, "1")["evaluation"] == "single-split"

    monkeypatch.setenv("MEDOPS_TRACKING_URI", mlflow_server)
    listed = CliRunner().invoke(cli, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert f"{CLASSIFIER}  (challenger -> v1, champion -> v1)" in listed.output
    assert SEGMENTER in listed.output and "dice_patient_mean=" in listed.output
