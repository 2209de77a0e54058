"""Publishing the Triton model repository from the registry's aliases."""

from __future__ import annotations

from pathlib import Path

from mlflow_helpers import make_onnx

from medops.export import read_model_config
from medops.modelspec import CHAMPION
from medops.registry import Registry
from pipelines import steps
from pipelines.brain import CLASSIFIER


def _register(registry: Registry, onnx: Path, aliases: tuple[str, ...]) -> str:
    return registry.log_and_register(
        CLASSIFIER,
        onnx_path=onnx,
        dataset_version="v1",
        params={},
        metrics={"auc": 0.9},
        git_commit="abc",
        aliases=aliases,
    ).version


def test_champion_and_challenger_are_published_side_by_side_for_canaries(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri)
    first = _register(registry, make_onnx(tmp_path / "a.onnx", bias=0.0), ("challenger",))
    registry.set_alias(CLASSIFIER, CHAMPION, first)
    second = _register(registry, make_onnx(tmp_path / "b.onnx", bias=1.0), ("challenger",))

    out = tmp_path / "triton-repo"
    published = steps.publish(uri, str(out))
    assert {(p["version"], p["alias"]) for p in published} == {
        (first, "champion"),
        (second, "challenger"),
    }
    folder = out / CLASSIFIER
    assert (folder / first / "model.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    assert (folder / second / "model.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    config = read_model_config(folder / "config.pbtxt")
    assert sorted(config.version_policy.specific.versions) == [int(first), int(second)]


def test_nothing_is_published_when_the_gate_kept_every_model_out(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _register(Registry(uri), make_onnx(tmp_path / "a.onnx"), ("challenger",))
    assert steps.publish(uri, str(tmp_path / "triton-repo")) == []
    assert not (tmp_path / "triton-repo").exists()


def test_a_served_challenger_of_another_input_size_gets_a_drift_reference_the_gate_refused(
    tmp_path: Path, lgg_dir: Path
) -> None:
    from medops.data import Splits, ingest
    from medops.monitoring import load_reference
    from pipelines.presets import get_preset

    home = tmp_path / "home"
    manifest = ingest(lgg_dir, home)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri)
    versions = {}
    for size, aliases in ((32, (CHAMPION,)), (48, ("challenger",))):
        versions[size] = registry.log_and_register(
            CLASSIFIER,
            onnx_path=make_onnx(tmp_path / f"m{size}.onnx", size=size),
            dataset_version=manifest.version,
            params={"seed": 0, "pipeline_preset": "tiny"},
            metrics={"auc": 0.9},
            git_commit="abc",
            tags={"gate.promote": "false"},
            aliases=aliases,
        ).version

    published = steps.publish(uri, str(home / "triton-repo"))
    # Triton gets the champion alone (the sizes differ), yet both versions can be served
    assert [(p["version"], p["alias"]) for p in published] == [(versions[32], CHAMPION)]
    steps.split_data(
        str(manifest.path),
        str(tmp_path / "splits.json"),
        max_patients=get_preset("tiny").max_patients,
    )
    train = Splits.load(tmp_path / "splits.json").sample_ids(manifest, "train")
    for version in versions.values():
        reference = load_reference(CLASSIFIER, version, home=home)
        assert len(reference.frame) == len(train)
        assert "prob_tumour" in reference.frame.columns
        assert reference.calibration is not None
        assert reference.calibration.source == "training and validation patients"
