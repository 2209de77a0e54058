"""Operator overrides (``medops models promote|demote``) and ``models list`` on a real SQLite
registry, with a real exported ONNX model and its torch weights."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import torch
from click.testing import CliRunner, Result

from medops.cli import cli
from medops.errors import InvalidInputError
from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import (
    CARD_PATH,
    Registry,
    default_audit_path,
    promotion_gate,
    render_model_card,
)
from medops.registry.audit import read_entries
from pipelines.brain import CLASSIFIER, SEGMENTER

PARAMS = {"task": "classifier", "arch": "resnet10", "widths": "4-8-8-8", "num_classes": 2}
"""How the tiny network below was built, as ``TrainConfig.to_params`` logs it."""


@dataclass(frozen=True)
class Exported:
    onnx: Path
    weights: Path
    other_weights: Path
    """Weights of another network of the same shape: the ONNX fails parity against them."""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    from medops.export import export_onnx
    from medops.models import build_classifier
    from medops.training import save_weights

    root = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    model = build_classifier(2, arch="resnet10", widths=(4, 8, 8, 8))
    export_onnx(
        model,
        root / "model.onnx",
        task="classification",
        input_size=32,
        classes=["no_tumour", "tumour"],
        threshold=0.5,
        dataset_version="lgg-test",
    )
    other = build_classifier(2, arch="resnet10", widths=(4, 8, 8, 8))
    return Exported(
        onnx=root / "model.onnx",
        weights=save_weights(model, root / "model.pt"),
        other_weights=save_weights(other, root / "other.pt"),
    )


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow database, copied per test (creating one costs seconds)."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    Registry(f"sqlite:///{db}").check()
    return db


@pytest.fixture
def registry(medops_home: Path, empty_db: Path) -> Registry:
    """The registry ``medops`` itself uses with this MEDOPS_HOME (``<home>/mlflow.db``)."""
    medops_home.mkdir(parents=True)
    shutil.copyfile(empty_db, medops_home / "mlflow.db")
    return Registry(f"sqlite:///{medops_home.resolve() / 'mlflow.db'}")


def _register(
    registry: Registry,
    exported: Exported,
    *,
    weights: Path | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    with_weights: bool = True,
) -> str:
    return registry.log_and_register(
        CLASSIFIER,
        onnx_path=exported.onnx,
        dataset_version="lgg-test",
        params=PARAMS,
        metrics=metrics or {"test_auc": 0.9},
        weights_path=(weights or exported.weights) if with_weights else None,
        git_commit="0123abc",
        tags=tags,
    ).version


def _models(*args: str) -> Result:
    return CliRunner().invoke(cli, ["models", *args])


def _aliases(registry: Registry) -> dict[str, str | None]:
    return {a: registry.get_alias(CLASSIFIER, a) for a in (CHAMPION, CHALLENGER)}


def _audit(home: Path) -> list[dict[str, Any]]:
    return read_entries(default_audit_path(home))


def test_promote_moves_the_champion_and_records_reason_who_and_when_on_the_version_and_audit(
    registry: Registry, exported: Exported, medops_home: Path
) -> None:
    first = _register(registry, exported)
    registry.set_alias(CLASSIFIER, CHAMPION, first)
    second = _register(registry, exported)

    result = _models("promote", CLASSIFIER, second, "--reason", "canary looked fine", "--by", "ana")

    assert result.exit_code == 0, result.output
    assert f"champion v{first} -> v{second}" in result.output
    assert registry.get_alias(CLASSIFIER, CHAMPION) == second
    tags = registry.version_tags(CLASSIFIER, second)
    assert tags["override.action"] == "promote"
    assert tags["override.reason"] == "canary looked fine"
    assert tags["override.by"] == "ana"
    assert tags["override.at"].endswith("+00:00")
    assert (tags["override.from"], tags["override.to"]) == (first, second)
    assert tags["champion.previous"] == first
    [entry] = _audit(medops_home)
    assert entry["actor"] == "ana" and entry["action"] == "promote"
    assert entry["reason"] == "canary looked fine" and entry["time"] == tags["override.at"]
    assert entry["changes"] == [
        {"model": CLASSIFIER, "change": "alias", "alias": CHAMPION, "versions": [first, second]}
    ]
    assert "revision" not in entry  # only the gateway's router numbers revisions
    assert entry["parity_max_abs_diff"] < 1e-4


def test_promote_names_the_os_user_without_by_and_accepts_an_alias_as_version(
    registry: Registry, exported: Exported, medops_home: Path
) -> None:
    from medops.registry import current_user

    version = _register(registry, exported)  # challenger, no champion yet
    result = _models("promote", CLASSIFIER, CHALLENGER, "--reason", "first champion")
    assert result.exit_code == 0, result.output
    assert registry.get_alias(CLASSIFIER, CHAMPION) == version
    assert registry.version_tags(CLASSIFIER, version)["override.by"] == current_user()
    assert _audit(medops_home)[0]["changes"][0]["versions"] == [None, version]


def test_demote_moves_the_champion_back_to_the_previous_one_and_else_removes_it(
    registry: Registry, exported: Exported, medops_home: Path
) -> None:
    first = _register(registry, exported)
    registry.set_alias(CLASSIFIER, CHAMPION, first)
    second = _register(registry, exported)
    assert _models("promote", CLASSIFIER, second, "--reason", "better").exit_code == 0

    back = _models("demote", CLASSIFIER, "--reason", "false positives", "--by", "ben")
    assert back.exit_code == 0, back.output
    assert registry.get_alias(CLASSIFIER, CHAMPION) == first
    tags = registry.version_tags(CLASSIFIER, second)
    assert tags["override.action"] == "demote" and tags["override.by"] == "ben"
    assert (tags["override.from"], tags["override.to"]) == (second, first)
    assert registry.get_alias(CLASSIFIER, CHALLENGER) == second  # other aliases stay

    gone = _models("demote", CLASSIFIER, first, "--reason", "pull it")
    assert gone.exit_code == 0, gone.output
    assert "none (alias removed)" in gone.output
    assert registry.get_alias(CLASSIFIER, CHAMPION) is None
    assert [e["action"] for e in _audit(medops_home)] == ["promote", "demote", "demote"]
    assert _audit(medops_home)[-1]["changes"][0]["versions"] == [first, None]


def test_demote_never_falls_back_to_a_version_an_operator_demoted(
    registry: Registry, exported: Exported, medops_home: Path
) -> None:
    one = _register(registry, exported)
    registry.set_alias(CLASSIFIER, CHAMPION, one)
    two = _register(registry, exported)
    audit = default_audit_path(medops_home)
    registry.promote(CLASSIFIER, two, reason="r", audit_path=audit)  # two.previous = one
    registry.promote(CLASSIFIER, one, reason="r", audit_path=audit)  # one.previous = two
    assert registry.demote(CLASSIFIER, reason="r", audit_path=audit).after == two
    # two's previous champion is one, demoted just now: the alias is removed instead
    change = registry.demote(CLASSIFIER, two, reason="r", audit_path=audit)
    assert change.after is None
    assert registry.get_alias(CLASSIFIER, CHAMPION) is None


def _delete_onnx(registry: Registry, version: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(registry.tracking_uri)
    run_id = str(client.get_model_version(CLASSIFIER, version).run_id)
    uri = client.get_run(run_id).info.artifact_uri
    (Path(urlparse(uri).path) / "model" / "model.onnx").unlink()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown model", f"unknown model '{SEGMENTER}'"),
        ("unknown version", "has no version '9'"),
        ("missing onnx", "has no ONNX artifact (model/model.onnx)"),
        ("missing weights", "has no torch weights"),
        ("parity failure", "fails the ONNX parity check"),
        ("already champion", "is already the champion"),
        ("audit not writable", "cannot be written"),
    ],
)
def test_a_refused_promotion_says_why_and_leaves_aliases_tags_and_audit_unchanged(
    registry: Registry, exported: Exported, medops_home: Path, case: str, message: str
) -> None:
    champion = _register(registry, exported)
    registry.set_alias(CLASSIFIER, CHAMPION, champion)
    name, extra = CLASSIFIER, []
    if case == "unknown model":
        name, version = SEGMENTER, "1"
    elif case == "unknown version":
        version = "9"
    elif case == "already champion":
        version = champion
    elif case == "missing weights":
        version = _register(registry, exported, with_weights=False)
    elif case == "parity failure":
        version = _register(registry, exported, weights=exported.other_weights)
    else:
        version = _register(registry, exported)
        if case == "missing onnx":
            _delete_onnx(registry, version)
        if case == "audit not writable":
            blocker = medops_home / "not-a-folder"
            blocker.write_text("")
            extra = ["--audit-file", str(blocker / "audit.jsonl")]
    before = _aliases(registry)
    tags_before = registry.version_tags(CLASSIFIER, champion)

    result = _models("promote", name, version, "--reason", "try", *extra)

    assert result.exit_code != 0
    assert "promotion refused" in result.output and message in result.output, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert _aliases(registry) == before
    assert registry.version_tags(CLASSIFIER, champion) == tags_before
    if case not in {"unknown model", "unknown version"}:
        assert "override.action" not in registry.version_tags(CLASSIFIER, version)
    assert _audit(medops_home) == []


def test_the_library_refuses_with_invalid_input_errors(
    registry: Registry, exported: Exported
) -> None:
    version = _register(registry, exported, weights=exported.other_weights)
    with pytest.raises(InvalidInputError, match="parity"):
        registry.promote(CLASSIFIER, version, reason="r")
    with pytest.raises(InvalidInputError, match="reason"):
        registry.promote(CLASSIFIER, version, reason="  ")
    with pytest.raises(InvalidInputError, match="no champion to demote"):
        registry.demote(CLASSIFIER, reason="r")
    assert registry.get_alias(CLASSIFIER, CHAMPION) is None


def test_demote_refuses_a_version_that_is_not_champion_and_an_unservable_fallback(
    registry: Registry, exported: Exported, medops_home: Path
) -> None:
    one = _register(registry, exported)
    registry.set_alias(CLASSIFIER, CHAMPION, one)
    two = _register(registry, exported)
    refused = _models("demote", CLASSIFIER, two, "--reason", "r")
    assert refused.exit_code != 0
    assert f"version {two} is not the champion (the champion is version {one})" in refused.output

    registry.set_alias(CLASSIFIER, CHAMPION, two)  # two.previous = one
    _delete_onnx(registry, one)
    refused = _models("demote", CLASSIFIER, "--reason", "r")
    assert refused.exit_code != 0
    assert "previous champion cannot take over" in refused.output, refused.output
    assert registry.get_alias(CLASSIFIER, CHAMPION) == two
    assert _audit(medops_home) == []


def test_models_list_shows_gate_verdicts_evaluation_intervals_and_overrides(
    registry: Registry, exported: Exported
) -> None:
    old = _register(registry, exported, metrics={"best_epoch": 3.0})  # older: no figures
    single = _register(
        registry,
        exported,
        metrics={
            "test_auc": 0.951,
            "test_auc_ci_low": 0.921,
            "test_auc_ci_high": 0.972,
            "test_ece": 0.041,
            "test_ece_ci_low": 0.02,
            "test_ece_ci_high": 0.065,
        },
        tags={"evaluation": "single-split"},
    )
    crossval = _register(
        registry,
        exported,
        metrics={
            "cv_auc_mean": 0.93,
            "cv_auc_std": 0.021,
            "cv_two_stage_dice_patient_mean_mean": 0.812,
            "cv_two_stage_dice_patient_mean_std": 0.03,
            "test_auc": 0.5,  # not the figure a cross-validated version is judged by
        },
        tags={"evaluation": "cross-validated"},
    )
    failing = promotion_gate({"auc": 0.5}, None, minimums={"auc": 0.8})
    passing = promotion_gate({"auc": 0.93}, None, minimums={"auc": 0.8})
    registry.record_gate(CLASSIFIER, single, failing)
    registry.record_gate(CLASSIFIER, crossval, passing, move_champion=False)
    registry.promote(CLASSIFIER, crossval, reason="cv is better", by="ana")

    result = _models("list")

    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  v")}
    assert "gate=fail" in lines[f"v{single}"] and "single-split" in lines[f"v{single}"]
    assert "auc=0.951 [0.92-0.97]" in lines[f"v{single}"]
    assert "ece=0.041 [0.020-0.065]" in lines[f"v{single}"]
    assert "gate=pass" in lines[f"v{crossval}"] and "cross-validated" in lines[f"v{crossval}"]
    assert "auc=0.930±0.021" in lines[f"v{crossval}"]
    assert "two_stage_dice_patient_mean=0.812±0.030" in lines[f"v{crossval}"]
    assert "auc=0.500" not in lines[f"v{crossval}"]
    assert "gate=-" in lines[f"v{old}"] and "no figures" in lines[f"v{old}"]
    assert "override: promote by ana at " in result.output and "cv is better" in result.output

    listed = {v["version"]: v for v in json.loads(_models("list", "--json").stdout)[0]["versions"]}
    assert listed[crossval]["evaluation"] == "cross-validated" and listed[crossval]["gate"] is True
    assert listed[single]["gate"] is False and "minimum" in listed[single]["gate_reasons"]
    assert listed[old]["evaluation"] is None and listed[old]["gate"] is None


def test_the_evaluation_tag_reaches_the_version_and_the_default_card_shows_intervals(
    registry: Registry, exported: Exported, tmp_path: Path
) -> None:
    version = registry.log_and_register(
        CLASSIFIER,
        onnx_path=exported.onnx,
        dataset_version="lgg-test",
        params=PARAMS,
        metrics={"test_auc": 0.95, "test_auc_ci_low": 0.92, "test_auc_ci_high": 0.97},
        git_commit="0123abc",
        tags={"evaluation": "single-split"},
    ).version
    assert registry.version_tags(CLASSIFIER, version)["evaluation"] == "single-split"
    card = registry.download_artifact(CLASSIFIER, version, CARD_PATH, tmp_path).read_text()
    assert "## Metrics (single split, held-out test patients)" in card
    assert "| test_auc | 0.9500 | 0.9200 - 0.9700 |" in card
    assert "bootstrap 95% intervals" in card
    assert "test_auc_ci_low" not in card
    with pytest.raises(InvalidInputError, match="evaluation"):
        registry.log_and_register(
            CLASSIFIER,
            onnx_path=exported.onnx,
            dataset_version="lgg-test",
            params=PARAMS,
            metrics={},
            tags={"evaluation": "cross-validation"},
        )


def test_the_model_card_says_how_figures_were_measured() -> None:
    plain = render_model_card(CLASSIFIER, dataset_version="v", metrics={"auc": 0.9})
    assert "## Metrics (single split, held-out test patients)" in plain
    assert "| auc | 0.9000 |" in plain and "95% interval" not in plain

    cv = render_model_card(
        CLASSIFIER,
        dataset_version="v",
        metrics={"auc": 0.93, "auc_std": 0.02},
        evaluation="cross-validated",
        intervals={"auc": (0.89, 0.97)},
    )
    assert "## Metrics (patient-level cross-validation)" in cv
    assert "cross-validated by patient" in cv
    assert "| auc | 0.9300 | 0.8900 - 0.9700 |" in cv and "| auc_std | 0.0200 |  |" in cv
    with pytest.raises(InvalidInputError, match="evaluation"):
        render_model_card(CLASSIFIER, dataset_version="v", metrics={}, evaluation="holdout")
