"""``/v1/explain``: MONAI's occlusion sensitivity through the gateway's predictor equals MONAI's
on the torch model itself; a PNG heat map; the same 4xx messages as analyze."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import tifffile
import torch
from gateway_harness import GatewayThread, export_contract_model
from gateway_support import SIZE, make_settings
from known_models import BrightSpotClassifier
from monai.visualize import OcclusionSensitivity
from PIL import Image as PILImage
from torch import nn

from medops.clinical.explain import OcclusionSettings
from medops.imaging.dicom import write_dicom_series
from medops.imaging.lgg import lgg_patient_volume
from medops.transforms import preprocess_slice
from pipelines.brain import CLASSIFIER, SEGMENTER


@pytest.fixture(scope="module")
def torch_classifier() -> nn.Module:
    return BrightSpotClassifier().eval()


@pytest.fixture(scope="module")
def explain_gateway(
    torch_classifier: nn.Module,
    tiny_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayThread, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("explain")
    files = {
        CLASSIFIER: export_contract_model(
            torch_classifier,
            folder / "classifier.onnx",
            size=SIZE,
            task="classification",
            classes=["no_tumour", "tumour"],
        ),
        SEGMENTER: tiny_models[SEGMENTER],
    }
    home = folder / "home"
    with GatewayThread(make_settings(home, files)) as gw:
        keys = json.loads((home / "credentials.json").read_text())
        yield gw, {"authorization": f"Bearer {keys['client']}"}


@pytest.fixture(scope="module")
def tumour_slice(lgg_patient: Path) -> Path:
    for mask in sorted(lgg_patient.glob("*_mask.tif")):
        if tifffile.imread(mask).any():
            return Path(str(mask).replace("_mask.tif", ".tif"))
    raise AssertionError(f"no tumour slice in {lgg_patient.name}")


def explain(
    gw: GatewayThread, headers: dict[str, str], body: bytes, query: str = "", **extra: str
) -> httpx.Response:
    return httpx.post(
        f"http://{gw.url}/v1/explain{query}",
        content=body,
        headers={**headers, "content-type": "image/tiff", **extra},
        timeout=120,
    )


def test_occlusion_through_the_gateway_equals_monai_on_the_torch_model(
    explain_gateway: tuple[GatewayThread, dict[str, str]],
    torch_classifier: nn.Module,
    tumour_slice: Path,
) -> None:
    gw, headers = explain_gateway
    r = explain(gw, headers, tumour_slice.read_bytes(), "?segment=always")
    assert r.status_code == 200, r.text
    doc = r.json()
    (entry,) = doc["slices"]
    served = np.asarray(entry["classifier"]["saliency"])
    assert served.shape == (SIZE, SIZE)

    # MONAI directly on the torch module, the same settings, the same preprocessing
    settings = OcclusionSettings()
    x = torch.from_numpy(
        preprocess_slice(tifffile.imread(tumour_slice).transpose(2, 0, 1), SIZE)[None]
    )
    with torch.no_grad():
        probs = torch_classifier(x)[0]
        chosen = 1 if entry["class"] == "tumour" else 0
        occ, _ = OcclusionSensitivity(
            torch_classifier,
            mask_size=round(SIZE * settings.mask_fraction),
            n_batch=settings.n_batch,
            verbose=False,
            overlap=settings.overlap,
            activate=False,
        )(x)
    expected = float(probs[chosen]) - occ[0, chosen].numpy()
    assert float(np.abs(expected).max()) > 1e-3, "the map must show something to compare"
    np.testing.assert_allclose(served, expected, atol=2e-4)
    # the segmenter's mask got its own map, and both are named by version
    assert entry["segmenter"] is not None and entry["segmenter"]["size"] == [SIZE, SIZE]
    assert doc["models"]["classifier"]["name"] == CLASSIFIER
    assert doc["method"] == "occlusion"


def test_a_png_heat_map_of_one_slice_at_the_image_size(
    explain_gateway: tuple[GatewayThread, dict[str, str]], tumour_slice: Path
) -> None:
    gw, headers = explain_gateway
    body = tumour_slice.read_bytes()
    r = explain(gw, headers, body, "?segment=always&target=classifier", accept="image/png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    heat = np.asarray(PILImage.open(io.BytesIO(r.content)))
    assert heat.shape == (256, 256, 4)
    alpha = heat[..., 3]
    assert alpha.max() == 255 and (alpha == 0).any(), "transparent where nothing mattered"


def test_explain_refuses_what_analyze_refuses_with_the_same_message(
    explain_gateway: tuple[GatewayThread, dict[str, str]], tumour_slice: Path
) -> None:
    gw, headers = explain_gateway
    junk = b"just some text, not an image"
    analyze = httpx.post(
        f"http://{gw.url}/v1/analyze",
        content=junk,
        headers={**headers, "content-type": "text/plain"},
    )
    r = explain(gw, headers, junk, **{"content-type": "text/plain"})
    assert r.status_code == analyze.status_code == 415
    assert r.json()["error"] == analyze.json()["error"]

    body = tumour_slice.read_bytes()
    r = explain(gw, headers, body, "?slices=4")
    assert r.status_code == 400 and "out of range" in r.json()["error"]
    r = explain(gw, headers, body, "?slices=one")
    assert r.status_code == 400 and "slices" in r.json()["error"]
    r = explain(gw, headers, body, "?target=everything")
    assert r.status_code == 400 and "target" in r.json()["error"]
    r = explain(gw, headers, body, "?method=lime")
    assert r.status_code == 400 and "method" in r.json()["error"]
    # ONNX files carry no torch weights: Grad-CAM is refused, saying why
    r = explain(gw, headers, body, "?method=gradcam")
    assert r.status_code == 409 and "torch weights" in r.json()["error"]
    r = explain(gw, headers, body, accept="application/dicom")
    assert r.status_code == 406
    r = httpx.post(f"http://{gw.url}/v1/explain", content=body)
    assert r.status_code == 401


@pytest.mark.integration
def test_explanations_through_triton_equal_those_of_the_in_process_backend(
    onnx_gateway: GatewayThread,
    triton_http_gateway: GatewayThread,
    client_headers: dict[str, str],
    tumour_slice: Path,
) -> None:
    """The occluded variants go through the backend's predictor, so Triton gives the same maps."""
    body = tumour_slice.read_bytes()
    answers = [
        explain(gw, client_headers, body, "?segment=always")
        for gw in (onnx_gateway, triton_http_gateway)
    ]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    docs = [r.json() for r in answers]
    for role in ("classifier", "segmenter"):
        local, triton = (np.asarray(d["slices"][0][role]["saliency"]) for d in docs)
        assert local.shape == triton.shape == (SIZE, SIZE)
        np.testing.assert_allclose(triton, local, atol=1e-4)


def test_a_dicom_series_gets_a_secondary_capture_heat_map_in_its_de_identified_study(
    onnx_gateway: GatewayThread,
    client_headers: dict[str, str],
    lgg_patient: Path,
    tmp_path: Path,
) -> None:
    volume = lgg_patient_volume(lgg_patient)
    series = write_dicom_series(volume, tmp_path / "dicom", patient_id="MRN-123456")
    for p in series:
        ds = pydicom.dcmread(p)
        ds.PatientName = "Doe^Jane"
        ds.save_as(p)
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in series]
    url = f"http://{onnx_gateway.url}"
    analysis = httpx.post(
        f"{url}/v1/analyze?segment=always", files=files, headers=client_headers, timeout=120
    ).json()
    k = 10
    r = httpx.post(
        f"{url}/v1/explain?segment=always&slices={k}",
        files=files,
        headers={**client_headers, "accept": "application/dicom"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    sc = pydicom.dcmread(io.BytesIO(r.content))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert sc.PhotometricInterpretation == "RGB" and (sc.Rows, sc.Columns) == (256, 256)
    assert sc.StudyInstanceUID == analysis["image"]["study_instance_uid"]
    assert sc.SeriesInstanceUID != analysis["image"]["series_instance_uid"]
    assert "Doe" not in str(sc.PatientName) and sc.PatientID != "MRN-123456"
    assert "occlusion heat map" in sc.SeriesDescription
    # the heat shows in colour over the grey slice
    rgb = sc.pixel_array.astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 30).any()
    # one slice per secondary capture
    r = httpx.post(
        f"{url}/v1/explain",
        files=files,
        headers={**client_headers, "accept": "application/dicom"},
        timeout=120,
    )
    assert r.status_code == 406 and "slices=K" in r.json()["error"]
