"""Serving by name: a gateway configured with models of other tasks (a polyp segmenter, a
lesion classifier; tiny contract-abiding ONNX models with new names) serves them over V2 and
``/v1/analyze?model=...``, lists them in ``/v2/models`` and routes them by the routing
document; declared chains come from the task files; unknown names are 404 naming the known."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import onnxruntime as ort
import pydicom
import pytest
from gateway_harness import GatewayThread, write_tiny_model
from gateway_support import SIZE, make_settings, read_keys
from PIL import Image as PILImage

from medops.imaging.dicom import write_dicom_series
from medops.imaging.lgg import lgg_patient_volume
from medops.rle import rle_decode_volume
from medops.tasks import TaskFileError
from medops.transforms import preprocess_slice, restore_mask
from pipelines.brain import BRAIN_MODELS, CLASSIFIER, SEGMENTER
from services.gateway.app import build_gateway, declared_chains, served_models, task_catalog
from services.gateway.routing import RoutingConfig
from services.gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
POLYP = "polyp-segmenter"
LESION = "lesion-classifier"
LESION_CLASSES = ["naevus", "keratosis", "melanoma"]
CHAIN = "brain-tumor-two-stage"


@pytest.fixture(scope="module")
def extra_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("extra-models")
    return {
        POLYP: write_tiny_model(
            POLYP, folder / "polyp.onnx", size=SIZE, seed=3, task="segmentation", classes=["polyp"]
        ),
        LESION: write_tiny_model(
            LESION,
            folder / "lesion.onnx",
            size=SIZE,
            seed=4,
            task="classification",
            classes=LESION_CLASSES,
        ),
    }


@pytest.fixture(scope="module")
def gateway(
    tiny_models: dict[str, Path],
    extra_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayThread, dict[str, str], dict[str, str]]]:
    """The brain models plus the two new ones, listed in ``models`` as MEDOPS_GATEWAY_MODELS
    would list them."""
    home = tmp_path_factory.mktemp("by-name-home")
    settings = make_settings(
        home, tiny_models | extra_models, models=[*BRAIN_MODELS, POLYP, LESION]
    )
    with GatewayThread(settings) as gw:
        keys = read_keys(home)
        yield (
            gw,
            {"authorization": f"Bearer {keys['client']}"},
            {"authorization": f"Bearer {keys['admin']}"},
        )


@pytest.fixture(scope="module")
def kvasir_frame(data_dir: Path) -> Path:
    images = data_dir / "kvasir-seg" / "images"
    assert images.is_dir(), f"Kvasir-SEG not found at {images}"
    return sorted(images.glob("*.jpg"))[0]


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = ort.InferenceSession(str(path)).run(None, {"image": x})[0]
    return out


def test_the_models_setting_reads_a_json_list_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDOPS_GATEWAY_MODELS", json.dumps([CLASSIFIER, POLYP]))
    monkeypatch.setenv("MEDOPS_GATEWAY_DEFAULT_CHAIN", "")
    settings = GatewaySettings()
    assert settings.models == [CLASSIFIER, POLYP] and not settings.default_chain


def test_the_served_models_are_the_configured_the_file_backed_and_the_routed_ones() -> None:
    settings = GatewaySettings(models=[CLASSIFIER], model_files={POLYP: Path("polyp.onnx")})
    routed = RoutingConfig.from_document(
        {
            "models": {
                LESION: {"variants": [{"name": "champion", "alias": "champion", "weight": 100}]}
            }
        },
        known_models=None,
    )
    assert served_models(settings, routed, None, None) == [CLASSIFIER, POLYP, LESION]
    assert served_models(settings, None, routed, None) == [CLASSIFIER, POLYP, LESION]


def test_v2_models_lists_every_served_model_with_its_state_and_task(
    gateway: tuple[GatewayThread, dict[str, str], dict[str, str]],
) -> None:
    gw, client, _ = gateway
    r = httpx.get(f"http://{gw.url}/v2/models", headers=client, timeout=30)
    assert r.status_code == 200, r.text
    rows = {m["name"]: m for m in r.json()["models"]}
    assert list(rows) == [*BRAIN_MODELS, POLYP, LESION]
    assert all(m["state"] == "READY" and m["version"] == "1" for m in rows.values())
    assert rows[POLYP]["task"] == "segmentation" and rows[POLYP]["classes"] == ["polyp"]
    assert rows[LESION]["classes"] == LESION_CLASSES
    index = httpx.post(f"http://{gw.url}/v2/repository/index", headers=client, timeout=30)
    assert index.status_code == 200
    assert {m["name"]: m["state"] for m in index.json()}[POLYP] == "READY"
    assert httpx.get(f"http://{gw.url}/v2/models", timeout=30).status_code == 401


def test_a_new_model_is_served_over_v2_with_its_own_metadata(
    gateway: tuple[GatewayThread, dict[str, str], dict[str, str]],
    extra_models: dict[str, Path],
) -> None:
    gw, client, _ = gateway
    meta = httpx.get(f"http://{gw.url}/v2/models/{POLYP}", headers=client, timeout=30).json()
    assert meta["parameters"]["task"] == "segmentation"
    assert meta["parameters"]["classes"] == ["polyp"]
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    r = httpx.post(f"http://{gw.url}/v2/models/{POLYP}/infer", json=body, headers=client)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [2, 1, SIZE, SIZE]
    np.testing.assert_allclose(
        np.asarray(out["data"], np.float32).reshape(out["shape"]),
        _run(extra_models[POLYP], x),
        atol=1e-5,
    )


def test_a_segmenter_alone_masks_every_slice_of_a_colonoscopy_frame(
    gateway: tuple[GatewayThread, dict[str, str], dict[str, str]],
    extra_models: dict[str, Path],
    kvasir_frame: Path,
) -> None:
    gw, client, _ = gateway
    picture = np.asarray(PILImage.open(kvasir_frame).convert("RGB")).transpose(2, 0, 1)
    h, w = picture.shape[1:]
    probs = _run(extra_models[POLYP], preprocess_slice(picture, SIZE)[None])
    expected = restore_mask((probs[:, 0] >= 0.5).astype(np.uint8), (h, w))
    r = httpx.post(
        f"http://{gw.url}/v1/analyze?model={POLYP}",
        content=kvasir_frame.read_bytes(),
        headers={**client, "content-type": "image/jpeg"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["models"] == {
        "classifier": None,
        "segmenter": {"name": POLYP, "version": "1", "variant": "champion", "threshold": 0.5},
    }
    assert doc["chain"] is None
    assert r.headers["x-medops-variant"] == "champion"
    np.testing.assert_array_equal(rle_decode_volume(doc["mask"]["slices"]), expected)
    assert expected.any(), "the tiny segmenter should mark something on this frame"
    (only,) = doc["slices"]
    assert only["segmented"] is True and only["positive"] is True and "class" not in only
    assert only["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert doc["decision"] == "polyp"
    assert doc["mask_area_mm2"] == doc["tumour_area_mm2"] == pytest.approx(float(expected.sum()))
    never = httpx.post(
        f"http://{gw.url}/v1/analyze?model={POLYP}&segment=never",
        content=kvasir_frame.read_bytes(),
        headers={**client, "content-type": "image/jpeg"},
        timeout=60,
    )
    assert never.status_code == 400 and "nothing to run" in never.text


def test_the_dicom_seg_of_a_segmenter_alone_is_labelled_with_its_class(
    gateway: tuple[GatewayThread, dict[str, str], dict[str, str]],
    lgg_patient: Path,
    tmp_path: Path,
) -> None:
    gw, client, _ = gateway
    paths = write_dicom_series(lgg_patient_volume(lgg_patient), tmp_path, patient_id="P-1")
    r = httpx.post(
        f"http://{gw.url}/v1/analyze?model={POLYP}",
        files=[("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths],
        headers={**client, "accept": "application/dicom"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    seg = hd.seg.segread(io.BytesIO(r.content))
    assert seg.SegmentSequence[0].SegmentLabel == "polyp"
    assert seg.ManufacturerModelName == POLYP
    assert pydicom.dcmread(io.BytesIO(r.content)).Modality == "SEG"


def test_a_classifier_alone_decides_every_slice_by_its_own_classes(
    gateway: tuple[GatewayThread, dict[str, str], dict[str, str]],
    extra_models: dict[str, Path],
    tiny_models: dict[str, Path],
    lgg_patient: Path,
    tmp_path: Path,
) -> None:
    gw, client, _ = gateway
    volume = lgg_patient_volume(lgg_patient)
    from medops.imaging.formats import write_nifti

    nifti = write_nifti(volume, tmp_path / "volume.nii.gz").read_bytes()
    x = np.stack([preprocess_slice(s, SIZE) for s in np.moveaxis(volume.array, 1, 0)])

    probs = _run(extra_models[LESION], x)
    r = httpx.post(
        f"http://{gw.url}/v1/analyze?model={LESION}",
        files={"file": ("volume.nii.gz", nifti, "application/gzip")},
        headers=client,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["models"]["segmenter"] is None and doc["models"]["classifier"]["name"] == LESION
    classes = [LESION_CLASSES[k] for k in probs.argmax(axis=1)]
    assert [s["class"] for s in doc["slices"]] == classes  # multi-class: the most probable
    np.testing.assert_allclose(
        [s["probability"] for s in doc["slices"]], probs.max(axis=1), atol=1e-5
    )
    assert doc["decision"] == LESION_CLASSES[int(probs.sum(axis=0).argmax())]
    assert doc["mask_area_mm2"] == 0 and not any(s["segmented"] for s in doc["slices"])

    binary = _run(tiny_models[CLASSIFIER], x)[:, 1]
    r = httpx.post(
        f"http://{gw.url}/v1/analyze?model={CLASSIFIER}",
        files={"file": ("volume.nii.gz", nifti, "application/gzip")},
        headers=client,
        timeout=120,
    )
    doc = r.json()
    threshold = doc["threshold"]
    assert doc["models"]["segmenter"] is None
    assert [s["class"] for s in doc["slices"]] == [
        "tumour" if p >= threshold else "no_tumour" for p in binary
    ]
    assert [s["positive"] for s in doc["slices"]] == [bool(p >= threshold) for p in binary]


def test_the_chain_by_name_is_the_default_answer(
    gateway: tuple[GatewayThread, dict[str, str], dict[str, str]], lgg_patient: Path
) -> None:
    gw, client, _ = gateway
    picture = sorted(lgg_patient.glob("*[0-9].tif"))[10].read_bytes()
    answers = []
    for query in ("", f"?chain={CHAIN}"):
        r = httpx.post(
            f"http://{gw.url}/v1/analyze{query}",
            content=picture,
            headers={**client, "content-type": "image/tiff"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        answers.append({k: v for k, v in r.json().items() if k != "request_id"})
        for s in answers[-1]["slices"]:
            s.pop("prediction_id", None)
    assert answers[0] == answers[1]
    assert answers[0]["chain"] == CHAIN
    assert answers[0]["models"]["classifier"]["name"] == CLASSIFIER


def test_unknown_models_and_chains_are_404_naming_the_known_ones(
    gateway: tuple[GatewayThread, dict[str, str], dict[str, str]], kvasir_frame: Path
) -> None:
    gw, client, _ = gateway

    def analyze(query: str) -> httpx.Response:
        return httpx.post(
            f"http://{gw.url}/v1/analyze?{query}",
            content=kvasir_frame.read_bytes(),
            headers={**client, "content-type": "image/jpeg"},
            timeout=60,
        )

    unknown = analyze("model=no-such-model")
    assert unknown.status_code == 404
    message = unknown.json()["error"]
    assert "no-such-model" in message and POLYP in message and LESION in message
    unknown = analyze("chain=no-such-chain")
    assert unknown.status_code == 404 and CHAIN in unknown.json()["error"]
    both = analyze(f"model={POLYP}&chain={CHAIN}")
    assert both.status_code == 400 and "not both" in both.json()["error"]


def test_a_new_model_is_routed_on_a_canary_by_the_routing_document(
    gateway: tuple[GatewayThread, dict[str, str], dict[str, str]], kvasir_frame: Path
) -> None:
    gw, client, admin = gateway
    base = f"http://{gw.url}"
    before = httpx.get(f"{base}/v1/routing", headers=client).json()
    canary = {
        "strategy": "canary",
        "variants": [
            {"name": "champion", "alias": "champion", "weight": 50},
            {"name": "canary", "alias": "challenger", "weight": 50},
        ],
    }
    refused = httpx.put(
        f"{base}/v1/routing", json={"models": {"skin-unknown": canary}}, headers=admin
    )
    assert refused.status_code == 400 and POLYP in refused.text  # the served ones are named
    accepted = httpx.put(
        f"{base}/v1/routing",
        json={"models": {POLYP: canary}},
        headers={**admin, "if-match": f'"{before["revision"]}"'},
    )
    assert accepted.status_code == 200, accepted.text
    try:
        seen = set()
        for key in range(40):
            r = httpx.post(
                f"{base}/v1/analyze?model={POLYP}",
                content=kvasir_frame.read_bytes(),
                headers={
                    **client,
                    "content-type": "image/jpeg",
                    "x-medops-route-key": f"study-{key}",
                },
                timeout=60,
            )
            assert r.status_code == 200, r.text
            seen.add(r.headers["x-medops-variant"])
            assert r.json()["models"]["segmenter"]["variant"] == r.headers["x-medops-variant"]
        assert seen == {"champion", "canary"}
        stats = httpx.get(f"{base}/v1/routing/decisions", headers=client).json()["variants"]
        assert {v["variant"] for v in stats if v["model"] == POLYP} >= {"champion", "canary"}
    finally:
        httpx.put(f"{base}/v1/routing", json={"models": {}}, headers=admin)


# ---------------------------------------------------------------- chains from the task files


def _tasks(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name in names:
        shutil.copy(ROOT / "tasks" / f"{name}.yaml", folder)
    return folder


def test_chains_come_from_the_task_files(tmp_path: Path) -> None:
    folder = _tasks(tmp_path, "brain-tumor-classifier", "brain-tumor-segmenter", CHAIN)
    (folder / "tumour-screen.yaml").write_text(
        "name: tumour-screen\nchain:\n  classifier: brain-tumor-classifier\n"
    )
    settings = GatewaySettings(tasks_dir=folder)
    chains, no_default = declared_chains(settings, task_catalog(settings))
    assert {n: c.models for n, c in chains.items()} == {
        CHAIN: (CLASSIFIER, SEGMENTER),
        "tumour-screen": (CLASSIFIER,),
    }
    assert no_default is None
    other_default = settings.model_copy(update={"default_chain": "nope"})
    _, no_default = declared_chains(other_default, task_catalog(other_default))
    assert no_default is not None and "'nope' is not declared in" in no_default


def test_a_broken_task_file_stops_the_start_and_a_missing_folder_serves_no_chain(
    tmp_path: Path,
) -> None:
    folder = _tasks(tmp_path, "brain-tumor-classifier")
    (folder / "broken.yaml").write_text("name: broken\nchain:\n  classifier: no-such-task\n")
    with pytest.raises(TaskFileError, match=r"broken\.yaml: chain\.classifier: no task named"):
        task_catalog(GatewaySettings(tasks_dir=folder))
    missing = GatewaySettings(tasks_dir=tmp_path / "absent")
    assert task_catalog(missing) is None
    chains, no_default = declared_chains(missing, None)
    assert chains == {} and no_default is not None and "not found" in no_default
    assert declared_chains(missing.model_copy(update={"default_chain": ""}), None) == ({}, None)
    # the gateway does not start on it
    with pytest.raises(TaskFileError, match=r"broken\.yaml"):
        build_gateway(make_settings(tmp_path / "home", {}, tasks_dir=folder))


def test_a_gateway_without_the_default_chains_models_starts_and_says_why(
    extra_models: dict[str, Path], kvasir_frame: Path, tmp_path: Path
) -> None:
    """A polyp-only gateway: the brain chain's models are not served (404 naming the served
    one); its own model is."""
    settings = make_settings(tmp_path / "home", {POLYP: extra_models[POLYP]}, models=[POLYP])
    with GatewayThread(settings) as gw:
        headers = {
            "authorization": f"Bearer {read_keys(tmp_path / 'home')['client']}",
            "content-type": "image/jpeg",
        }
        default = httpx.post(
            f"http://{gw.url}/v1/analyze", content=kvasir_frame.read_bytes(), headers=headers
        )
        assert default.status_code == 404
        assert default.json()["error"] == f"unknown model {CLASSIFIER!r}; served: {POLYP}"
        ok = httpx.post(
            f"http://{gw.url}/v1/analyze?model={POLYP}",
            content=kvasir_frame.read_bytes(),
            headers=headers,
            timeout=60,
        )
        assert ok.status_code == 200 and ok.json()["models"]["segmenter"]["name"] == POLYP
        ready = httpx.get(f"http://{gw.url}/v2/health/ready")
        assert ready.status_code == 200 and list(ready.json()["models"]) == [POLYP]
