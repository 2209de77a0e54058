"""The promotion gate on real models: trained on a few patients vs (almost) untrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import GATE_PATH, Registry
from pipelines import steps
from pipelines.brain import CLASSIFIER
from pipelines.presets import get_preset

UNTRAINED = {"epochs": 1, "max_steps_per_epoch": 1, "lr": 1e-7}
TRAINED = {"epochs": 6, "patience": 0, "max_steps_per_epoch": 30}


def _candidate(
    work: Path,
    lgg: dict[str, str],
    tracking_uri: str,
    overrides: dict,
    tag: str,
    weights: Path | None = None,
) -> tuple[str, dict, Path]:
    """Train (unless weights are given), evaluate, export and register one classifier."""
    home, manifest, splits = lgg["home"], lgg["manifest"], lgg["splits"]
    folder = work / tag
    folder.mkdir()
    if weights is None:
        weights = folder / "weights.pt"
        training = steps.train(
            "classifier", "tiny", manifest, splits, home, str(weights), overrides=overrides
        )
    else:
        training = json.loads((weights.parent / "training.json").read_text())
    (folder / "training.json").write_text(json.dumps(training))
    steps.evaluate(
        "classifier",
        "tiny",
        manifest,
        splits,
        home,
        str(weights),
        str(folder / "report.html"),
        str(folder / "evaluation.json"),
        overrides=overrides,
        tracking_uri=tracking_uri,
    )
    diff = steps.export(
        "classifier",
        "tiny",
        str(weights),
        str(folder / "evaluation.json"),
        str(folder / "model.onnx"),
        overrides=overrides,
    )
    version = steps.register(
        "classifier",
        "tiny",
        tracking_uri,
        str(folder / "model.onnx"),
        str(weights),
        str(folder / "report.html"),
        str(folder / "evaluation.json"),
        str(folder / "training.json"),
        max_abs_diff=diff,
    )
    evaluation = json.loads((folder / "evaluation.json").read_text())
    return version, evaluation, weights


def strong_eval_val_auc(work: Path) -> float:
    """The strong model's best validation AUC, as recorded by its training."""
    return float(json.loads((work / "strong" / "training.json").read_text())["best_metric"])


def test_the_gate_promotes_a_better_model_and_keeps_a_worse_one_out_on_the_same_patients(
    lgg_dir: Path, medops_home: Path, tmp_path: Path
) -> None:
    tracking_uri = f"sqlite:///{medops_home / 'mlflow.db'}"
    ingested = steps.ingest_data(str(lgg_dir), str(medops_home))
    splits = str(tmp_path / "splits.json")
    steps.split_data(ingested["manifest"], splits, max_patients={"train": 6, "val": 3, "test": 5})
    lgg = {"home": str(medops_home), "manifest": ingested["manifest"], "splits": splits}
    registry = Registry(tracking_uri, cache_dir=tmp_path / "cache")

    weak, weak_eval, weak_weights = _candidate(tmp_path, lgg, tracking_uri, UNTRAINED, "weak")
    assert weak_eval["champion"] is None
    assert (
        steps.gate(
            "classifier", "tiny", tracking_uri, weak, str(tmp_path / "weak" / "evaluation.json")
        )
        is True
    )
    assert registry.get_alias(CLASSIFIER, CHAMPION) == weak

    strong, strong_eval, _ = _candidate(tmp_path, lgg, tracking_uri, TRAINED, "strong")
    # the champion was re-evaluated from its ONNX on the same held-out patients
    assert strong_eval["champion"]["version"] == weak
    assert strong_eval["champion"]["headline"]["auc"] == pytest.approx(
        weak_eval["headline"]["auc"], abs=1e-4
    )
    assert strong_eval["champion"]["headline"]["n"] == strong_eval["headline"]["n"]
    assert strong_eval["headline"]["auc"] > weak_eval["headline"]["auc"] + 0.05
    assert (
        steps.gate(
            "classifier", "tiny", tracking_uri, strong, str(tmp_path / "strong" / "evaluation.json")
        )
        is True
    )
    assert registry.get_alias(CLASSIFIER, CHAMPION) == strong

    again, again_eval, _ = _candidate(
        tmp_path, lgg, tracking_uri, UNTRAINED, "again", weights=weak_weights
    )
    assert again_eval["champion"]["version"] == strong
    assert (
        steps.gate(
            "classifier", "tiny", tracking_uri, again, str(tmp_path / "again" / "evaluation.json")
        )
        is False
    )
    assert registry.get_alias(CLASSIFIER, CHAMPION) == strong
    assert registry.get_alias(CLASSIFIER, CHALLENGER) == again
    recorded = json.loads(
        registry.download_artifact(CLASSIFIER, again, GATE_PATH, tmp_path / "dl").read_text()
    )
    assert recorded["promote"] is False
    assert recorded["evidence"]["champion_version"] == strong
    assert recorded["evidence"]["checks"]["versus:auc"]["passed"] is False
    assert registry.version_tags(CLASSIFIER, again)["gate.promote"] == "false"

    # the champion's logged weights warm-start the next training
    warm = steps.train(
        "classifier",
        "tiny",
        lgg["manifest"],
        splits,
        lgg["home"],
        str(tmp_path / "warm.pt"),
        overrides={"epochs": 1, "lr": 1e-7, "max_steps_per_epoch": 1},
        warm_start=CHAMPION,
        tracking_uri=tracking_uri,
    )
    assert Path(warm["config"]["warm_start"]).parts[-3:] == (CLASSIFIER, strong, "model.pt")
    assert warm["best_metric"] == pytest.approx(strong_eval_val_auc(tmp_path), abs=0.02)


def test_the_refresh_preset_leaves_promotion_to_a_live_canary_and_gates_like_fast() -> None:
    refresh, fast = get_preset("refresh"), get_preset("fast")
    assert refresh.promote is False and fast.promote is True
    assert refresh.minimums == fast.minimums and refresh.tolerance == fast.tolerance
    assert all(o["epochs"] == 3 for o in refresh.overrides.values())
