"""Models come from the MLflow registry's champion alias and are hot-reloaded when it moves;
routing variants load their own versions."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from gateway_harness import GatewayThread, write_tiny_model
from gateway_support import SIZE

from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import Registry
from pipelines.brain import CLASSIFIER, SEGMENTER, TYPE_CLASSIFIER
from services.gateway.settings import GatewaySettings

X = np.random.default_rng(5).random((2, 3, SIZE, SIZE), dtype=np.float32)


def _register(registry: Registry, name: str, onnx: Path, aliases: tuple[str, ...]) -> str:
    version = registry.log_and_register(
        name,
        onnx_path=onnx,
        dataset_version="test",
        params={},
        metrics={"auc": 0.9},
        git_commit="test",
        aliases=aliases,
    ).version
    return str(version)


@pytest.fixture(scope="module")
def registry_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path]]:
    """A real sqlite MLflow registry: every model has a champion; the classifier has a v2."""
    tmp_path = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    files = {}
    for i, name in enumerate((CLASSIFIER, SEGMENTER, TYPE_CLASSIFIER)):
        files[name] = write_tiny_model(name, tmp_path / f"{name}-v1.onnx", size=SIZE, seed=i)
        _register(registry, name, files[name], (CHAMPION,))
    files["v2"] = write_tiny_model(CLASSIFIER, tmp_path / "classifier-v2.onnx", size=SIZE, seed=42)
    assert _register(registry, CLASSIFIER, files["v2"], (CHALLENGER,)) == "2"
    return uri, files


def _infer(url: str, headers: dict[str, str]) -> httpx.Response:
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
        f"http://{url}/v2/models/{CLASSIFIER}/infer", json=body, headers=headers, timeout=30
    )


def _expected(path: Path) -> np.ndarray:
    out: np.ndarray = ort.InferenceSession(str(path)).run(None, {"image": X})[0]
    return out


@pytest.mark.integration
def test_the_champion_is_served_and_a_moved_alias_is_picked_up_without_a_restart(
    registry_setup: tuple[str, dict[str, Path]], tmp_path: Path
) -> None:
    uri, files = registry_setup
    settings = GatewaySettings(
        home=tmp_path / "home", tracking_uri=uri, poll_seconds=0.2, auth_enabled=False
    )
    with GatewayThread(settings) as gw:
        r = _infer(gw.url, {})
        assert r.headers["x-medops-model-version"] == "1"
        np.testing.assert_allclose(
            np.array(r.json()["outputs"][0]["data"]).reshape(2, 2),
            _expected(files[CLASSIFIER]),
            rtol=1e-5,
        )

        registry = Registry(uri, cache_dir=tmp_path / "cache")
        registry.set_alias(CLASSIFIER, CHAMPION, "2")
        deadline = time.monotonic() + 20
        while (
            time.monotonic() < deadline
            and _infer(gw.url, {}).headers["x-medops-model-version"] != "2"
        ):
            time.sleep(0.1)
        r = _infer(gw.url, {})
        assert r.status_code == 200 and r.headers["x-medops-model-version"] == "2"
        np.testing.assert_allclose(
            np.array(r.json()["outputs"][0]["data"]).reshape(2, 2),
            _expected(files["v2"]),
            rtol=1e-5,
        )
        meta = httpx.get(f"http://{gw.url}/v2/models/{CLASSIFIER}").json()
        assert meta["parameters"]["version"] == "2"
        registry.set_alias(CLASSIFIER, CHAMPION, "1")


@pytest.mark.integration
def test_a_routing_change_by_an_admin_loads_the_challenger_and_splits_traffic(
    registry_setup: tuple[str, dict[str, Path]], tmp_path: Path
) -> None:
    from gateway_support import read_keys

    uri, files = registry_setup
    home = tmp_path / "home"
    settings = GatewaySettings(home=home, tracking_uri=uri, poll_seconds=0)
    with GatewayThread(settings) as gw:
        keys = read_keys(home)
        client = {"authorization": f"Bearer {keys['client']}"}
        admin = {"authorization": f"Bearer {keys['admin']}"}
        doc = httpx.get(f"http://{gw.url}/v1/routing", headers=client).json()
        revision = doc["revision"]
        canary = {
            "mode": "gateway",
            "models": {
                CLASSIFIER: {
                    "strategy": "canary",
                    "variants": [
                        {"name": "champion", "alias": "champion", "weight": 50},
                        {"name": "challenger", "alias": "challenger", "weight": 50},
                    ],
                }
            },
        }
        bad = {
            "models": {
                CLASSIFIER: {
                    "strategy": "canary",
                    "variants": [{"name": "x", "alias": "champion", "weight": 30}],
                }
            }
        }
        r = httpx.put(f"http://{gw.url}/v1/routing", json=bad, headers=admin)
        assert r.status_code == 400 and "100" in r.json()["error"]
        r = httpx.put(f"http://{gw.url}/v1/routing", json=canary, headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["revision"] == revision + 1
        seen = {}
        for key in range(40):
            resp = _infer(gw.url, {**client, "x-medops-route-key": f"study-{key}"})
            assert resp.status_code == 200
            seen[resp.headers["x-medops-variant"]] = resp.headers["x-medops-model-version"]
        assert seen == {"champion": "1", "challenger": "2"}
        # Sticky: the same key lands on the same variant every time.
        variants = {
            _infer(gw.url, {**client, "x-medops-route-key": "study-7"}).headers["x-medops-variant"]
            for _ in range(5)
        }
        assert len(variants) == 1
        forced = _infer(gw.url, {**client, "x-medops-variant": "challenger"})
        np.testing.assert_allclose(
            np.array(forced.json()["outputs"][0]["data"]).reshape(2, 2),
            _expected(files["v2"]),
            rtol=1e-5,
        )
        audit = httpx.get(f"http://{gw.url}/v1/routing/audit", headers=admin).json()["entries"]
        assert audit[-1]["revision"] == revision + 1


@pytest.mark.integration
def test_with_triton_a_moved_champion_alias_switches_the_served_triton_version(
    registry_setup: tuple[str, dict[str, Path]], tmp_path: Path
) -> None:
    from gateway_harness import TritonServer

    from medops.export.triton import TritonModel, write_triton_repository

    uri, files = registry_setup
    repo = write_triton_repository(
        [
            TritonModel(name=CLASSIFIER, version=1, onnx_path=files[CLASSIFIER]),
            TritonModel(name=CLASSIFIER, version=2, onnx_path=files["v2"]),
        ],
        tmp_path / "repository",
    )
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    with TritonServer(repo) as triton:
        settings = GatewaySettings(
            home=tmp_path / "home",
            tracking_uri=uri,
            models=[CLASSIFIER],
            backend="triton-http",
            backend_url=triton.http_url,
            poll_seconds=0.2,
            auth_enabled=False,
        )
        with GatewayThread(settings) as gw:
            r = _infer(gw.url, {})
            assert r.headers["x-medops-model-version"] == "1"
            registry.set_alias(CLASSIFIER, CHAMPION, "2")
            try:
                deadline = time.monotonic() + 20
                while (
                    time.monotonic() < deadline
                    and _infer(gw.url, {}).headers["x-medops-model-version"] != "2"
                ):
                    time.sleep(0.1)
                r = _infer(gw.url, {})
            finally:
                registry.set_alias(CLASSIFIER, CHAMPION, "1")
            assert r.headers["x-medops-model-version"] == "2"
            got = np.array(r.json()["outputs"][0]["data"]).reshape(2, 2)
            np.testing.assert_allclose(got, _expected(files["v2"]), rtol=1e-5, atol=1e-6)
