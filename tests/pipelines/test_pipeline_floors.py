"""A per-run gate floor (``--floor TASK.METRIC=VALUE``): parsed and refused before anything
trains, carried to the gate step, recorded in the gate's evidence; and a preset that asks for
data that is not there is refused by name before any training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from medops.errors import DatasetError, InvalidInputError
from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import GATE_PATH, Registry
from medops.settings import MedopsSettings
from pipelines import demo as demo_module
from pipelines import steps
from pipelines.brain import CLASSIFIER, SEGMENTER
from pipelines.cli import pipeline
from pipelines.local import FOURCLASS_DIR, LGG_DIR, LocalRun, run_local
from pipelines.presets import check_floors, get_preset, parse_floors
from pipelines.report import read_gate

ABOVE_REACH = {"segmenter": {"dice_patient_mean": 0.99}}


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gateway_harness import write_tiny_model

    folder = tmp_path_factory.mktemp("onnx")
    return {
        CLASSIFIER: write_tiny_model(CLASSIFIER, folder / "classifier.onnx", size=64),
        SEGMENTER: write_tiny_model(SEGMENTER, folder / "segmenter.onnx", size=64, seed=1),
    }


def _candidate(
    registry: Registry, task: str, onnx: Path, headline: dict[str, float], folder: Path
) -> tuple[str, str]:
    """A registered version (alias challenger) and its evaluation file, as the pipeline
    leaves them before the gate step; returns (version, evaluation path)."""
    name = steps.TASK_MODEL[task]
    version = registry.log_and_register(
        name,
        onnx_path=onnx,
        dataset_version="test",
        params={},
        metrics={f"test_{k}": v for k, v in headline.items()},
        git_commit="test",
    ).version
    evaluation = folder / f"{task}-v{version}-evaluation.json"
    evaluation.write_text(json.dumps({"headline": headline, "champion": None}))
    return version, str(evaluation)


def _gate_document(registry: Registry, name: str, version: str, tmp: Path) -> dict[str, Any]:
    path = registry.download_artifact(name, version, GATE_PATH, tmp / f"dl-{name}-{version}")
    return json.loads(path.read_text())


def _data_without_fourclass(lgg_dir: Path, tmp_path: Path) -> Path:
    """A data dir holding the real LGG data and no 4-class folder."""
    data = tmp_path / "data"
    data.mkdir()
    (data / LGG_DIR).symlink_to(lgg_dir, target_is_directory=True)
    return data


# ------------------------------------------------------------------------------ parsing


def test_floors_parse_per_task_and_bad_items_are_named() -> None:
    assert parse_floors(
        ["segmenter.dice_patient_mean=0.99", "classifier.auc=0.5", "classifier.ece=1e-2"]
    ) == {"segmenter": {"dice_patient_mean": 0.99}, "classifier": {"auc": 0.5, "ece": 0.01}}
    assert parse_floors(["type-classifier.accuracy = 0.7"]) == {
        "type-classifier": {"accuracy": 0.7}
    }
    bad = {
        "segmenter.dice_patient_mean": "TASK.METRIC=VALUE",
        "dice_patient_mean=0.9": "TASK.METRIC=VALUE",
        "detector.auc=0.9": "'detector' is not one of classifier, segmenter, type-classifier",
        "segmenter.=0.9": "not a metric name",
        "segmenter.dice=high": "'high' is not a number",
        "segmenter.dice=nan": "not a finite number",
        "segmenter.dice=": "is not a number",
    }
    for item, message in bad.items():
        with pytest.raises(InvalidInputError, match=message):
            parse_floors([item])
    with pytest.raises(InvalidInputError, match="given twice"):
        parse_floors(["classifier.auc=0.9", "classifier.auc=0.8"])
    # as they arrive through the pipeline parameter (JSON)
    assert check_floors({"segmenter": {"dice_patient_mean": 1}}) == {
        "segmenter": {"dice_patient_mean": 1.0}
    }
    with pytest.raises(InvalidInputError, match=r"floors\.segmenter\.dice: True"):
        check_floors({"segmenter": {"dice": True}})
    with pytest.raises(InvalidInputError, match="expected a mapping"):
        check_floors({"segmenter": 0.9})


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("segmenter.dice_patient_mean", "expected TASK.METRIC=VALUE"),
        ("detector.auc=0.9", "task 'detector' is not one of"),
        ("segmenter.dice_patient_mean=high", "'high' is not a number"),
    ],
)
def test_the_cli_refuses_a_bad_floor_before_anything_runs(
    item: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the pipeline started")

    monkeypatch.setattr("pipelines.local.run_local", boom)
    monkeypatch.setattr(demo_module, "run_local", boom)
    home = tmp_path / "home"
    settings = MedopsSettings(home=home, data_dir=tmp_path / "no-data")
    for command, args in ((pipeline, ["run"]), (demo_module.demo, [])):
        result = CliRunner().invoke(
            command, [*args, "--preset", "tiny", "--floor", item], obj=settings
        )
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--floor'" in result.output
        assert message in result.output
    assert not home.exists()


def test_the_cli_passes_the_floors_to_the_run_and_says_which_it_overrides(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_run_local(preset: str, **kwargs: Any) -> LocalRun:
        seen.update(kwargs, preset=preset)
        return LocalRun(preset=preset, seconds=1.0, published=[])

    monkeypatch.setattr("pipelines.local.run_local", fake_run_local)
    settings = MedopsSettings(home=tmp_path / "home", data_dir=data_dir)
    result = CliRunner().invoke(
        pipeline,
        [
            "run",
            "--preset",
            "fast",
            "--floor",
            "segmenter.dice_patient_mean=0.99",
            "--floor",
            "classifier.specificity=0.5",
        ],
        obj=settings,
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert seen["floors"] == {
        "segmenter": {"dice_patient_mean": 0.99},
        "classifier": {"specificity": 0.5},
    }
    assert "gate floor for this run: segmenter.dice_patient_mean 0.99 (preset fast: 0.55)" in (
        result.output
    )
    assert "gate floor for this run: classifier.specificity 0.5 (preset fast: none)" in (
        result.output
    )


def test_the_compiled_pipeline_hands_the_floors_parameter_to_every_gate(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(pipeline, ["compile", "--output", str(out)])
    assert result.exit_code == 0, result.output
    spec, _ = list(yaml.safe_load_all(out.read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["floors"]["parameterType"] == "STRUCT"
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    gates = [t for dag in dags for n, t in dag["tasks"].items() if n.startswith("gate")]
    assert len(gates) == 3  # classifier, segmenter, type classifier
    for task in gates:
        source = task["inputs"]["parameters"]["floors"]["componentInputParameter"]
        assert source in {"floors", "pipelinechannel--floors"}


# ------------------------------------------------------------------------------ the gate


def test_a_floor_above_reach_keeps_the_model_out_and_the_evidence_shows_that_floor(
    tmp_path: Path, onnx_files: dict[str, Path]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    headline = {"dice_patient_mean": 0.42}
    assert get_preset("tiny").minimums["segmenter"] == {"dice_patient_mean": 0.0}

    kept, evaluation = _candidate(registry, "segmenter", onnx_files[SEGMENTER], headline, tmp_path)
    assert steps.gate("segmenter", "tiny", uri, kept, evaluation, floors=ABOVE_REACH) is False
    assert registry.get_alias(SEGMENTER, CHAMPION) is None
    assert registry.get_alias(SEGMENTER, CHALLENGER) == kept
    recorded = _gate_document(registry, SEGMENTER, kept, tmp_path)
    assert recorded["promote"] is False
    evidence = recorded["evidence"]
    assert evidence["minimums"] == {"dice_patient_mean": 0.99}
    assert evidence["floor_overrides"] == {"dice_patient_mean": 0.99}
    assert evidence["checks"]["minimum:dice_patient_mean"] == {
        "value": 0.42,
        "limit": 0.99,
        "passed": False,
    }
    assert read_gate(registry, SEGMENTER, kept).sentence() == (
        "kept out: dice_patient_mean = 0.420, below the floor 0.99 set for this run"
    )

    # the same figures pass the preset's own floor, and a floor for another task is not applied
    passed, evaluation = _candidate(
        registry, "segmenter", onnx_files[SEGMENTER], headline, tmp_path
    )
    other = {"classifier": {"auc": 0.99}}
    assert steps.gate("segmenter", "tiny", uri, passed, evaluation, floors=other) is True
    assert registry.get_alias(SEGMENTER, CHAMPION) == passed
    evidence = _gate_document(registry, SEGMENTER, passed, tmp_path)["evidence"]
    assert evidence["minimums"] == {"dice_patient_mean": 0.0}
    assert evidence["floor_overrides"] == {}

    with pytest.raises(InvalidInputError, match="not one of"):
        steps.gate("segmenter", "tiny", uri, passed, evaluation, floors={"seg": {"dice": 1}})


def test_the_demo_carries_its_floors_to_every_gate_and_names_what_it_kept_out(
    data_dir: Path, tmp_path: Path, onnx_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    headlines = {"classifier": {"auc": 0.9}, "segmenter": {"dice_patient_mean": 0.42}}

    def fake_run_local(preset: str, *, tracking_uri: str, home: Path, **kwargs: Any) -> LocalRun:
        """Registers and gates each model through ``steps.gate`` with the run's floors."""
        registry = Registry(tracking_uri)
        for task, headline in headlines.items():
            name = steps.TASK_MODEL[task]
            version, evaluation = _candidate(registry, task, onnx_files[name], headline, tmp_path)
            steps.gate(task, preset, tracking_uri, version, evaluation, floors=kwargs["floors"])
        log_path = home / "logs" / "pipeline.log"
        log_path.write_text("kfp output\n")
        return LocalRun(preset=preset, seconds=1.0, published=[], log_path=log_path)

    monkeypatch.setattr(demo_module, "run_local", fake_run_local)
    settings = MedopsSettings(home=tmp_path / "home", data_dir=data_dir)
    floors = ["--floor", "segmenter.dice_patient_mean=0.99", "--floor", "classifier.auc=0.95"]
    result = CliRunner().invoke(demo_module.demo, ["--preset", "tiny", *floors], obj=settings)
    out = result.output
    assert result.exit_code == 0, out + repr(result.exception)
    assert "gate floor for this run: segmenter.dice_patient_mean 0.99 (preset tiny: 0)" in out
    assert f"{CLASSIFIER} v1 [challenger]" in out
    assert "promotion gate: kept out: auc = 0.900, below the floor 0.95 set for this run" in out
    assert (
        "promotion gate: kept out: dice_patient_mean = 0.420, below the floor 0.99 set for this "
        "run" in out
    )
    assert "skipped: 3-6. Serving, challenger, canary, monitoring" in out


# ------------------------------------------------------------------- data that is not there


def test_a_preset_asking_for_missing_data_is_refused_by_setting_and_path_before_training(
    lgg_dir: Path, tmp_path: Path
) -> None:
    data = _data_without_fourclass(lgg_dir, tmp_path)
    home = tmp_path / "home"
    uri = f"sqlite:///{home / 'mlflow.db'}"
    fourclass = str((data / FOURCLASS_DIR).resolve())
    with pytest.raises(DatasetError, match="--type-classifier needs the 4-class data") as exc:
        run_local("tiny", data_dir=data, home=home, tracking_uri=uri, type_classifier=True)
    assert fourclass in str(exc.value)
    with pytest.raises(DatasetError, match="preset full needs the 4-class data") as exc:
        run_local("full", data_dir=data, home=home, tracking_uri=uri)
    assert fourclass in str(exc.value)
    # the fast preset pretrains its classifier on the 4-class data
    with pytest.raises(DatasetError, match=r"preset fast .*pretrained on tumour types") as exc:
        run_local("fast", data_dir=data, home=home, tracking_uri=uri)
    assert fourclass in str(exc.value)
    missing = tmp_path / "elsewhere"
    with pytest.raises(DatasetError, match=r"data dir \(MEDOPS_DATA_DIR or --data-dir\)") as exc:
        run_local("tiny", data_dir=missing, home=home, tracking_uri=uri)
    assert str((missing / LGG_DIR).resolve()) + " not found" in str(exc.value)
    # a bad floor is refused as early
    with pytest.raises(InvalidInputError, match="not a finite number"):
        run_local(
            "tiny",
            data_dir=data,
            home=home,
            tracking_uri=uri,
            floors={"classifier": {"auc": "inf"}},
        )
    assert not home.exists()


def test_an_empty_fourclass_folder_is_refused_in_preflight(lgg_dir: Path, tmp_path: Path) -> None:
    data = _data_without_fourclass(lgg_dir, tmp_path)
    (data / FOURCLASS_DIR).mkdir(parents=True)
    home = tmp_path / "home"
    with pytest.raises(DatasetError, match="empty folder"):
        run_local(
            "tiny",
            data_dir=data,
            home=home,
            tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
            type_classifier=True,
        )
    assert not (home / "pipeline-runs").exists()


def test_the_cli_and_the_demo_refuse_missing_data_before_cross_validation_or_ingest(
    lgg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr("pipelines.crossval.cross_validate", boom)
    monkeypatch.setattr(demo_module, "run_local", boom)
    data = _data_without_fourclass(lgg_dir, tmp_path)
    home = tmp_path / "home"
    settings = MedopsSettings(home=home, data_dir=data)
    result = CliRunner().invoke(
        pipeline, ["run", "--preset", "tiny", "--type-classifier", "--folds", "3"], obj=settings
    )
    assert isinstance(result.exception, DatasetError), result.output
    assert "--type-classifier needs the 4-class data" in str(result.exception)
    result = CliRunner().invoke(demo_module.demo, ["--preset", "full"], obj=settings)
    assert isinstance(result.exception, DatasetError), result.output
    assert "preset full needs the 4-class data" in str(result.exception)
    assert not home.exists()
