"""The Triton binary from nvidia-pytriton serves unchanged ``backend: "onnxruntime"``
repositories on CPU through our Python ONNX Runtime backend."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from gateway_harness import TritonServer

from pipelines.brain import CLASSIFIER, SEGMENTER

pytestmark = pytest.mark.integration


def _direct(path: Path, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = ort.InferenceSession(str(path)).run(None, {"image": x})[0]
    return out


def test_triton_serves_the_exported_repository_over_http_and_grpc_with_onnx_runtime_results(
    triton_server: TritonServer, triton_models: dict[str, Path]
) -> None:
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    http = thttp.InferenceServerClient(triton_server.http_url)
    assert http.is_server_ready()
    config = http.get_model_config(SEGMENTER)
    assert config["backend"] == "onnxruntime"
    assert config["instance_group"][0]["kind"] == "KIND_CPU"  # configs/cpu.pbtxt was used
    assert "dynamic_batching" in config
    inp = thttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = http.infer(SEGMENTER, [inp]).as_numpy("probabilities")
    np.testing.assert_allclose(got, _direct(triton_models[SEGMENTER], x), rtol=1e-5, atol=1e-6)
    grpc = tgrpc.InferenceServerClient(triton_server.grpc_url)
    ginp = tgrpc.InferInput("image", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    got = grpc.infer(CLASSIFIER, [ginp]).as_numpy("probabilities")
    np.testing.assert_allclose(got, _direct(triton_models[CLASSIFIER], x), rtol=1e-5, atol=1e-6)


def test_concurrent_requests_batched_dynamically_each_get_their_own_answer(
    triton_server: TritonServer, triton_models: dict[str, Path]
) -> None:
    rng = np.random.default_rng(1)
    inputs = [rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(24)]

    def one(x: np.ndarray) -> np.ndarray:
        client = thttp.InferenceServerClient(triton_server.http_url)
        inp = thttp.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out: np.ndarray = client.infer(CLASSIFIER, [inp]).as_numpy("probabilities")
        client.close()
        return out

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, inputs))
    expected = _direct(triton_models[CLASSIFIER], np.concatenate(inputs))
    np.testing.assert_allclose(np.concatenate(answers), expected, rtol=1e-5, atol=1e-6)


def test_a_gpu_only_repository_is_served_from_a_cpu_copy_and_the_server_stops_by_pid(
    triton_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "gpu-only"
    shutil.copytree(triton_repository, repo)
    for cpu_config in repo.glob("*/configs"):
        shutil.rmtree(cpu_config)
    assert "KIND_GPU" in (repo / CLASSIFIER / "config.pbtxt").read_text()
    server = TritonServer(repo).start()
    pid = server.proc.pid if server.proc else -1
    try:
        client = thttp.InferenceServerClient(server.http_url)
        assert client.is_model_ready(CLASSIFIER)
        assert client.get_model_config(CLASSIFIER)["instance_group"][0]["kind"] == "KIND_CPU"
        assert "KIND_GPU" in (repo / CLASSIFIER / "config.pbtxt").read_text()  # source untouched
        client.close()
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
