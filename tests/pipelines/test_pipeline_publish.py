"""Publishing the Triton model repository from the registry's aliases."""

from __future__ import annotations

from pathlib import Path

from mlflow_helpers import make_onnx

from medops.export import read_model_config
from medops.modelspec import CHAMPION, CLASSIFIER
from medops.registry import Registry
from pipelines import steps


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
