"""What monitoring gets from the gateway: Prometheus metrics and a prediction log of every
analysed slice, with nothing that identifies a patient."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
from gateway_harness import GatewayThread
from gateway_support import SIZE, make_settings

from medops.monitoring import FEATURE_NAMES, PredictionStore, rle_decode
from pipelines.brain import CLASSIFIER, SEGMENTER


def test_analysed_slices_land_in_the_prediction_log_and_requests_in_the_metrics(
    tiny_models: dict[str, Path],
    tmp_path: Path,
    client_headers: dict[str, str],
    gateway_home: Path,
    lgg_patient: Path,
) -> None:
    store_url = f"sqlite:///{tmp_path / 'predictions.db'}"
    settings = make_settings(gateway_home, tiny_models, prediction_store_url=store_url)
    tif = next(p for p in sorted(lgg_patient.glob("*.tif")) if not p.name.endswith("_mask.tif"))
    with GatewayThread(settings) as gw:
        r = httpx.post(
            f"http://{gw.url}/v1/analyze?segment=always",
            files={"file": (f"{lgg_patient.name}.tif", tif.read_bytes(), "image/tiff")},
            headers={**client_headers, "x-request-id": "study-42"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["slices"][0]["prediction_id"] == "study-42.0"
        x = np.zeros((1, 3, SIZE, SIZE), np.float32)
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
        assert (
            httpx.post(
                f"http://{gw.url}/v2/models/{CLASSIFIER}/infer", json=body, headers=client_headers
            ).status_code
            == 200
        )
        assert (
            httpx.post(
                f"http://{gw.url}/v2/models/{CLASSIFIER}/infer",
                json={  # decodes, but the model's contract refuses the shape
                    "inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.0]}]
                },
                headers=client_headers,
            ).status_code
            == 400
        )
        metrics = httpx.get(f"http://{gw.url}/metrics").text  # scrapers need no key
    # one analyze, one V2 call answered and one refused: each request counted once, each
    # stage observed once per request that reached it, under the classifier that every
    # analysis has
    counts = _samples(metrics, "medops_requests_total")
    assert counts == {
        (CLASSIFIER, "total", "200"): 2.0,
        (CLASSIFIER, "total", "400"): 1.0,
    }
    stages = _samples(metrics, "medops_request_duration_seconds_count")
    assert stages == {
        (CLASSIFIER, "decode", None): 1.0,
        (CLASSIFIER, "preprocess", None): 1.0,
        (CLASSIFIER, "infer", None): 2.0,
        (CLASSIFIER, "postprocess", None): 1.0,
        (CLASSIFIER, "total", None): 3.0,
    }
    assert "medops_predictions_total" in metrics and lgg_patient.name not in metrics

    with PredictionStore(store_url) as store:
        assert store.has_request("study-42.0")
        rows = store.window(CLASSIFIER)
        seg_rows = store.window(SEGMENTER)
    assert len(rows) == 1 and len(seg_rows) == 1
    row = rows.iloc[0]
    assert row["request_id"] == "study-42.0" and row["variant"] == "champion"
    assert abs(row["prob_tumour"] - doc["slices"][0]["probability"]) < 1e-5
    assert all(name in rows.columns for name in FEATURE_NAMES)
    stored = seg_rows.iloc[0]["mask_rle"]
    mask = rle_decode(json.loads(stored) if isinstance(stored, str) else stored)
    assert float(mask.sum()) == doc["tumour_area_mm2"] == seg_rows.iloc[0]["area"]


def _samples(text: str, name: str) -> dict[tuple[str, str, str | None], float]:
    """``(model, stage, status)`` -> value of every non-zero sample called ``name``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.labels["model"], s.labels["stage"], s.labels.get("status")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and s.value
    }
