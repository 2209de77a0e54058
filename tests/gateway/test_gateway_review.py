"""The review queue and the studies kept for it: least confident first, de-identified, kept
only when retention is on and only for its time limit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from gateway_harness import GatewayThread
from gateway_support import make_settings, read_keys

from medops.imaging.dicom import write_dicom_series
from medops.imaging.lgg import lgg_patient_volume
from pipelines.brain import CLASSIFIER


@pytest.fixture(scope="module")
def planted_series(lgg_patient: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    paths = write_dicom_series(
        lgg_patient_volume(lgg_patient), tmp_path_factory.mktemp("dicom"), patient_id="MRN-123456"
    )
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PatientName = "Doe^Jane"
        ds.save_as(p)
    return paths


def analyse(gw: GatewayThread, headers: dict[str, str], series: list[Path]) -> dict[str, Any]:
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in series]
    r = httpx.post(f"http://{gw.url}/v1/analyze", files=files, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_kept_studies_are_de_identified_ranked_and_expire(
    tiny_models: dict[str, Path], tmp_path: Path, planted_series: list[Path]
) -> None:
    home = tmp_path / "home"
    with GatewayThread(make_settings(home, tiny_models, review_retention_s=3600)) as gw:
        headers = {"authorization": f"Bearer {read_keys(home)['client']}"}
        analysis = analyse(gw, headers, planted_series)
        url = f"http://{gw.url}"
        queue = httpx.get(f"{url}/v1/review/queue", params={"model": CLASSIFIER}, headers=headers)
        assert queue.status_code == 200 and queue.json()["kept_for_review"] is True
        items = queue.json()["items"]
        assert len(items) == len(planted_series)
        confidences = [i["confidence"] for i in items]
        assert confidences == sorted(confidences), "least confident first"
        assert all(i["kept"] and i["request_id"] == analysis["request_id"] for i in items)
        assert all(i["shadow"] is None and not i["disagrees"] for i in items), "no shadow ran"

        kept = httpx.get(f"{url}/v1/review/studies/{analysis['request_id']}", headers=headers)
        assert kept.status_code == 200
        assert kept.json()["analysis"]["slices"] == analysis["slices"]
        assert len(kept.json()["previews"]) == len(planted_series)
        (stored,) = (home / "review").glob("*.json")
        kept_doc = json.loads(stored.read_text())
        readable = json.dumps(kept_doc["analysis"])  # the previews are pixels (base64 PNG)
        for identifier in ("MRN-123456", "Doe^Jane", "Doe"):
            assert identifier not in readable
        assert all(p.startswith("data:image/png;base64,") for p in kept_doc["previews"])
        assert set(kept_doc) == {"kept_at", "analysis", "previews"}
        assert stored.stat().st_mode & 0o077 == 0

        # a reviewed prediction leaves the queue
        first = items[0]["prediction_id"]
        r = httpx.post(
            f"{url}/v1/feedback", json={"request_id": first, "label": "tumour"}, headers=headers
        )
        assert r.status_code == 200
        after = httpx.get(f"{url}/v1/review/queue", params={"model": CLASSIFIER}, headers=headers)
        assert first not in {i["prediction_id"] for i in after.json()["items"]}
        r = httpx.get(
            f"{url}/v1/review/queue", params={"model": CLASSIFIER, "limit": 0}, headers=headers
        )
        assert r.status_code == 400 and "limit" in r.json()["error"]
        r = httpx.get(f"{url}/v1/review/studies/..%2Fsecret", headers=headers)
        assert r.status_code in (400, 404)

        # past its time limit the study is gone
        cache = _cache(gw)
        assert cache.purge(now=stored.stat().st_mtime + 3601) == 1
        gone = httpx.get(f"{url}/v1/review/studies/{analysis['request_id']}", headers=headers)
        assert gone.status_code == 404 and "not kept" in gone.json()["error"]


def _cache(gw: GatewayThread) -> Any:
    from medops.clinical.review import ReviewCache

    settings = gw.settings
    return ReviewCache(settings.home / "review", settings.review_retention_s)


def test_nothing_is_kept_by_default(
    onnx_gateway: GatewayThread,
    gateway_home: Path,
    client_headers: dict[str, str],
    planted_series: list[Path],
) -> None:
    analysis = analyse(onnx_gateway, client_headers, planted_series[:2])
    url = f"http://{onnx_gateway.url}"
    r = httpx.get(f"{url}/v1/review/studies/{analysis['request_id']}", headers=client_headers)
    assert r.status_code == 404 and "off" in r.json()["error"]
    assert not list((gateway_home / "review").glob("*.json"))
    queue = httpx.get(
        f"{url}/v1/review/queue", params={"model": CLASSIFIER}, headers=client_headers
    ).json()
    assert queue["kept_for_review"] is False
    # the session's shared log may hold many less confident predictions: this test asks only
    # that nothing anywhere in the queue was kept
    assert queue["items"] and not any(i["kept"] for i in queue["items"])


@pytest.mark.integration
def test_slices_a_shadow_challenger_decided_otherwise_come_first(
    tiny_models: dict[str, Path], tmp_path: Path, lgg_patient: Path, planted_series: list[Path]
) -> None:
    """The champion and a challenger in shadow: the same network at two operating thresholds
    (the challenger calls every slice a tumour), so they disagree exactly on the slices the
    champion calls negative, and those lead the queue."""
    import torch
    from gateway_harness import export_contract_model
    from gateway_support import SIZE
    from known_models import BrightSpotClassifier

    from medops.modelspec import CHALLENGER, CHAMPION
    from medops.monitoring.store import PredictionStore
    from medops.registry import Registry
    from medops.transforms import preprocess_slice
    from pipelines.brain import SEGMENTER

    net = BrightSpotClassifier().eval()
    volume = lgg_patient_volume(lgg_patient)
    x = torch.from_numpy(
        np.stack([preprocess_slice(volume.slice(k), SIZE) for k in range(volume.num_slices)])
    )
    with torch.no_grad():
        p = net(x)[:, 1].numpy()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    models = [
        (CLASSIFIER, net, float(np.median(p)), CHAMPION),  # about half the slices positive
        (CLASSIFIER, net, 0.0, CHALLENGER),  # every slice positive
    ]
    for k, (name, model, threshold, alias) in enumerate(models):
        onnx = export_contract_model(
            model,
            tmp_path / f"classifier-{k}.onnx",
            size=SIZE,
            task="classification",
            classes=["no_tumour", "tumour"],
            threshold=threshold,
        )
        registry.log_and_register(
            name, onnx_path=onnx, dataset_version="test", params={}, metrics={},
            git_commit="test", aliases=(alias,),
        )  # fmt: skip
    registry.log_and_register(
        SEGMENTER, onnx_path=tiny_models[SEGMENTER], dataset_version="test", params={},
        metrics={}, git_commit="test", aliases=(CHAMPION,),
    )  # fmt: skip
    routing = tmp_path / "routing.json"
    routing.write_text(
        json.dumps(
            {
                "models": {
                    CLASSIFIER: {
                        "strategy": "shadow",
                        "variants": [
                            {"name": "champion", "alias": CHAMPION, "weight": 100},
                            {"name": "challenger", "alias": CHALLENGER, "weight": 0},
                        ],
                        "shadow": {"variant": "challenger", "percent": 100},
                    }
                }
            }
        )
    )
    home = tmp_path / "home"
    settings = make_settings(
        home, {}, tracking_uri=uri, models=[CLASSIFIER, SEGMENTER],
        routing_file=routing, store_url=f"sqlite:///{tmp_path / 'predictions.db'}",
    )  # fmt: skip
    with GatewayThread(settings) as gw:
        headers = {"authorization": f"Bearer {read_keys(home)['client']}"}
        analysis = analyse(gw, headers, planted_series)
        url = f"http://{gw.url}/v1/review/queue"
        deadline = time.monotonic() + 30
        while True:  # the shadow copy answers after the caller got the champion's answer
            items = httpx.get(url, params={"model": CLASSIFIER}, headers=headers).json()["items"]
            if all(i["shadow"] for i in items) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(items) == len(planted_series)
    assert all(i["request_id"] == analysis["request_id"] for i in items)
    assert all(i["version"] == "1" and i["shadow"]["version"] == "2" for i in items)
    assert all(i["shadow"]["variant"] == "challenger" for i in items)
    assert all(i["shadow"]["decision"] == "tumour" for i in items)
    assert all(i["disagrees"] == (i["decision"] == "no_tumour") for i in items)
    flags = [i["disagrees"] for i in items]
    assert any(flags) and not all(flags), "the thresholds split the slices"
    assert flags == sorted(flags, reverse=True), "disagreements first"
    # the shadow's answers are kept apart: the monitor's window holds the served ones only
    with PredictionStore(settings.store_url) as store:
        window = store.window(CLASSIFIER)
    assert len(window) == len(planted_series) and set(window["variant"]) == {"champion"}
