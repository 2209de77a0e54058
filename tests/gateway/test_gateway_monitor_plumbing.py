"""The gateway and the monitor answer the same fault with the same body: one plumbing.

A real gateway on a free port beside the monitor in process, both on the keys the gateway's
local mode wrote: the same missing key, unknown key, unknown path and internal failure give the
same status and ``{"error": ...}`` body, and an internal failure's traceback reaches the log
under the error id the caller is told, never the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from gateway_harness import GatewayThread
from gateway_support import make_settings, read_keys

from medops.monitoring.store import PredictionRecord, PredictionStore
from pipelines.brain import CLASSIFIER
from services.monitor import MonitorSettings, create_app


@pytest.fixture
def both(
    tiny_models: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[GatewayThread, TestClient, dict[str, str]]]:
    home = tmp_path / "home"
    store = f"sqlite:///{tmp_path / 'predictions.db'}"
    with PredictionStore(store) as s:
        s.record(
            PredictionRecord(
                request_id="r1", model=CLASSIFIER, version="1", variant="champion",
                probabilities={"no_tumour": 0.4, "tumour": 0.6}, features={"mean": 0.1},
            )
        )  # fmt: skip
    with GatewayThread(make_settings(home, tiny_models, prediction_log=False)) as gw:
        monitor = MonitorSettings(home=home, store_url=store, interval_s=0)
        with TestClient(create_app(monitor), raise_server_exceptions=False) as mon:
            yield gw, mon, read_keys(home)


def _pair(
    both: tuple[GatewayThread, TestClient, dict[str, str]],
    gateway_call: tuple[str, str],
    monitor_call: tuple[str, str],
    headers: dict[str, str],
) -> tuple[httpx.Response, httpx.Response]:
    gw, mon, _ = both
    g = httpx.request(gateway_call[0], f"http://{gw.url}{gateway_call[1]}", headers=headers)
    m = mon.request(monitor_call[0], monitor_call[1], headers=headers)
    return g, m


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Basic abc"}, 401),
        ({"authorization": "Bearer medops-client-unknown"}, 403),
    ],
)
def test_a_refused_key_gets_the_same_answer_from_both(
    both: tuple[GatewayThread, TestClient, dict[str, str]], headers: dict[str, str], status: int
) -> None:
    g, m = _pair(both, ("GET", f"/v2/models/{CLASSIFIER}"), ("GET", "/v1/drift"), headers)
    assert g.status_code == m.status_code == status
    assert g.json() == m.json() and set(g.json()) == {"error"}


def test_an_unknown_path_is_the_same_404_in_both(
    both: tuple[GatewayThread, TestClient, dict[str, str]],
) -> None:
    headers = {"authorization": f"Bearer {both[2]['client']}"}
    g, m = _pair(both, ("GET", "/v1/nowhere"), ("GET", "/v1/nowhere"), headers)
    assert g.status_code == m.status_code == 404
    assert g.json() == m.json() == {"error": "Not Found"}


def test_health_paths_are_the_same_and_open_in_both(
    both: tuple[GatewayThread, TestClient, dict[str, str]],
) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        g, m = _pair(both, ("GET", path), ("GET", path), {})
        assert g.status_code == m.status_code == 200, path
    g, m = _pair(both, ("GET", "/v2/health/live"), ("GET", "/v2/health/live"), {})
    assert g.json() == m.json() == {"live": True}


def test_an_internal_failure_is_the_same_500_with_an_error_id_whose_traceback_is_only_logged(
    both: tuple[GatewayThread, TestClient, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    gw, mon, keys = both
    headers = {"authorization": f"Bearer {keys['admin']}"}

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("secret internal detail at /srv/medops")

    async def broken_async(*_: object, **__: object) -> None:
        broken()

    gw.gateway.backend.infer = broken_async  # type: ignore[method-assign,assignment]
    mon.app.state.monitor.store.record_feedback = broken  # type: ignore[attr-defined]
    body = {
        "inputs": [{"name": "image", "shape": [1, 3, 64, 64], "datatype": "FP32",
                    "data": [0.0] * (3 * 64 * 64)}]
    }  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="medops.service.errors"):
        g = httpx.post(f"http://{gw.url}/v2/models/{CLASSIFIER}/infer", json=body, headers=headers)
        m = mon.post("/v1/feedback", json={"request_id": "r1", "label": "tumour"}, headers=headers)
    ids = []
    for r in (g, m):
        assert r.status_code == 500 and set(r.json()) == {"error"}
        message = r.json()["error"]
        assert message.startswith("internal error (id ") and "secret" not in r.text
        ids.append(message.removeprefix("internal error (id ").rstrip(")"))
    assert ids[0] != ids[1]
    logged = {getattr(rec, "error_id", None): rec for rec in caplog.records}
    for error_id in ids:
        record = logged[error_id]
        assert record.exc_info is not None and "secret internal detail" in str(record.exc_info[1])


def test_a_reviewer_key_posts_feedback_to_the_monitor_but_does_not_serve_on_the_gateway(
    both: tuple[GatewayThread, TestClient, dict[str, str]],
) -> None:
    gw, mon, keys = both
    headers = {"authorization": f"Bearer {keys['reviewer']}"}
    r = httpx.get(f"http://{gw.url}/v2/models/{CLASSIFIER}", headers=headers)
    assert r.status_code == 403 and "client" in r.json()["error"]
    r = mon.post("/v1/feedback", json={"request_id": "r1", "label": "tumour"}, headers=headers)
    assert r.status_code == 200, r.text
