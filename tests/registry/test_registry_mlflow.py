"""The registry against a real MLflow server and the embedded SQLite store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from mlflow_helpers import free_port, make_onnx

from medops.errors import InvalidInputError, NotFoundError, RegistryUnavailableError
from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import (
    CARD_PATH,
    GATE_PATH,
    REPORT_PATH,
    Registry,
    promotion_gate,
)
from pipelines.brain import CLASSIFIER, TYPE_CLASSIFIER


def _register(
    registry: Registry,
    tmp: Path,
    *,
    name: str = CLASSIFIER,
    bias: float = 0.0,
    auc: float = 0.9,
    classes: int = 2,
    **kwargs: object,
):
    onnx_path = make_onnx(tmp / f"m{bias}.onnx", bias=bias, classes=classes)
    report = tmp / "report.html"
    report.write_text("<html><body>ROC</body></html>")
    weights = tmp / "weights.pt"
    weights.write_bytes(b"weights-" + str(bias).encode())
    return registry.log_and_register(
        name,
        onnx_path=onnx_path,
        dataset_version="lgg-abc123",
        params={"lr": 0.001, "epochs": 1},
        metrics={"auc": auc, "sensitivity": 0.8, "specificity": 0.85, "ece": 0.05},
        subgroups={"sex=F": {"auc": 0.88, "n_patients": 3}},
        report_html=report,
        weights_path=weights,
        git_commit="0123abc",
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_registered_version_carries_artifacts_tags_signature_and_the_challenger_alias(
    mlflow_server: str, tmp_path: Path
) -> None:
    registry = Registry(mlflow_server, cache_dir=tmp_path / "cache")
    registered = _register(registry, tmp_path, name=TYPE_CLASSIFIER, classes=4)

    assert registry.get_alias(TYPE_CLASSIFIER, CHALLENGER) == registered.version
    assert registry.get_alias(TYPE_CLASSIFIER, CHAMPION) is None
    tags = registry.version_tags(TYPE_CLASSIFIER, registered.version)
    assert tags["dataset_version"] == "lgg-abc123"
    assert tags["git_commit"] == "0123abc"

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    run = client.get_run(registered.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.001"
    assert run.data.metrics["auc"] == pytest.approx(0.9)
    names = {a.path for a in client.list_artifacts(registered.run_id)}
    assert {"model", "report", "weights", CARD_PATH} <= names
    model_files = {a.path for a in client.list_artifacts(registered.run_id, "model")}
    assert {"model/model.onnx", "model/MLmodel"} <= model_files

    card = registry.download_artifact(TYPE_CLASSIFIER, registered.version, CARD_PATH, tmp_path)
    text = card.read_text()
    for heading in ("Intended use", "lgg-abc123", "Subgroup results", "sex=F", "Known limits"):
        assert heading in text
    report = registry.download_artifact(TYPE_CLASSIFIER, "challenger", REPORT_PATH, tmp_path)
    assert "ROC" in report.read_text()
    mlmodel = registry.download_artifact(TYPE_CLASSIFIER, "1", "model/MLmodel", tmp_path)
    assert '"name": "image"' in mlmodel.read_text() and "probabilities" in mlmodel.read_text()

    resolved = registry.resolve(TYPE_CLASSIFIER, CHALLENGER)
    assert resolved.info.version == registered.version
    assert resolved.info.task == "classification"
    assert resolved.info.classes == ("c0", "c1", "c2", "c3")
    assert resolved.metrics["auc"] == pytest.approx(0.9)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    original = ort.InferenceSession(str(tmp_path / "m0.0.onnx")).run(None, {"image": x})[0]
    served = ort.InferenceSession(str(resolved.onnx_path)).run(None, {"image": x})[0]
    np.testing.assert_array_equal(original, served)

    weights = registry.weights_path(TYPE_CLASSIFIER, registered.version)
    assert weights.read_bytes() == b"weights-0.0"


def test_resolve_follows_an_alias_when_it_moves_and_list_models_shows_both_versions(
    mlflow_server: str, tmp_path: Path
) -> None:
    registry = Registry(mlflow_server, cache_dir=tmp_path / "cache")
    first = _register(registry, tmp_path, name=CLASSIFIER, bias=0.0, auc=0.80)
    second = _register(registry, tmp_path, name=CLASSIFIER, bias=2.0, auc=0.95)
    registry.set_alias(CLASSIFIER, CHAMPION, first.version)
    assert registry.resolve(CLASSIFIER, CHAMPION).info.version == first.version
    registry.set_alias(CLASSIFIER, CHAMPION, second.version)
    assert registry.get_alias(CLASSIFIER, CHAMPION) == second.version
    moved = registry.resolve(CLASSIFIER, CHAMPION)
    assert moved.info.version == second.version
    assert moved.metrics["auc"] == pytest.approx(0.95)

    summary = {m.name: m for m in registry.list_models()}[CLASSIFIER]
    assert summary.aliases[CHAMPION] == second.version
    assert summary.aliases[CHALLENGER] == second.version
    listed = {v.version: v for v in summary.versions}
    assert {first.version, second.version} <= set(listed)
    assert listed[first.version].metrics["auc"] == pytest.approx(0.80)
    assert listed[second.version].dataset_version == "lgg-abc123"
    assert CHAMPION in listed[second.version].aliases


def test_an_unreachable_registry_fails_fast_with_a_clear_error_and_registers_nothing(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    registry = Registry(url, timeout_s=2)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        registry.check()
    with pytest.raises(RegistryUnavailableError, match=url):
        _register(registry, tmp_path)
    assert time.monotonic() - started < 15


def test_a_failure_after_the_version_exists_rolls_the_registration_back(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", cache_dir=tmp_path / "cache")
    # MLflow reserves the alias "latest": the version is created, then the alias fails.
    with pytest.raises(InvalidInputError, match="latest"):
        _register(registry, tmp_path, aliases=("challenger", "latest"))
    assert registry.list_models() == []
    assert registry.get_alias(CLASSIFIER, CHALLENGER) is None

    from mlflow import MlflowClient

    client = MlflowClient(registry.tracking_uri)
    experiment = client.get_experiment_by_name(CLASSIFIER)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]

    ok = _register(registry, tmp_path)
    assert ok.version == "1"
    assert (tmp_path / "mlartifacts").is_dir()  # embedded mode keeps artifacts beside the db


def test_bad_registration_inputs_are_refused_before_anything_is_logged(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # any task file's model name registers; a name that is no DNS label is refused
    with pytest.raises(InvalidInputError, match="a registered name is a DNS label"):
        registry.log_and_register(
            "My_Model", onnx_path=tmp_path / "x.onnx", dataset_version="v", params={}, metrics={}
        )
    with pytest.raises(InvalidInputError, match=r"missing\.onnx"):
        registry.log_and_register(
            CLASSIFIER,
            onnx_path=tmp_path / "missing.onnx",
            dataset_version="v",
            params={},
            metrics={},
        )
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(InvalidInputError, match=r"bad\.onnx"):
        registry.log_and_register(
            CLASSIFIER, onnx_path=bad, dataset_version="v", params={}, metrics={}
        )
    with pytest.raises(NotFoundError):
        registry.resolve(CLASSIFIER, CHAMPION)


def test_the_gate_decision_is_recorded_and_moves_the_champion_only_when_promoted(
    tmp_path: Path,
) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", cache_dir=tmp_path / "cache")
    good = _register(registry, tmp_path, bias=0.0, auc=0.93)
    minimums = {"auc": 0.85}
    first = promotion_gate({"auc": 0.93}, None, minimums=minimums, tolerance=0.01)
    assert registry.record_gate(CLASSIFIER, good.version, first) is True
    assert registry.get_alias(CLASSIFIER, CHAMPION) == good.version

    worse = _register(registry, tmp_path, bias=1.0, auc=0.88)
    decision = promotion_gate({"auc": 0.88}, {"auc": 0.93}, minimums=minimums, tolerance=0.01)
    assert registry.record_gate(CLASSIFIER, worse.version, decision) is False
    assert registry.get_alias(CLASSIFIER, CHAMPION) == good.version
    assert registry.get_alias(CLASSIFIER, CHALLENGER) == worse.version
    assert registry.version_tags(CLASSIFIER, worse.version)["gate.promote"] == "false"
    recorded = json.loads(
        registry.download_artifact(CLASSIFIER, worse.version, GATE_PATH, tmp_path).read_text()
    )
    assert recorded["promote"] is False
    assert recorded["evidence"]["champion"] == {"auc": 0.93}
    assert any("beyond tolerance" in r for r in recorded["reasons"])

    # a passing verdict that leaves the move to a live canary: recorded, champion unchanged
    better = _register(registry, tmp_path, bias=2.0, auc=0.97)
    passing = promotion_gate({"auc": 0.97}, {"auc": 0.93}, minimums=minimums, tolerance=0.01)
    assert passing.promote is True
    assert registry.record_gate(CLASSIFIER, better.version, passing, move_champion=False) is False
    assert registry.get_alias(CLASSIFIER, CHAMPION) == good.version
    assert registry.get_alias(CLASSIFIER, CHALLENGER) == better.version
    assert registry.version_tags(CLASSIFIER, better.version)["gate.promote"] == "true"
