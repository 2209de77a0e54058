"""``medops export --precision int8``: a registered float32 version quantized (QDQ, calibrated
on training slices only), evaluated on the same test patients, registered as a new version
tagged ``precision=int8`` and gated against its source; served as a canary variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gateway_harness import GatewayThread, write_tiny_model

import pipelines.quantizing as quantizing
from medops.errors import InvalidInputError, NotFoundError
from medops.export import read_model_metadata
from medops.export.quantize import META_PRECISION, quantize_int8
from medops.modelspec import CHALLENGER, CHAMPION, INPUT_NAME, OUTPUT_NAME
from medops.registry import GATE_PATH, Registry
from pipelines import steps
from pipelines.brain import CLASSIFIER, SEGMENTER
from pipelines.local import LGG_DIR
from pipelines.quantizing import Quantized, export_int8

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64


@dataclass
class Setup:
    uri: str
    home: Path
    data_dir: Path
    files: dict[str, Path]
    calibration: dict[str, np.ndarray]
    results: dict[str, Quantized]
    work: Path

    @property
    def registry(self) -> Registry:
        return Registry(self.uri, cache_dir=self.work / "cache")


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path
) -> Any:  # an iterator of Setup; the monkeypatch is module-wide
    work = tmp_path_factory.mktemp("int8")
    home = work / "home"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    registry = Registry(uri, cache_dir=work / "cache")
    files = {}
    for seed, name in enumerate((CLASSIFIER, SEGMENTER)):
        files[name] = write_tiny_model(name, work / f"{name}.onnx", size=SIZE, seed=seed)
        registry.log_and_register(
            name,
            onnx_path=files[name],
            dataset_version="test",
            params={},
            metrics={},
            git_commit="test",
            aliases=(CHAMPION,),
        )
    calibration: dict[str, np.ndarray] = {}

    def spied(source: Path, target: Path, images: np.ndarray) -> Any:
        calibration[read_model_metadata(source)["task"]] = images
        return quantize_int8(source, target, images)

    patch = pytest.MonkeyPatch()
    patch.setattr(quantizing, "quantize_int8", spied)
    results = {
        name: export_int8(
            name,
            CHAMPION,
            data_dir=data_dir,
            home=home,
            tracking_uri=uri,
            preset="tiny",
            work=work / f"{name}-work",
        )
        for name in (CLASSIFIER, SEGMENTER)
    }
    patch.undo()
    yield Setup(uri, home, data_dir, files, calibration, results, work)


def test_both_models_get_an_int8_version_that_keeps_the_contract_and_metadata(
    setup: Setup,
) -> None:
    registry = setup.registry
    for name in (CLASSIFIER, SEGMENTER):
        result = setup.results[name]
        assert (result.source_version, result.version) == ("1", "2")
        assert registry.get_alias(name, CHAMPION) == "1"  # the gate never moves champion here
        assert registry.get_alias(name, CHALLENGER) == "2"
        assert registry.version_tags(name, "2")["precision"] == "int8"
        resolved = registry.resolve(name, "2")
        model = onnx.load(str(resolved.onnx_path))
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        source_props = {p.key: p.value for p in onnx.load(str(setup.files[name])).metadata_props}
        props = {p.key: p.value for p in model.metadata_props}
        assert props == {**source_props, META_PRECISION: "int8"}
        assert read_model_metadata(resolved.onnx_path) == read_model_metadata(setup.files[name])
        # the contract: float32 image in, float32 probabilities out, the batch axis free
        x = np.random.default_rng(1).random((5, 3, SIZE, SIZE), dtype=np.float32)
        fp32 = ort.InferenceSession(str(setup.files[name])).run([OUTPUT_NAME], {INPUT_NAME: x})
        int8 = ort.InferenceSession(str(resolved.onnx_path)).run([OUTPUT_NAME], {INPUT_NAME: x})
        assert int8[0].dtype == np.float32 and int8[0].shape == fp32[0].shape
        assert np.abs(int8[0] - fp32[0]).max() < 0.1
        assert resolved.info.task == read_model_metadata(setup.files[name])["task"]


def test_the_gate_judged_int8_against_its_float32_source_on_the_same_patients(
    setup: Setup,
) -> None:
    for name, metric in ((CLASSIFIER, "auc"), (SEGMENTER, "dice_patient_mean")):
        result = setup.results[name]
        gate = json.loads(
            setup.registry.download_artifact(
                name, "2", GATE_PATH, setup.work / f"gate-{name}"
            ).read_text()
        )
        check = gate["evidence"]["checks"][f"versus:{metric}"]
        assert check["tolerance"] == 0.01
        assert check["champion"] == pytest.approx(result.source_headline[metric])
        assert check["challenger"] == pytest.approx(result.headline[metric])
        # the float32 figures are those of the source re-evaluated on this split
        assert gate["evidence"]["champion_version"] == "1"
        assert gate["evidence"]["precision"] == "int8"
        passed = result.headline[metric] >= result.source_headline[metric] - 0.01
        assert gate["promote"] is passed is result.passed
        assert set(result.headline) == set(result.source_headline)


def test_calibration_reads_training_slices_never_the_test_split(setup: Setup) -> None:
    manifest = steps.ingest_data(str(setup.data_dir / LGG_DIR), str(setup.home))["manifest"]
    splits = str(setup.work / f"{CLASSIFIER}-work" / "splits.json")
    train = steps.load_split(manifest, splits, "train", size=SIZE, home=str(setup.home))
    test = steps.load_split(manifest, splits, "test", size=SIZE, home=str(setup.home))
    for images in setup.calibration.values():
        assert len(images) > 16
        flat = images.reshape(len(images), -1)
        train_rows = {row.tobytes() for row in train.images.reshape(len(train.images), -1)}
        test_rows = {row.tobytes() for row in test.images.reshape(len(test.images), -1)}
        assert all(row.tobytes() in train_rows for row in flat)
        assert not any(row.tobytes() in test_rows for row in flat)
        assert set(train.patient_ids) & set(test.patient_ids) == set()


def test_refused_versions_register_nothing(setup: Setup) -> None:
    registry = setup.registry
    kwargs: dict[str, Any] = {
        "data_dir": setup.data_dir,
        "home": setup.home,
        "tracking_uri": setup.uri,
        "preset": "tiny",
    }
    with pytest.raises(NotFoundError, match="version 99: not found"):
        export_int8(CLASSIFIER, "99", **kwargs)
    with pytest.raises(InvalidInputError, match="already int8"):
        export_int8(CLASSIFIER, "2", **kwargs)
    with pytest.raises(InvalidInputError, match="not one of the brain pipeline's models"):
        export_int8("no-such-model", "1", **kwargs)
    # a version whose run lost its ONNX file
    bare = registry.log_and_register(
        SEGMENTER,
        onnx_path=setup.files[SEGMENTER],
        dataset_version="test",
        params={},
        metrics={},
        git_commit="test",
        aliases=(),
    ).version
    from mlflow.tracking import MlflowClient

    client = MlflowClient(setup.uri)
    run = client.get_run(str(client.get_model_version(SEGMENTER, bare).run_id))
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    for onnx_file in artifacts.rglob("*.onnx"):
        onnx_file.unlink()
    with pytest.raises(NotFoundError, match="no ONNX model"):
        export_int8(SEGMENTER, bare, **kwargs)
    versions = [str(v.version) for v in client.search_model_versions(f"name='{SEGMENTER}'")]
    assert sorted(versions, key=int) == ["1", "2", bare]


def test_the_command_line_names_what_was_refused(setup: Setup) -> None:
    env = {**os.environ, "MEDOPS_HOME": str(setup.home), "MEDOPS_TRACKING_URI": setup.uri}
    proc = subprocess.run(
        [sys.executable, "-m", "medops.cli", "export", "--precision", "int8", CLASSIFIER, "99"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "version 99: not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
def test_the_gateway_serves_the_int8_version_as_a_canary_variant(
    setup: Setup, tmp_path: Path
) -> None:
    from services.gateway.settings import GatewaySettings

    settings = GatewaySettings(home=tmp_path / "gw", tracking_uri=setup.uri, poll_seconds=0)
    x = np.random.default_rng(2).random((2, 3, SIZE, SIZE), dtype=np.float32)
    with GatewayThread(settings) as gw:
        keys = json.loads((settings.home / "credentials.json").read_text())
        admin = {"authorization": f"Bearer {keys['admin']}"}
        client = {"authorization": f"Bearer {keys['client']}"}
        canary = {
            "mode": "gateway",
            "models": {
                CLASSIFIER: {
                    "strategy": "canary",
                    "variants": [
                        {"name": "champion", "alias": "champion", "weight": 90},
                        {"name": "int8", "alias": "challenger", "weight": 10},
                    ],
                }
            },
        }
        r = httpx.put(f"http://{gw.url}/v1/routing", json=canary, headers=admin)
        assert r.status_code == 200, r.text
        body = {
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
        r = httpx.post(
            f"http://{gw.url}/v2/models/{CLASSIFIER}/infer",
            json=body,
            headers={**client, "x-medops-variant": "int8"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-medops-model-version"] == "2"
        int8_file = setup.registry.resolve(CLASSIFIER, "2").onnx_path
        want = ort.InferenceSession(str(int8_file)).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pipeline_int8_quantizes_only_the_champions_the_run_made(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from medops.registry.client import ModelSummary, VersionSummary
    from medops.settings import MedopsSettings
    from pipelines.brain import TYPE_CLASSIFIER
    from pipelines.cli import pipeline
    from pipelines.local import LocalRun

    def version(number: str, aliases: tuple[str, ...], created_at_ms: float) -> VersionSummary:
        return VersionSummary(number, "run", aliases, None, None, {}, int(created_at_ms))

    def fake_run_local(preset: str, **kwargs: Any) -> LocalRun:
        now = time.time() * 1000
        return LocalRun(
            preset=preset,
            seconds=1.0,
            published=[],
            models=[
                ModelSummary(CLASSIFIER, {}, [version("3", (CHAMPION,), now)]),
                ModelSummary(SEGMENTER, {}, [version("2", (CHALLENGER,), now)]),
                ModelSummary(TYPE_CLASSIFIER, {}, [version("1", (CHAMPION,), now - 3.6e6)]),
            ],
        )

    exported: list[tuple[str, str]] = []

    def fake_export(name: str, version: str, **kwargs: Any) -> Quantized:
        exported.append((name, version))
        return Quantized(name, "4", version, True, {"auc": 0.9}, {"auc": 0.91}, [], 256)

    monkeypatch.setattr("pipelines.local.run_local", fake_run_local)
    monkeypatch.setattr(quantizing, "export_int8", fake_export)
    settings = MedopsSettings(home=tmp_path / "home", data_dir=data_dir)
    result = CliRunner().invoke(pipeline, ["run", "--preset", "fast", "--int8"], obj=settings)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert exported == [(CLASSIFIER, "3")], result.output  # not the challenger, nor an older one
    assert f"{SEGMENTER} v2: not champion, so no int8 variant" in result.output
    assert f"{CLASSIFIER} v4 registered (int8, from v3" in result.output
