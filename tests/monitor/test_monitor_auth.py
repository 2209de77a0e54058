"""The monitor's keys: who may post feedback, who may evaluate, what stays open.

The monitor runs in process with the keys local mode writes, over a real SQLite prediction
log; feedback is counted straight from the database file, not through the service.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from monitor_support import MODEL, Receiver, bearer, monitor_keys

from medops.monitoring.store import PredictionRecord, PredictionStore
from medops.service.auth import Authenticator
from services.gateway.settings import GatewaySettings
from services.monitor import MonitorSettings, create_app

REQUESTS = [f"req-{i}" for i in range(5)]


def json_keys(home: Path) -> dict[str, str]:
    keys: dict[str, str] = json.loads((home / "credentials.json").read_text())
    return keys


def _feedback_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "predictions.db"
    with PredictionStore(f"sqlite:///{path}") as store:
        for i, rid in enumerate(REQUESTS):
            store.record(
                PredictionRecord(
                    request_id=rid, model=MODEL, version="1", variant="champion",
                    probabilities={"no_tumour": 0.3, "tumour": 0.7}, features={"mean": 0.5},
                    decision="tumour", confidence=0.7, time=1_700_000_000.0 + i,
                )
            )  # fmt: skip
    return path


@pytest.fixture
def settings(tmp_path: Path, db: Path, receiver: Receiver) -> MonitorSettings:
    return MonitorSettings(
        home=tmp_path / "home",
        store_url=f"sqlite:///{db}",
        models=[MODEL],
        interval_s=0,
        triggers=["webhook"],
        webhook_url=receiver.url,
        min_feedback=1,
    )


@pytest.fixture
def client(settings: MonitorSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def keys(client: TestClient, settings: MonitorSettings) -> dict[str, str]:
    return monitor_keys(settings)


def test_local_mode_makes_a_client_a_reviewer_and_an_admin_key(keys: dict[str, str]) -> None:
    assert set(keys) == {"client", "reviewer", "admin"}
    assert len(set(keys.values())) == 3


def test_feedback_and_evaluate_without_a_key_are_401_and_change_nothing(
    client: TestClient, db: Path, receiver: Receiver, keys: dict[str, str]
) -> None:
    before = _feedback_rows(db)
    r = client.post("/v1/feedback", json={"request_id": REQUESTS[0], "label": "no_tumour"})
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    r = client.post("/v1/evaluate")
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    r = client.post("/v1/feedback", json={"request_id": REQUESTS[0], "label": "no_tumour"},
                    headers={"authorization": "Basic YWRtaW46YWRtaW4="})  # fmt: skip
    assert r.status_code == 401
    assert _feedback_rows(db) == before
    # no evaluation ran, so nothing was judged and no retraining was fired
    r = client.get("/v1/drift", headers=bearer(keys["client"]))
    assert r.status_code == 404 and "no evaluation yet" in r.json()["error"]
    assert receiver.bodies == []


@pytest.mark.parametrize("role", ["client", "reviewer"])
def test_evaluate_with_a_key_that_is_not_admin_is_403(
    client: TestClient, keys: dict[str, str], receiver: Receiver, role: str
) -> None:
    r = client.post("/v1/evaluate", headers=bearer(keys[role]))
    assert r.status_code == 403
    assert "admin" in r.json()["error"] and role in r.json()["error"]
    assert client.get("/v1/drift", headers=bearer(keys[role])).status_code == 404
    assert receiver.bodies == []


def test_an_unknown_key_is_403_and_stores_no_feedback(client: TestClient, db: Path) -> None:
    before = _feedback_rows(db)
    r = client.post(
        "/v1/feedback",
        json={"request_id": REQUESTS[1], "label": "no_tumour"},
        headers=bearer("medops-reviewer-not-a-real-key"),
    )
    assert r.status_code == 403 and "not recognised" in r.json()["error"]
    assert _feedback_rows(db) == before


@pytest.mark.parametrize("role", ["reviewer", "client", "admin"])
def test_reviewer_client_and_admin_keys_may_post_feedback(
    client: TestClient, db: Path, keys: dict[str, str], role: str
) -> None:
    before = _feedback_rows(db)
    r = client.post(
        "/v1/feedback",
        json={"request_id": REQUESTS[2], "label": "no_tumour"},
        headers=bearer(keys[role]),
    )
    assert r.status_code == 200, r.text
    assert _feedback_rows(db) == before + 1


def test_an_admin_key_evaluates_and_the_corrections_fire_retraining(
    client: TestClient, keys: dict[str, str], receiver: Receiver
) -> None:
    for rid in REQUESTS:
        body = {"request_id": rid, "label": "no_tumour"}
        assert client.post("/v1/feedback", json=body, headers=bearer(keys["reviewer"])).is_success
    r = client.post("/v1/evaluate", headers=bearer(keys["admin"]))
    assert r.status_code == 200, r.text
    (ev,) = r.json()["evaluations"]
    assert ev["quality"]["accuracy"] == 0.0 and ev["retrain_triggered"] is True
    assert [b["reason"] for b in receiver.bodies] == ["quality"]


@pytest.mark.parametrize("path", ["/v1/drift", "/v1/drift/report"])
def test_reads_need_a_key_of_any_role(client: TestClient, keys: dict[str, str], path: str) -> None:
    assert client.get(path).status_code == 401
    for role in ("client", "reviewer", "admin"):
        r = client.get(path, headers=bearer(keys[role]))
        assert r.status_code == 404, (role, r.text)  # known to the policy, no result yet


def test_health_and_metrics_are_open(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "medops_" in metrics.text
    # and only those: an unknown path still needs a key before it can be a 404
    assert client.get("/v1/nowhere").status_code == 401


def test_the_gateway_and_the_monitor_share_one_set_of_local_keys(tmp_path: Path, db: Path) -> None:
    home = tmp_path / "medops-home"
    gateway_auth = GatewaySettings(home=home).authenticator()  # the gateway starts first
    keys = json_keys(home)
    monitor = MonitorSettings(home=home, store_url=f"sqlite:///{db}", interval_s=0)
    with TestClient(create_app(monitor)) as client:
        r = client.post(
            "/v1/feedback",
            json={"request_id": REQUESTS[3], "label": "tumour"},
            headers=bearer(keys["reviewer"]),
        )
        assert r.status_code == 200, r.text
        assert client.post("/v1/evaluate", headers=bearer(keys["client"])).status_code == 403
    assert json_keys(home) == keys  # the monitor reused them, made none of its own
    assert gateway_auth.check(f"Bearer {keys['client']}", "client") == "client"


def test_services_starting_at_once_agree_on_one_set_of_keys(tmp_path: Path) -> None:
    keys_file, credentials = tmp_path / "gateway" / "api-keys.json", tmp_path / "credentials.json"
    with ThreadPoolExecutor(8) as pool:
        auths = list(pool.map(lambda _: Authenticator.local(keys_file, credentials), range(8)))
    plain = json.loads(credentials.read_text())
    for auth in auths:
        assert auth.check(f"Bearer {plain['reviewer']}", ("reviewer",)) == "reviewer"
    assert len(json.loads(keys_file.read_text())["keys"]) == 3
