"""Readiness means "every model the routing document serves has a loaded version": a model
without a champion answers 503 alone, naming the missing alias, and holds nothing else back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from gateway_harness import GatewayThread, write_tiny_model
from gateway_support import SIZE, make_settings, read_keys
from PIL import Image as PILImage
from tritonclient.utils import InferenceServerException

from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import Registry
from pipelines.brain import CLASSIFIER, SEGMENTER, TYPE_CLASSIFIER
from services.gateway.settings import GatewaySettings

X = np.random.default_rng(7).random((1, 3, SIZE, SIZE), dtype=np.float32)
NO_TYPE_CHAMPION = f"{TYPE_CLASSIFIER} has no 'champion' version in the registry"
NO_SEGMENTER_CHAMPION = f"{SEGMENTER} has no 'champion' version in the registry"


def _register(registry: Registry, name: str, onnx: Path, aliases: tuple[str, ...]) -> str:
    return registry.log_and_register(
        name,
        onnx_path=onnx,
        dataset_version="test",
        params={},
        metrics={"auc": 0.9},
        git_commit="test",
        aliases=aliases,
    ).version


@pytest.fixture
def registry_uri(tmp_path: Path) -> str:
    """What the fast preset leaves: LGG champions; a type classifier the gate kept out
    (registered, alias ``challenger`` only)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    for seed, (name, aliases) in enumerate(
        ((CLASSIFIER, (CHAMPION,)), (SEGMENTER, (CHAMPION,)), (TYPE_CLASSIFIER, (CHALLENGER,)))
    ):
        onnx = write_tiny_model(name, tmp_path / f"{name}.onnx", size=SIZE, seed=seed)
        _register(registry, name, onnx, aliases)
    return uri


def _infer(url: str, model: str, headers: dict[str, str]) -> httpx.Response:
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(X.shape),
                "data": X.ravel().tolist(),
            }
        ]
    }
    return httpx.post(
        f"http://{url}/v2/models/{model}/infer", json=body, headers=headers, timeout=30
    )


def _png() -> bytes:
    import io

    out = io.BytesIO()
    pixels = np.random.default_rng(3).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.integration
def test_a_model_without_a_champion_answers_503_alone_and_the_gateway_is_ready(
    registry_uri: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    # the defaults of `medops serve`: every known model, no MEDOPS_GATEWAY_MODELS
    settings = GatewaySettings(home=home, tracking_uri=registry_uri, poll_seconds=0.2)
    with GatewayThread(settings) as gw:
        client = {"authorization": f"Bearer {read_keys(home)['client']}"}
        r = httpx.get(f"http://{gw.url}/v2/health/ready")
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["ready"] is True
        assert doc["models"][CLASSIFIER] == {"ready": True, "version": "1", "served": True}
        assert doc["models"][SEGMENTER] == {"ready": True, "version": "1", "served": True}
        assert doc["models"][TYPE_CLASSIFIER] == {
            "ready": False,
            "version": None,
            "served": False,
            "reason": NO_TYPE_CHAMPION,
        }

        assert _infer(gw.url, CLASSIFIER, client).status_code == 200
        r = _infer(gw.url, TYPE_CLASSIFIER, client)
        assert r.status_code == 503 and r.json()["error"] == NO_TYPE_CHAMPION
        r = httpx.get(f"http://{gw.url}/v2/models/{TYPE_CLASSIFIER}", headers=client)
        assert r.status_code == 503 and r.json()["error"] == NO_TYPE_CHAMPION
        r = httpx.get(f"http://{gw.url}/v2/models/{TYPE_CLASSIFIER}/ready", headers=client)
        assert r.status_code == 503 and r.json()["ready"] is False

        grpc_client = tgrpc.InferenceServerClient(gw.grpc_url)
        assert grpc_client.is_server_ready()
        inp = tgrpc.InferInput("image", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        with pytest.raises(InferenceServerException) as err:
            grpc_client.infer(TYPE_CLASSIFIER, [inp], headers=client)
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        assert NO_TYPE_CHAMPION in str(err.value.message())

        # the gate's verdict overridden: the champion appears and is served without a restart
        Registry(registry_uri, cache_dir=tmp_path / "cache").set_alias(
            TYPE_CLASSIFIER, CHAMPION, "1"
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = httpx.get(f"http://{gw.url}/v2/health/ready").json()["models"]
            if state[TYPE_CLASSIFIER]["ready"]:
                break
            time.sleep(0.1)
        assert state[TYPE_CLASSIFIER] == {"ready": True, "version": "1", "served": True}
        assert _infer(gw.url, TYPE_CLASSIFIER, client).status_code == 200


@pytest.mark.integration
def test_a_model_the_routing_document_names_holds_readiness_until_its_alias_exists(
    registry_uri: str, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.json"
    routing.write_text(
        json.dumps(
            {
                "models": {
                    TYPE_CLASSIFIER: {
                        "strategy": "single",
                        "variants": [{"name": "champion", "alias": CHAMPION, "weight": 100}],
                    }
                }
            }
        )
    )
    settings = GatewaySettings(
        home=tmp_path / "home",
        tracking_uri=registry_uri,
        poll_seconds=0,
        routing_file=routing,
        auth_enabled=False,
    )
    with GatewayThread(settings) as gw:
        r = httpx.get(f"http://{gw.url}/v2/health/ready")
        assert r.status_code == 503
        doc = r.json()
        assert doc["ready"] is False
        assert doc["models"][TYPE_CLASSIFIER] == {
            "ready": False,
            "version": None,
            "served": True,
            "reason": NO_TYPE_CHAMPION,
        }
        assert doc["models"][CLASSIFIER]["ready"] is True
        assert _infer(gw.url, CLASSIFIER, {}).status_code == 200


@pytest.mark.integration
def test_analyze_answers_503_naming_the_missing_segmenter_only_when_it_needs_it(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    onnx = write_tiny_model(CLASSIFIER, tmp_path / "classifier.onnx", size=SIZE)
    _register(registry, CLASSIFIER, onnx, (CHAMPION,))
    onnx = write_tiny_model(SEGMENTER, tmp_path / "segmenter.onnx", size=SIZE, seed=1)
    _register(registry, SEGMENTER, onnx, (CHALLENGER,))  # kept out by the gate
    settings = GatewaySettings(
        home=tmp_path / "home",
        tracking_uri=uri,
        poll_seconds=0,
        auth_enabled=False,
        prediction_log=False,
    )
    with GatewayThread(settings) as gw:
        doc = httpx.get(f"http://{gw.url}/v2/health/ready").json()
        assert doc["ready"] is True and doc["models"][SEGMENTER]["reason"] == NO_SEGMENTER_CHAMPION
        url = f"http://{gw.url}/v1/analyze"
        files = {"file": ("slice.png", _png(), "image/png")}
        r = httpx.post(url, files=files, params={"segment": "always"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"] == NO_SEGMENTER_CHAMPION
        r = httpx.post(url, files=files, params={"segment": "never"}, timeout=30)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["models"]["classifier"]["version"] == "1"
        assert answer["models"]["segmenter"] is None


def test_with_model_files_a_model_without_a_file_is_not_served_and_says_so(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    files = {CLASSIFIER: tiny_models[CLASSIFIER], SEGMENTER: tiny_models[SEGMENTER]}
    with GatewayThread(make_settings(tmp_path / "home", files, auth_enabled=False)) as gw:
        r = httpx.get(f"http://{gw.url}/v2/health/ready")
        assert r.status_code == 200
        state = r.json()["models"][TYPE_CLASSIFIER]
        assert state["served"] is False and "no ONNX file configured" in state["reason"]
        r = _infer(gw.url, TYPE_CLASSIFIER, {})
        assert r.status_code == 503 and TYPE_CLASSIFIER in r.json()["error"]


def test_an_unreachable_registry_is_not_taken_for_a_missing_champion(tmp_path: Path) -> None:
    import asyncio

    from medops.errors import RegistryUnavailableError
    from services.gateway.dataplane import DataPlane
    from services.gateway.models import ModelManager, RegistrySource
    from services.gateway.routing import Router

    class DownRegistry:
        def get_alias(self, name: str, alias: str) -> str | None:
            raise RegistryUnavailableError(f"registry unreachable reading {alias} of {name}")

    class LiveBackend:
        async def live(self) -> bool:
            return True

    models = ModelManager(RegistrySource(DownRegistry()), LiveBackend(), [CLASSIFIER])  # type: ignore[arg-type]
    plane = DataPlane(LiveBackend(), models, Router(known_models=[CLASSIFIER]))  # type: ignore[arg-type]
    asyncio.run(plane.sync_models())
    ready, states = asyncio.run(plane.readiness())
    assert ready is False
    assert states[CLASSIFIER]["served"] is True
    assert "unreachable" in states[CLASSIFIER]["reason"]
