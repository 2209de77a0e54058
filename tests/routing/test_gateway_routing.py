"""Routing through the real gateway: the REST routing API, the variant headers, a canary on a
backend made to fail rolled back, and a healthy canary promoted with the alias moved in MLflow.

The gateway runs in-process (ASGI client) with the in-process ONNX Runtime backend and a real
MLflow registry (SQLite in a temporary folder) holding small real ONNX models.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from routing_support import SIZE, tiny_classifier

from medops import modelspec
from medops.registry import Registry, promotion_gate
from pipelines.brain import CLASSIFIER
from services.gateway.app import build_gateway
from services.gateway.settings import GatewaySettings

INFER = f"/v2/models/{CLASSIFIER}/infer"


@dataclass
class Running:
    client: httpx.AsyncClient
    registry: Registry
    gateway: Any
    admin: dict[str, str]
    user: dict[str, str]


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real MLflow registry built once: version 1 ``champion``, 2 ``challenger`` (healthy)
    and 3 ``broken`` (loads, fails every inference). Tests work on copies of its database."""
    root = tmp_path_factory.mktemp("registry-template")
    registry = Registry(f"sqlite:///{root / 'mlflow.db'}", cache_dir=root / "cache")
    for bias, alias, failing in (
        (0.0, "champion", False),
        (0.5, "challenger", False),
        (0.5, "broken", True),
    ):
        registry.log_and_register(
            CLASSIFIER,
            onnx_path=tiny_classifier(root / f"{alias}.onnx", bias=bias, failing=failing),
            dataset_version="routing-test",
            params={},
            metrics={},
            aliases=(alias,),
        )
    return root


@asynccontextmanager
async def running_gateway(tmp_path: Path, template: Path) -> AsyncIterator[Running]:
    """The gateway on a private copy of the template registry (artifacts stay shared)."""
    shutil.copy(template / "mlflow.db", tmp_path / "mlflow.db")
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", cache_dir=tmp_path / "cache")
    settings = GatewaySettings(
        home=tmp_path / "home",
        tracking_uri=registry.tracking_uri,
        models=[CLASSIFIER],
        backend="onnx",
        onnx_threads=1,
        grpc_port=None,
        poll_seconds=0,
        routing_audit_file=tmp_path / "audit.jsonl",
    )
    gateway = build_gateway(settings)
    await gateway.start()
    keys = json.loads(settings.credentials_path.read_text(encoding="utf-8"))
    transport = httpx.ASGITransport(app=gateway.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Running(
                client=client,
                registry=registry,
                gateway=gateway,
                admin={"authorization": f"Bearer {keys['admin']}"},
                user={"authorization": f"Bearer {keys['client']}"},
            )
    finally:
        await gateway.stop()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def infer_body() -> dict[str, Any]:
    data = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    return {
        "inputs": [
            {
                "name": modelspec.INPUT_NAME,
                "shape": list(data.shape),
                "datatype": "FP32",
                "data": data.ravel().tolist(),
            }
        ]
    }


def progressive(
    steps: list[int], interval_s: float, challenger_alias: str = "challenger"
) -> dict[str, Any]:
    return {
        "mode": "gateway",
        "models": {
            CLASSIFIER: {
                "strategy": "canary",
                "variants": [
                    {"name": "champion", "alias": "champion", "weight": 100},
                    {"name": "challenger", "alias": challenger_alias, "weight": 0},
                ],
                "progressive": {
                    "variant": "challenger",
                    "steps": steps,
                    "intervalSeconds": interval_s,
                    "minRequests": 5,
                    "maxErrorRate": 0.05,
                    "maxLatencySeconds": 5.0,
                },
            }
        },
    }


def test_routing_api_serves_validates_and_audits_the_document(
    tmp_path: Path, registry_template: Path
) -> None:
    async def scenario() -> None:
        async with running_gateway(tmp_path, registry_template) as gw:
            got = await gw.client.get("/v1/routing", headers=gw.user)
            assert got.status_code == 200
            before = got.json()
            assert before["revision"] >= 1 and before["mode"] == "gateway"

            doc = progressive([50, 100], 60)["models"][CLASSIFIER]
            doc.pop("progressive")
            doc["variants"][0]["weight"], doc["variants"][1]["weight"] = 80, 20
            body = {"mode": "gateway", "models": {CLASSIFIER: doc}}
            assert (await gw.client.put("/v1/routing", json=body)).status_code == 401
            assert (
                await gw.client.put("/v1/routing", json=body, headers=gw.user)
            ).status_code == 403

            bad = json.loads(json.dumps(body))
            bad["models"][CLASSIFIER]["variants"][1]["weight"] = 30
            refused = await gw.client.put("/v1/routing", json=bad, headers=gw.admin)
            assert refused.status_code == 400
            assert "weights must sum to 100, got 110" in refused.text
            assert (await gw.client.get("/v1/routing", headers=gw.user)).json() == before

            unknown = {"models": {"brain-tumour": doc}}
            refused = await gw.client.put("/v1/routing", json=unknown, headers=gw.admin)
            assert refused.status_code == 400 and "unknown model" in refused.text

            accepted = await gw.client.put("/v1/routing", json=body, headers=gw.admin)
            assert accepted.status_code == 200
            assert accepted.json()["revision"] == before["revision"] + 1
            served = (await gw.client.get("/v1/routing", headers=gw.user)).json()
            weights = [v["weight"] for v in served["models"][CLASSIFIER]["variants"]]
            assert weights == [80, 20]

            trail = await gw.client.get("/v1/routing/audit", headers=gw.admin)
            entries = trail.json()["entries"]
            assert entries[-1]["actor"] == "admin" and entries[-1]["action"] == "replace"
            assert entries[-1]["changes"][0]["weights"] == {"challenger": 20, "champion": 80}

    run(scenario)


def test_answers_name_their_variant_and_version_and_honour_the_routing_headers(
    tmp_path: Path, registry_template: Path
) -> None:
    async def scenario() -> None:
        async with running_gateway(tmp_path, registry_template) as gw:
            doc = progressive([50], 60)
            doc["models"][CLASSIFIER]["strategy"] = "ab"
            del doc["models"][CLASSIFIER]["progressive"]
            for v in doc["models"][CLASSIFIER]["variants"]:
                v["weight"] = 50
            assert (await gw.client.put("/v1/routing", json=doc, headers=gw.admin)).is_success
            body = infer_body()

            forced = await gw.client.post(
                INFER, json=body, headers={**gw.user, "x-medops-variant": "challenger"}
            )
            assert forced.status_code == 200, forced.text
            assert forced.headers["x-medops-variant"] == "challenger"
            assert forced.headers["x-medops-model-version"] == "2"

            for study in ("study-a", "study-b", "study-c", "study-d"):
                answers = set()
                for _ in range(5):
                    r = await gw.client.post(
                        INFER, json=body, headers={**gw.user, "x-medops-route-key": study}
                    )
                    assert r.status_code == 200
                    answers.add(
                        (r.headers["x-medops-variant"], r.headers["x-medops-model-version"])
                    )
                assert len(answers) == 1, f"{study} moved between variants: {answers}"
                assert answers <= {("champion", "1"), ("challenger", "2")}

            wrong = await gw.client.post(
                INFER, json=body, headers={**gw.user, "x-medops-variant": "purple"}
            )
            assert wrong.status_code == 400 and "x-medops-variant" in wrong.text

    run(scenario)


def test_a_canary_on_a_failing_backend_is_rolled_back_within_its_window(
    tmp_path: Path, registry_template: Path
) -> None:
    interval = 1.0

    async def scenario() -> None:
        async with running_gateway(tmp_path, registry_template) as gw:
            put = await gw.client.put(
                "/v1/routing", json=progressive([50, 100], interval, "broken"), headers=gw.admin
            )
            assert put.status_code == 200, put.text
            router = gw.gateway.dataplane.router
            start = next(d for d in router.decisions(CLASSIFIER) if d["decision"] == "start")
            failed, requests = 0, []  # (sent, answered) times of each request
            while router.config.models[CLASSIFIER].progressive is not None:
                assert time.monotonic() - start["at"] < 5 * interval, router.decisions()
                sent = time.monotonic()
                r = await gw.client.post(INFER, json=infer_body(), headers=gw.user)
                requests.append((sent, time.monotonic()))
                failed += r.status_code >= 500
            assert failed > 0, "the broken challenger really failed in ONNX Runtime"
            rollback = router.decisions(CLASSIFIER)[-1]
            assert rollback["decision"] == "rollback"
            # judged at the first answer observed after one interval at 50 %: at the latest,
            # that of the first request sent after it (observed before it is answered), or
            # of the last request when none was; however slow the machine
            end = start["at"] + interval
            latest = next((done for sent, done in requests if sent >= end), requests[-1][1])
            assert end <= rollback["at"] <= latest
            assert "error rate" in rollback["reason"]

            served = (await gw.client.get("/v1/routing", headers=gw.user)).json()
            variants = served["models"][CLASSIFIER]["variants"]
            assert {v["name"]: v["weight"] for v in variants} == {"champion": 100, "challenger": 0}
            assert served["models"][CLASSIFIER]["progressive"] is None
            entries = (await gw.client.get("/v1/routing/audit", headers=gw.admin)).json()
            last = entries["entries"][-1]
            assert last["action"] == "rollback" and "error rate" in last["reason"]

            after = [
                await gw.client.post(INFER, json=infer_body(), headers=gw.user) for _ in range(20)
            ]
            assert {(r.status_code, r.headers["x-medops-variant"]) for r in after} == {
                (200, "champion")
            }
            assert gw.registry.get_alias(CLASSIFIER, "champion") == "1"

    run(scenario)


def test_a_healthy_canary_is_promoted_and_the_champion_alias_moves_in_mlflow(
    tmp_path: Path, registry_template: Path
) -> None:
    interval = 0.4

    async def scenario() -> None:
        async with running_gateway(tmp_path, registry_template) as gw:
            assert gw.registry.get_alias(CLASSIFIER, "champion") == "1"
            put = await gw.client.put(
                "/v1/routing", json=progressive([50, 100], interval), headers=gw.admin
            )
            assert put.status_code == 200, put.text
            router = gw.gateway.dataplane.router
            deadline = time.monotonic() + 20
            while router.config.models[CLASSIFIER].strategy != "single":
                assert time.monotonic() < deadline, router.decisions(CLASSIFIER)
                r = await gw.client.post(INFER, json=infer_body(), headers=gw.user)
                assert r.status_code == 200, r.text
            # the PUT finds the challenger not loaded yet: it waits, then starts once loaded
            moves = [
                (d["decision"], d["toWeight"])
                for d in router.decisions(CLASSIFIER)
                if d["decision"] != "wait"
            ]
            assert moves == [("start", 50), ("step", 100), ("promote", 100)]
            assert gw.registry.get_alias(CLASSIFIER, "champion") == "2"

            await gw.gateway.dataplane.sync_models()
            r = await gw.client.post(INFER, json=infer_body(), headers=gw.user)
            assert (r.headers["x-medops-variant"], r.headers["x-medops-model-version"]) == (
                "champion",
                "2",
            )
            actions = [e["action"] for e in router.audit()]
            assert actions[-1] == "promote"

    run(scenario)


def test_a_canary_of_a_challenger_the_gate_kept_out_is_rolled_back_and_never_promoted(
    tmp_path: Path, registry_template: Path
) -> None:
    async def scenario() -> None:
        async with running_gateway(tmp_path, registry_template) as gw:
            worse = promotion_gate(
                {"auc": 0.90, "sensitivity": 0.70},
                {"auc": 0.90, "sensitivity": 0.80},
                minimums={"auc": 0.85},
                tolerance={"auc": 0.01, "sensitivity": 0.02},
            )
            gw.registry.record_gate(CLASSIFIER, "2", worse, move_champion=False)
            refusal = gw.registry.gate_refusal(CLASSIFIER, "2")
            assert refusal == (
                f"the promotion gate kept {CLASSIFIER} v2 out: sensitivity: challenger "
                "0.7000 vs champion 0.8000 (beyond tolerance 0.02)"
            )
            assert gw.registry.gate_refusal(CLASSIFIER, "1") is None, "no gate judged v1"

            put = await gw.client.put(
                "/v1/routing", json=progressive([50, 100], 0.4), headers=gw.admin
            )
            assert put.status_code == 200, put.text
            router = gw.gateway.dataplane.router
            deadline = time.monotonic() + 20
            answers = []
            while len(answers) < 10 or router.config.models[CLASSIFIER].progressive is not None:
                assert time.monotonic() < deadline, router.decisions(CLASSIFIER)
                r = await gw.client.post(INFER, json=infer_body(), headers=gw.user)
                answers.append((r.status_code, r.headers["x-medops-variant"]))
            assert set(answers) == {(200, "champion")}, "the kept-out version took no traffic"
            moves = [d for d in router.decisions(CLASSIFIER) if d["decision"] != "wait"]
            assert [(d["decision"], d["toWeight"], d["reason"]) for d in moves] == [
                ("rollback", 0, refusal)
            ]
            last = (await gw.client.get("/v1/routing/audit", headers=gw.admin)).json()
            assert last["entries"][-1]["action"] == "rollback"
            assert refusal in last["entries"][-1]["reason"]
            assert gw.registry.get_alias(CLASSIFIER, "champion") == "1"

    run(scenario)
