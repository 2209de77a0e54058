"""The Open Inference Protocol through the gateway: tritonclient works unchanged, and the
gateway answers exactly what Triton (or ONNX Runtime) answers directly."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from gateway_harness import GatewayThread, TritonServer
from gateway_support import SIZE, make_settings

from pipelines.brain import CLASSIFIER, SEGMENTER, TYPE_CLASSIFIER


def _batch(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def _http_infer(
    url: str, model: str, x: np.ndarray, headers: dict[str, str] | None, binary: bool = True
) -> np.ndarray:
    client = thttp.InferenceServerClient(url)
    inp = thttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = thttp.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(model, [inp], outputs=[out], headers=dict(headers or {}))
    array: np.ndarray = result.as_numpy("probabilities")
    client.close()
    return array


def _grpc_infer(url: str, model: str, x: np.ndarray, headers: dict[str, str] | None) -> np.ndarray:
    client = tgrpc.InferenceServerClient(url)
    inp = tgrpc.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], headers=dict(headers or {}))
    array: np.ndarray = result.as_numpy("probabilities")
    client.close()
    return array


@pytest.mark.integration
@pytest.mark.parametrize("gateway_fixture", ["triton_http_gateway", "triton_grpc_gateway"])
@pytest.mark.parametrize("model", [CLASSIFIER, SEGMENTER, TYPE_CLASSIFIER])
def test_tritonclient_over_http_and_grpc_gets_through_the_gateway_what_triton_answers_directly(
    request: pytest.FixtureRequest,
    gateway_fixture: str,
    model: str,
    triton: TritonServer,
    client_headers: dict[str, str],
) -> None:
    gateway: GatewayThread = request.getfixturevalue(gateway_fixture)
    x = _batch(seed=hash(model) % 1000)
    direct = _http_infer(triton.http_url, model, x, None)
    assert direct.shape[0] == 3
    np.testing.assert_array_equal(_http_infer(gateway.url, model, x, client_headers), direct)
    np.testing.assert_array_equal(_grpc_infer(gateway.grpc_url, model, x, client_headers), direct)
    np.testing.assert_array_equal(_grpc_infer(triton.grpc_url, model, x, None), direct)


def test_the_embedded_onnx_backend_answers_what_onnx_runtime_computes(
    onnx_gateway: GatewayThread, tiny_models: dict[str, Path], client_headers: dict[str, str]
) -> None:
    x = _batch(seed=7)
    expected = ort.InferenceSession(str(tiny_models[SEGMENTER])).run(None, {"image": x})[0]
    np.testing.assert_allclose(
        _http_infer(onnx_gateway.url, SEGMENTER, x, client_headers), expected, rtol=1e-6
    )
    np.testing.assert_allclose(
        _grpc_infer(onnx_gateway.grpc_url, SEGMENTER, x, client_headers), expected, rtol=1e-6
    )


def test_json_tensors_and_binary_tensors_give_the_same_answer(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    x = _batch(n=2, seed=3)
    binary = _http_infer(onnx_gateway.url, CLASSIFIER, x, client_headers, binary=True)
    as_json = _http_infer(onnx_gateway.url, CLASSIFIER, x, client_headers, binary=False)
    np.testing.assert_allclose(as_json, binary, rtol=1e-6)
    # A plain JSON client (no tritonclient) gets a plain JSON answer.
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
    r = httpx.post(
        f"http://{onnx_gateway.url}/v2/models/{CLASSIFIER}/infer", json=body, headers=client_headers
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == CLASSIFIER and doc["model_version"] == "1"
    np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]).reshape(2, 2), binary, rtol=1e-6)


def test_every_inference_answer_names_its_variant_and_model_version(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    x = _batch(n=1)
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
    r = httpx.post(
        f"http://{onnx_gateway.url}/v2/models/{CLASSIFIER}/infer", json=body, headers=client_headers
    )
    assert r.headers["x-medops-variant"] == "champion"
    assert r.headers["x-medops-model-version"] == "1"
    assert len(r.headers["x-request-id"]) >= 16
    # gRPC: the same facts in the initial metadata.
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(onnx_gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        msg = service_pb2.ModelInferRequest(model_name=CLASSIFIER)
        msg.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
        msg.raw_input_contents.append(x.tobytes())
        response, call = stub.ModelInfer.with_call(msg, metadata=tuple(client_headers.items()))
        meta = dict(call.initial_metadata())
    assert meta["x-medops-variant"] == "champion" and meta["x-medops-model-version"] == "1"
    assert response.model_version == "1" and len(response.raw_output_contents) == 1


def test_health_and_metadata_speak_the_protocol_on_both_transports(
    triton_http_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    url = triton_http_gateway.url
    http = thttp.InferenceServerClient(url)
    assert http.is_server_live() and http.is_server_ready()  # health needs no key
    assert http.is_model_ready(SEGMENTER, headers=dict(client_headers))
    meta = http.get_model_metadata(SEGMENTER, headers=dict(client_headers))
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert meta["outputs"][0]["shape"] == [-1, 1, SIZE, SIZE]
    assert meta["parameters"]["task"] == "segmentation"
    assert http.get_server_metadata(headers=dict(client_headers))["name"] == "medops-gateway"
    grpc_client = tgrpc.InferenceServerClient(triton_http_gateway.grpc_url)
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready(CLASSIFIER, headers=dict(client_headers))
    gmeta = grpc_client.get_model_metadata(CLASSIFIER, headers=dict(client_headers), as_json=True)
    assert gmeta["inputs"][0]["name"] == "image" and gmeta["outputs"][0]["name"] == "probabilities"
    assert (
        "binary_tensor_data"
        in grpc_client.get_server_metadata(headers=dict(client_headers)).extensions
    )


@pytest.mark.integration
def test_any_v2_server_over_plain_json_works_as_a_backend(
    tiny_models: dict[str, Path],
    gateway_home: Path,
    triton: TritonServer,
    client_headers: dict[str, str],
) -> None:
    settings = make_settings(
        gateway_home, tiny_models, backend="v2-http", backend_url=triton.http_url
    )
    x = _batch(n=2, seed=11)
    with GatewayThread(settings) as gw:
        got = _http_infer(gw.url, CLASSIFIER, x, client_headers)
    np.testing.assert_allclose(got, _http_infer(triton.http_url, CLASSIFIER, x, None), rtol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["triton-http", "triton-grpc"])
def test_tensors_handed_to_triton_through_shared_memory_give_the_same_answers(
    backend: str,
    tiny_models: dict[str, Path],
    gateway_home: Path,
    triton: TritonServer,
    client_headers: dict[str, str],
) -> None:
    # Slots of 100 kB: a 2-slice batch (98 kB) goes through shared memory, 3 slices go inline.
    settings = make_settings(
        gateway_home,
        tiny_models,
        backend=backend,
        backend_url=triton.http_url if backend == "triton-http" else triton.grpc_url,
        shared_memory=True,
        shared_memory_slots=2,
        shared_memory_slot_bytes=100_000,
    )
    with GatewayThread(settings) as gw:
        status = httpx.get(f"http://{triton.http_url}/v2/systemsharedmemory/status").json()
        ours = [r for r in status if r["name"].startswith("medops-")]
        assert len(ours) == 2 and all(r["byte_size"] == 100_000 for r in ours)
        for n in (2, 3):
            x = _batch(n=n, seed=n)
            direct = _http_infer(triton.http_url, SEGMENTER, x, None)
            np.testing.assert_array_equal(_http_infer(gw.url, SEGMENTER, x, client_headers), direct)
            np.testing.assert_array_equal(
                _grpc_infer(gw.grpc_url, SEGMENTER, x, client_headers), direct
            )
            held = [Path("/dev/shm", r["name"]).read_bytes()[: x.nbytes] for r in ours]
            # The 2-slice batch went through a region; the 3-slice one did not fit.
            assert (x.tobytes() in held) == (n == 2)
    status = httpx.get(f"http://{triton.http_url}/v2/systemsharedmemory/status").json()
    assert not [r for r in status if r["name"].startswith("medops-")]  # unregistered on stop
