"""The clinical plane over :class:`~medops.clinical.v2.V2Predictor` (what the DICOM edge
runs) against a real gateway gives the gateway's own ``/v1/analyze`` answer, routed by the
gateway and applying the segmenter's rule from its metadata."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_harness import GatewayThread

from medops.clinical import AnalyzeRequest, Chain, ClinicalPlane, Upload
from medops.clinical.v2 import V2Predictor
from medops.errors import BackendUnavailableError, MedopsError
from medops.imaging.dicom import write_dicom_series
from medops.imaging.lgg import lgg_patient_volume
from medops.rle import rle_decode_volume
from pipelines.brain import CLASSIFIER, SEGMENTER


def test_the_plane_over_v2_gives_the_gateways_own_analysis_of_a_dicom_series(
    onnx_gateway: GatewayThread,
    lgg_patient: Path,
    client_headers: dict[str, str],
    keys: dict[str, str],
    tmp_path: Path,
) -> None:
    files = write_dicom_series(lgg_patient_volume(lgg_patient), tmp_path)
    blobs = tuple(p.read_bytes() for p in files)
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze",
        files=[("files", (f"{i}.dcm", b, "application/dicom")) for i, b in enumerate(blobs)],
        headers=client_headers,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    expected = r.json()

    async def analyse() -> tuple[np.ndarray, np.ndarray, str, str]:
        predictor = V2Predictor(f"http://{onnx_gateway.url}", api_key=keys["client"])
        plane = ClinicalPlane(
            predictor, {"brain": Chain(classifier=CLASSIFIER, segmenter=SEGMENTER)}
        )
        try:
            a = await plane.analyze(AnalyzeRequest(Upload(blobs), chain="brain"))
        finally:
            await predictor.aclose()
        assert a.segmenter is not None
        return a.probabilities, a.mask, a.first.route.variant, a.segmenter.route.version

    probabilities, mask, variant, version = asyncio.run(analyse())
    np.testing.assert_allclose(
        probabilities, [s["probability"] for s in expected["slices"]], atol=1e-5
    )
    np.testing.assert_array_equal(mask, rle_decode_volume(expected["mask"]["slices"]))
    assert mask.any()
    assert variant == expected["models"]["classifier"]["variant"] == "champion"
    assert version == expected["models"]["segmenter"]["version"]


def test_the_v2_predictor_names_what_went_wrong_without_a_key_or_an_endpoint(
    onnx_gateway: GatewayThread, keys: dict[str, str]
) -> None:
    async def route(url: str, key: str | None, model: str = CLASSIFIER) -> None:
        predictor = V2Predictor(url, api_key=key, timeout_s=5)
        try:
            await predictor.route(model, {})
        finally:
            await predictor.aclose()

    with pytest.raises(BackendUnavailableError, match="answered 401"):
        asyncio.run(route(f"http://{onnx_gateway.url}", None))
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        asyncio.run(route("http://127.0.0.1:9", "k"))
    with pytest.raises(BackendUnavailableError, match="answered 403"):
        asyncio.run(route(f"http://{onnx_gateway.url}", "not-a-key"))
    # an unknown model is the caller's mistake, not an outage: no retry would help
    with pytest.raises(MedopsError, match="answered 404") as unknown:
        asyncio.run(route(f"http://{onnx_gateway.url}", keys["client"], "no-such-model"))
    assert not isinstance(unknown.value, BackendUnavailableError)
