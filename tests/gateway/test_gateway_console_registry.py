"""The operator console's registry view: versions, aliases, gate verdicts and figures from a real
SQLite MLflow registry, through ``GET /v1/models/registry``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from gateway_harness import GatewayThread, write_tiny_model
from gateway_support import SIZE

from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import Registry
from medops.registry.gate import GateDecision
from pipelines.brain import CLASSIFIER, SEGMENTER
from services.gateway.settings import GatewaySettings


@pytest.mark.integration
def test_the_registry_view_names_aliases_gate_verdicts_and_figures(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    for seed, (name, aliases, auc) in enumerate(
        [
            (CLASSIFIER, (CHAMPION,), 0.91),
            (SEGMENTER, (CHAMPION,), 0.5),
            (CLASSIFIER, (CHALLENGER,), 0.87),
        ]
    ):
        registry.log_and_register(
            name,
            onnx_path=write_tiny_model(
                name, tmp_path / f"{name}-{seed}.onnx", size=SIZE, seed=seed
            ),
            dataset_version="test",
            params={},
            metrics={"auc": auc},
            git_commit="test",
            aliases=aliases,
        )
    refused = GateDecision(False, ["auc 0.870 below the champion's 0.910"])
    assert registry.record_gate(CLASSIFIER, "2", refused) is False

    settings = GatewaySettings(
        home=tmp_path / "home",
        tracking_uri=uri,
        models=[CLASSIFIER, SEGMENTER],
        poll_seconds=0,
    )
    with GatewayThread(settings) as gw:
        keys = json.loads((tmp_path / "home" / "credentials.json").read_text())
        r = httpx.get(
            f"http://{gw.url}/v1/models/registry",
            headers={"authorization": f"Bearer {keys['client']}"},
            timeout=30,
        )
    assert r.status_code == 200, r.text
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {CLASSIFIER, SEGMENTER}
    classifier = models[CLASSIFIER]
    assert classifier["aliases"] == {CHAMPION: "1", CHALLENGER: "2"}
    newest, oldest = classifier["versions"]
    assert newest["version"] == "2" and newest["aliases"] == [CHALLENGER]
    assert newest["gate"] is False and "below the champion" in newest["gate_reasons"]
    assert newest["metrics"]["auc"] == 0.87
    assert oldest["version"] == "1" and oldest["aliases"] == [CHAMPION] and oldest["gate"] is None
