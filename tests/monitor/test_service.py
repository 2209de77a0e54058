"""The monitor service in process: drift endpoints, feedback, metrics, and the feedback flow.

Calls go with an admin key unless a test is about roles (those are in test_monitor_auth.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from monitor_support import MODEL, Receiver, serve

from medops.monitoring.drift import Reference
from medops.monitoring.store import PredictionRecord, PredictionStore
from medops.rle import rle_encode
from services.monitor import MonitorSettings, create_app


def _settings(ref: Reference, tmp: Path, **kw) -> MonitorSettings:
    base = {
        "home": ref.path.parents[3],
        "store_url": f"sqlite:///{tmp}/predictions.db",
        "models": [MODEL],
        "interval_s": 0,
        "min_window": 30,
        "api_keys_file": tmp / "keys" / "api-keys.json",
        "credentials_file": tmp / "keys" / "credentials.json",
    }
    return MonitorSettings(**{**base, **kw})


def _log(url: str, features: list[dict[str, float]], decision: str = "tumour") -> None:
    with PredictionStore(url) as store:
        for i, feats in enumerate(features):
            store.record(
                PredictionRecord(
                    request_id=f"r{i}",
                    model=MODEL,
                    version="1",
                    variant="champion",
                    probabilities={"no_tumour": 0.2, "tumour": 0.8},
                    features=feats,
                    decision=decision,
                    confidence=0.8,
                    time=1_700_000_000.0 + i,
                )
            )


@pytest.fixture
def client(
    lgg_reference: Reference, heldout_features: list[dict[str, float]], tmp_path: Path
) -> Iterator[TestClient]:
    settings = _settings(lgg_reference, tmp_path)
    _log(settings.store_url or "", heldout_features)
    with serve(create_app(settings), settings) as c:
        yield c


def test_drift_is_not_found_before_the_first_evaluation(client: TestClient) -> None:
    r = client.get("/v1/drift")
    assert r.status_code == 404
    assert "no evaluation yet" in r.json()["error"]


def test_evaluation_publishes_drift_json_report_and_gauges(
    client: TestClient, lgg_reference: Reference
) -> None:
    assert client.post("/v1/evaluate").json()["evaluations"][0]["window_size"] == 100
    body = client.get("/v1/drift", params={"model": MODEL}).json()
    # held-out LGG patients: the verdict of the calibrated alarm, whichever it is here
    detected = body["drift_detected"]
    assert detected is any(s["drifted"] for s in body["feature_scores"].values())
    assert body["alarm"]["traffic"] == "whole studies, patients in random order"
    assert {"drift_share", "feature_scores", "window", "reference_version"} <= set(body)
    assert body["reference_version"] == "1"
    assert body["window"]["size"] == 100 and body["window"]["start"].startswith("2023-11-14")
    assert set(body["feature_scores"]["noise"]) == {"score", "threshold", "drifted", "kind"}
    # the alarm says its thresholds' stated false-alarm rate and the window it holds for
    assert body["alarm"]["false_alarm_rate"] == 0.01 and body["alarm"]["window"] == 100
    assert body["feature_scores"]["noise"]["threshold"] == lgg_reference.thresholds["noise"]
    report = client.get("/v1/drift/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    metrics = client.get("/metrics").text
    assert f'medops_drift_detected{{model="{MODEL}"}} {float(detected)}' in metrics
    assert f'medops_drift_window_size{{model="{MODEL}"}} 100.0' in metrics


def test_health_endpoints_answer_on_the_gateways_paths(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_feedback_for_an_unknown_request_is_404(client: TestClient) -> None:
    r = client.post("/v1/feedback", json={"request_id": "never-seen", "label": "tumour"})
    assert r.status_code == 404 and "never-seen" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": "tumour"}, "request_id"),
        ({"request_id": "r1"}, "give a label"),
        ({"request_id": "r1", "label": "tumour", "patient_name": "x"}, "patient_name"),
        ({"request_id": "r1", "mask_rle": {"size": [2, 2], "counts": [1]}}, "mask_rle.counts"),
        ({"request_id": "r1", "label": "tumour", "reviewer_role": "cleaner"}, "reviewer_role"),
        ({"request_id": "r1", "label": "no tumour; DROP TABLE"}, "label"),
    ],
)
def test_bad_feedback_bodies_are_400_naming_the_field(
    client: TestClient, body: dict, field: str
) -> None:
    r = client.post("/v1/feedback", json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]


def test_feedback_is_stored_and_joined(client: TestClient) -> None:
    r = client.post(
        "/v1/feedback", json={"request_id": "r3", "label": "no_tumour", "reviewer_role": "resident"}
    )
    assert r.status_code == 200 and r.json() == {"request_id": "r3", "stored": True}
    store: PredictionStore = client.app.state.monitor.store  # type: ignore[attr-defined]
    row = store.window(MODEL).set_index("request_id").loc["r3"]
    assert row["feedback_label"] == "no_tumour" and row["reviewer_role"] == "resident"


def test_corrections_drop_quality_and_trigger_retraining_exactly_once(
    lgg_reference: Reference,
    heldout_features: list[dict[str, float]],
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    settings = _settings(
        lgg_reference, tmp_path, triggers=["webhook"], webhook_url=receiver.url, min_feedback=20
    )
    _log(settings.store_url or "", heldout_features)
    with serve(create_app(settings), settings) as client:
        for i in range(20):  # reviewers confirm: quality is fine, nothing fires
            client.post("/v1/feedback", json={"request_id": f"r{i}", "label": "tumour"})
        first = client.post("/v1/evaluate").json()["evaluations"][0]
        assert first["quality"]["accuracy"] == 1.0 and not first["retrain_triggered"]
        for i in range(20, 60):  # then they correct 40 of them
            client.post("/v1/feedback", json={"request_id": f"r{i}", "label": "no_tumour"})
        rounds = [client.post("/v1/evaluate").json()["evaluations"][0] for _ in range(3)]
        metrics = client.get("/metrics").text
    assert rounds[0]["quality"]["accuracy"] == pytest.approx(20 / 60)
    assert rounds[0]["quality"]["sensitivity"] == 1.0
    assert [r["retrain_triggered"] for r in rounds] == [True, False, False]
    assert len(receiver.bodies) == 1
    assert receiver.bodies[0]["reason"] == "quality" and receiver.bodies[0]["model"] == MODEL
    assert f'medops_retrain_triggers_total{{model="{MODEL}"}} 1.0' in metrics
    assert f'medops_quality_score{{metric="accuracy",model="{MODEL}"}} 0.333' in metrics


def test_dice_is_scored_from_reviewers_masks(
    lgg_reference: Reference, heldout_features: list[dict[str, float]], tmp_path: Path
) -> None:
    import numpy as np

    predicted = np.zeros((8, 8), bool)
    predicted[2:6, 2:6] = True
    settings = _settings(lgg_reference, tmp_path, models=["brain-tumor-segmenter"])
    with PredictionStore(settings.store_url or "") as store:
        for i, feats in enumerate(heldout_features[:40]):
            store.record(
                PredictionRecord(
                    request_id=f"s{i}", model="brain-tumor-segmenter", version="1",
                    variant="champion", probabilities={"max": 0.9}, features=feats,
                    area=16.0, mask_rle=rle_encode(predicted),
                )
            )  # fmt: skip
    with serve(create_app(settings), settings) as client:
        half = np.zeros((8, 8), bool)
        half[2:6, 2:4] = True  # the reviewer keeps half the predicted lesion
        for i in range(10):
            body = {"request_id": f"s{i}", "mask_rle": rle_encode(half)}
            assert client.post("/v1/feedback", json=body).status_code == 200
        ev = client.post("/v1/evaluate").json()["evaluations"][0]
    assert ev["quality"]["masks"] == 10
    assert ev["quality"]["dice"] == pytest.approx(2 * 8 / (16 + 8))


def test_the_background_loop_evaluates_on_its_own(
    lgg_reference: Reference, heldout_features: list[dict[str, float]], tmp_path: Path
) -> None:
    settings = _settings(lgg_reference, tmp_path).model_copy(update={"interval_s": 0.2})
    _log(settings.store_url or "", heldout_features)
    with serve(create_app(settings), settings) as client:
        deadline = time.monotonic() + 60
        while client.get("/v1/drift").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/v1/drift").json()["window"]["size"] == 100


def test_the_drift_history_keeps_each_evaluation_for_the_consoles_chart(
    lgg_reference: Reference, heldout_features: list[dict[str, float]], tmp_path: Path
) -> None:
    import numpy as np

    predicted = np.zeros((8, 8), bool)
    predicted[2:6, 2:6] = True
    # quality only (a window below min_window skips the drift test, which is tested above)
    settings = _settings(lgg_reference, tmp_path, models=["brain-tumor-segmenter"], min_window=1000)
    with PredictionStore(settings.store_url or "") as store:
        for i, feats in enumerate(heldout_features[:40]):
            store.record(
                PredictionRecord(
                    request_id=f"s{i}", model="brain-tumor-segmenter", version="1",
                    variant="champion", probabilities={"max": 0.9}, features=feats,
                    area=16.0, mask_rle=rle_encode(predicted),
                )
            )  # fmt: skip
    with serve(create_app(settings), settings) as client:
        empty = client.get("/v1/drift/history", params={"model": "brain-tumor-segmenter"})
        assert empty.status_code == 200 and empty.json()["evaluations"] == []
        client.post("/v1/evaluate")
        body = {"request_id": "s0", "mask_rle": rle_encode(np.zeros((8, 8), bool))}
        assert client.post("/v1/feedback", json=body).status_code == 200
        client.post("/v1/evaluate")
        history = client.get("/v1/drift/history", params={"model": "brain-tumor-segmenter"})
    first, second = history.json()["evaluations"]
    assert first["time"] <= second["time"] and first["window_size"] == 40
    assert first["quality"]["masks"] == 0 and second["quality"]["masks"] == 1
    assert second["quality"]["dice"] == 0.0
    assert second["drift_share"] is None and "min_window" in second["note"]
