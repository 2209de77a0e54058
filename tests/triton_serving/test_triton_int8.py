"""An int8 edge version is a Triton repository entry like any other: Triton on CPU serves it
beside its float32 source, with the answers ONNX Runtime gives in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as thttp
from gateway_harness import TritonServer, write_tiny_model

from medops.export.quantize import INT8, precision, quantize_int8
from medops.export.triton import TritonModel, write_triton_repository
from pipelines.brain import SEGMENTER

pytestmark = pytest.mark.integration


def _direct(path: Path, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = ort.InferenceSession(str(path)).run(None, {"image": x})[0]
    return out


def test_triton_serves_an_int8_version_beside_its_float32_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    source = write_tiny_model(SEGMENTER, tmp_path / "segmenter.onnx", size=32, seed=1)
    calibration = rng.random((32, 3, 32, 32), dtype=np.float32)
    quantized = quantize_int8(source, tmp_path / "segmenter-int8.onnx", calibration).path
    assert precision(quantized) == INT8
    # as publish writes them: the float32 champion v1 and the int8 challenger v2 of one model
    repository = write_triton_repository(
        [
            TritonModel(SEGMENTER, 1, source),
            TritonModel(SEGMENTER, 2, quantized, parameters={"alias": "challenger"}),
        ],
        tmp_path / "repository",
    )
    x = rng.random((4, 3, 32, 32), dtype=np.float32)
    with TritonServer(repository) as server:
        client = thttp.InferenceServerClient(server.http_url)
        answers = {}
        for version in ("1", "2"):
            assert client.is_model_ready(SEGMENTER, version)
            inp = thttp.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            answers[version] = client.infer(SEGMENTER, [inp], model_version=version).as_numpy(
                "probabilities"
            )
    int8 = answers["2"]
    np.testing.assert_allclose(int8, _direct(quantized, x), atol=1e-5)
    # an int8 answer, not the float32 one under another name; close to it all the same
    float32 = answers["1"]
    assert not np.array_equal(int8, float32)
    assert float(np.abs(int8 - float32).max()) < 0.1
