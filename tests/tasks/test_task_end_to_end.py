"""A task nobody wrote code for: a temporary task file and a small images/masks dataset are
trained by the tiny pipeline, registered, gated, published, served by the gateway from the
registry and analysed from a PNG upload, without any module knowing the task; then a model
trained elsewhere is imported (contract checked, judged on the same test samples, gated
against the champion) and routed as the challenger on a canary."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_harness import GatewayThread, write_tiny_model
from PIL import Image

from medops.errors import InvalidInputError
from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import CARD_PATH, GATE_PATH, Registry
from medops.registry.cli import figures
from pipelines.importing import import_model
from pipelines.local import LocalRun, run_tasks_local
from services.gateway.settings import GatewaySettings

NAME = "spot-segmenter"
TASK = f"""
name: {NAME}
description: Bright spots in synthetic frames.
models: [{NAME}]
modality: XC
data: {{path: spots, layout: image-mask-folders}}
label: {{kind: binary-segmentation, classes: [spot], source: mask, mask_threshold: 128}}
groups: {{by: image}}
preprocessing: {{size: 32, channels: 3}}
model: {{family: resunet, channels: [8, 16, 32], num_res_units: 1}}
presets:
  tiny:
    train: {{epochs: 1}}
    floors: {{dice_patient_mean: 0.0}}
    tolerance: {{dice_patient_mean: 0.01}}
metrics: [dice_patient_mean, iou_patient_mean, dice_slice_mean]
intervals: [dice_patient_mean, dice_slice_mean]
decision: {{rule: pixel-threshold, threshold: 0.5, min_component_px: validation}}
"""


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _two_channel_model(path: Path) -> Path:
    """Two output channels and a fixed batch of one: not what a one-class task serves."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Sigmoid()).eval()
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"probabilities": {0: "batch"}},
        dynamo=False,
    )
    return path


def _spots(root: Path, n: int = 14) -> Path:
    """Frames of various sizes with one bright square each, and its mask (0/255)."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        h, w = int(rng.integers(48, 80)), int(rng.integers(48, 80))
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y, x = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
        image[y : y + 16, x : x + 16] = 230
        mask[y : y + 16, x : x + 16] = 255
        (root / "images" / f"frame{i:02d}.png").write_bytes(_png(image))
        (root / "masks" / f"frame{i:02d}.png").write_bytes(_png(mask))
    return root


@dataclass(frozen=True)
class Trained:
    root: Path
    data_root: Path
    task_file: Path
    home: Path
    uri: str
    run: LocalRun


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("task-end-to-end")
    data_root = root / "data"
    _spots(data_root / "spots")
    task_file = root / f"{NAME}.yaml"
    task_file.write_text(TASK)
    home, uri = root / "home", f"sqlite:///{root / 'mlflow.db'}"
    run = run_tasks_local([task_file], "tiny", data_dir=data_root, home=home, tracking_uri=uri)
    return Trained(root, data_root, task_file, home, uri, run)


def _gateway(trained: Trained) -> GatewayThread:
    return GatewayThread(
        GatewaySettings(
            home=trained.home,
            tracking_uri=trained.uri,
            models=[NAME],
            default_chain=None,
            poll_seconds=0,
            onnx_threads=1,
            deid_key="test-deid-key",
        )
    )


def _keys(trained: Trained) -> dict[str, str]:
    keys: dict[str, str] = json.loads((trained.home / "credentials.json").read_text())
    return {role: f"Bearer {key}" for role, key in keys.items()}


@pytest.mark.integration
def test_a_task_file_alone_is_trained_registered_served_and_analysed(trained: Trained) -> None:
    assert trained.run.published == [{"name": NAME, "version": "1", "alias": CHAMPION}]
    registry = Registry(trained.uri, cache_dir=trained.root / "cache")
    champion = registry.resolve(NAME, CHAMPION)
    assert champion.info.task == "segmentation" and champion.info.classes == ("spot",)
    assert champion.info.input_size == 32
    # an ungated segmenter: no gate threshold stored, the component size chosen on validation
    assert champion.info.gate_threshold is None
    summary = next(m for m in registry.list_models() if m.name == NAME).versions[0]
    assert summary.gate is True and summary.evaluation == "single-split"
    metrics = summary.metrics
    for metric in ("dice_patient_mean", "iou_patient_mean", "dice_slice_mean"):
        assert 0.0 <= metrics[f"test_{metric}"] <= 1.0
    low, high = metrics["test_dice_slice_mean_ci_low"], metrics["test_dice_slice_mean_ci_high"]
    assert low <= metrics["test_dice_slice_mean"] <= high
    # the task's own headline metrics, in its order, with their intervals
    assert summary.headline == ("dice_patient_mean", "iou_patient_mean", "dice_slice_mean")
    shown = figures(summary.metrics, summary.evaluation, summary.headline)
    assert [f.split("=")[0] for f in shown] == list(summary.headline)
    assert "[" in shown[2], "dice_slice_mean carries its interval"
    card = registry.download_artifact(NAME, "1", CARD_PATH, trained.root / "card")
    assert NAME in card.read_text() and "Research use only." in card.read_text()
    assert (trained.home / "triton-repo" / NAME / "1" / "model.onnx").is_file()

    with _gateway(trained) as gw:
        keys = _keys(trained)
        frame = (trained.data_root / "spots" / "images" / "frame03.png").read_bytes()
        r = httpx.post(
            f"http://{gw.url}/v1/analyze",
            params={"model": NAME},
            files={"file": ("frame.png", frame, "image/png")},
            headers={"authorization": keys["client"]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["models"]["segmenter"] | {"threshold": None} == {
            "name": NAME,
            "version": "1",
            "variant": "champion",
            "threshold": None,
        }
        assert body["models"]["classifier"] is None and body["chain"] is None
        assert len(body["slices"]) == 1 and body["mask"]["encoding"] == "coco-rle"
        listed = httpx.get(
            f"http://{gw.url}/v2/models", headers={"authorization": keys["client"]}, timeout=30
        )
        assert [m["name"] for m in listed.json()["models"]] == [NAME]


@pytest.mark.integration
def test_a_model_that_breaks_the_contract_is_refused_and_nothing_registered(
    trained: Trained,
) -> None:
    wrong = _two_channel_model(trained.root / "two-channel.onnx")
    before = len(Registry(trained.uri).list_models()[0].versions)
    with pytest.raises(InvalidInputError) as refused:
        import_model(
            NAME,
            wrong,
            trained.task_file,
            data_dir=trained.data_root,
            home=trained.home,
            tracking_uri=trained.uri,
            preset="tiny",
        )
    message = str(refused.value)
    assert "output probabilities: shape ['batch', 2, 32, 32]" in message
    assert "needs (batch, 1, S, S)" in message
    assert "batch dimension fixed at 1" in message
    with pytest.raises(InvalidInputError, match="not a model of task spot-segmenter"):
        import_model(
            "other-name",
            wrong,
            trained.task_file,
            data_dir=trained.data_root,
            home=trained.home,
            tracking_uri=trained.uri,
        )
    assert len(Registry(trained.uri).list_models()[0].versions) == before


@pytest.mark.integration
def test_an_outside_model_is_imported_gated_against_the_champion_and_canaried(
    trained: Trained,
) -> None:
    outside = write_tiny_model(
        NAME, trained.root / "outside.onnx", size=32, seed=5, task="segmentation", classes=["spot"]
    )
    result = import_model(
        NAME,
        outside,
        trained.task_file,
        data_dir=trained.data_root,
        home=trained.home,
        tracking_uri=trained.uri,
        preset="tiny",
    )
    registry = Registry(trained.uri, cache_dir=trained.root / "cache-import")
    assert result.version == "2" and not result.promoted
    # judged on the champion's own test samples, which the champion was re-evaluated on
    assert result.champion is not None and result.champion["version"] == "1"
    assert registry.get_alias(NAME, CHAMPION) == "1"
    assert registry.get_alias(NAME, CHALLENGER) == "2"
    tags = registry.version_tags(NAME, "2")
    assert tags["gate.promote"] in ("true", "false")
    gate = json.loads(
        registry.download_artifact(NAME, "2", GATE_PATH, trained.root / "g").read_text()
    )
    assert gate["evidence"]["champion_version"] == "1"
    imported = registry.resolve(NAME, "2").info
    assert imported.classes == ("spot",) and imported.input_size == 32

    with _gateway(trained) as gw:
        base, keys = f"http://{gw.url}", _keys(trained)
        canary = {
            "strategy": "canary",
            "variants": [
                {"name": "champion", "alias": "champion", "weight": 50},
                {"name": "canary", "alias": "challenger", "weight": 50},
            ],
        }
        put = httpx.put(
            f"{base}/v1/routing",
            json={"models": {NAME: canary}},
            headers={"authorization": keys["admin"]},
            timeout=30,
        )
        assert put.status_code == 200, put.text
        frame = (trained.data_root / "spots" / "images" / "frame05.png").read_bytes()
        versions = set()
        for key in range(30):
            r = httpx.post(
                f"{base}/v1/analyze?model={NAME}",
                content=frame,
                headers={
                    "authorization": keys["client"],
                    "content-type": "image/png",
                    "x-medops-route-key": f"study-{key}",
                },
                timeout=60,
            )
            assert r.status_code == 200, r.text
            versions.add(r.json()["models"]["segmenter"]["version"])
        assert versions == {"1", "2"}
