"""NaN or ±Inf in a V2 input is a 400 / INVALID_ARGUMENT naming the input, on every wire
format, unless the model's metadata says it accepts them."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from gateway_harness import GatewayThread, write_tiny_model
from gateway_support import SIZE, make_settings, read_keys
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from medops.errors import InvalidInputError
from medops.modelspec import META_ACCEPTS_NONFINITE
from medops.registry.client import read_onnx_info
from pipelines.brain import CLASSIFIER, SEGMENTER
from services.gateway.types import count_nonfinite


def _poisoned(seed: int = 0) -> np.ndarray:
    """A valid classifier batch with one NaN, one +Inf and one -Inf among its pixels."""
    x = np.random.default_rng(seed).random((1, 3, SIZE, SIZE), dtype=np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 1, 5, 7] = np.inf
    x[0, 2, SIZE - 1, SIZE - 1] = -np.inf
    return x


def _json_body(x: np.ndarray) -> str:
    """A V2 JSON body as a client would write it: Python's json spells the specials
    ``NaN``, ``Infinity`` and ``-Infinity``."""
    values = ", ".join(
        "NaN" if np.isnan(v) else ("Infinity" if v > 0 else "-Infinity") if np.isinf(v) else repr(v)
        for v in x.ravel().tolist()
    )
    shape = list(x.shape)
    return (
        f'{{"inputs": [{{"name": "image", "datatype": "FP32", "shape": {shape}, '
        f'"data": [{values}]}}]}}'
    )


def _says_which_input_and_how_many(message: str) -> None:
    assert "'image'" in message and "3 non-finite value(s)" in message, message


def test_count_nonfinite_reads_raw_buffers_and_arrays_and_ignores_integer_dtypes() -> None:
    x = _poisoned()
    assert count_nonfinite(x.dtype, x) == 3
    assert count_nonfinite(x.dtype, x.tobytes()) == 3
    assert count_nonfinite(np.dtype(np.float16), x.astype(np.float16).tobytes()) == 3
    assert count_nonfinite(np.dtype(np.float64), memoryview(np.array([1.0, 2.0]).tobytes())) == 0
    # Integer bytes that would read as NaN if taken for floats are not floats.
    nan_bits = np.array([np.nan], np.float32).view(np.int32)
    assert count_nonfinite(nan_bits.dtype, nan_bits.tobytes()) == 0


def test_rest_json_with_nan_or_infinity_is_a_400_naming_the_input(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    url = f"http://{onnx_gateway.url}/v2/models/{CLASSIFIER}/infer"
    r = httpx.post(
        url,
        content=_json_body(_poisoned()),
        headers={**client_headers, "content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    _says_which_input_and_how_many(r.json()["error"])
    # A number too large for the datatype overflows to Inf: refused just the same.
    finite = _json_body(np.zeros((1, 3, SIZE, SIZE), np.float32)).replace("0.0", "1e39", 1)
    r = httpx.post(
        url, content=finite, headers={**client_headers, "content-type": "application/json"}
    )
    assert r.status_code == 400 and "1 non-finite value(s)" in r.json()["error"], r.text


def test_rest_binary_tensors_with_nan_or_infinity_are_a_400_naming_the_input(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    client = thttp.InferenceServerClient(onnx_gateway.url)
    inp = thttp.InferInput("image", [1, 3, SIZE, SIZE], "FP32")
    inp.set_data_from_numpy(_poisoned(), binary_data=True)
    with pytest.raises(InferenceServerException) as err:
        client.infer(CLASSIFIER, [inp], headers=dict(client_headers))
    client.close()
    assert err.value.status() == "400"
    _says_which_input_and_how_many(err.value.message())


def test_grpc_raw_and_typed_contents_with_nan_or_infinity_are_invalid_argument(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    x = _poisoned()
    # raw_input_contents, as tritonclient sends them
    client = tgrpc.InferenceServerClient(onnx_gateway.grpc_url)
    inp = tgrpc.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as err:
        client.infer(CLASSIFIER, [inp], headers=dict(client_headers))
    client.close()
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    _says_which_input_and_how_many(err.value.message())
    # typed fp32_contents
    with grpc.insecure_channel(onnx_gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        msg = service_pb2.ModelInferRequest(model_name=CLASSIFIER)
        spec = msg.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
        spec.contents.fp32_contents.extend(x.ravel().tolist())
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ModelInfer(msg, metadata=tuple(client_headers.items()))
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _says_which_input_and_how_many(rpc.value.details() or "")


def test_a_model_whose_metadata_accepts_nonfinite_values_gets_them(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    lenient = write_tiny_model(
        CLASSIFIER,
        tmp_path / "classifier.onnx",
        size=SIZE,
        metadata={META_ACCEPTS_NONFINITE: "true"},
    )
    assert read_onnx_info(lenient).accepts_nonfinite
    assert not read_onnx_info(tiny_models[CLASSIFIER]).accepts_nonfinite
    files = tiny_models | {CLASSIFIER: lenient}
    with GatewayThread(make_settings(tmp_path / "home", files)) as gw:
        headers = {"authorization": f"Bearer {read_keys(tmp_path / 'home')['client']}"}
        meta = httpx.get(f"http://{gw.url}/v2/models/{CLASSIFIER}", headers=headers).json()
        assert meta["parameters"]["accepts_nonfinite"] is True
        r = httpx.post(
            f"http://{gw.url}/v2/models/{CLASSIFIER}/infer",
            content=_json_body(_poisoned()),
            headers={**headers, "content-type": "application/json"},
        )
        assert r.status_code == 200, r.text
        # The values reached the model: its answer carries the NaN through.
        assert np.isnan(np.asarray(r.json()["outputs"][0]["data"], dtype=float)).any()
        # The other models keep refusing them.
        grpc_client = tgrpc.InferenceServerClient(gw.grpc_url)
        seg = tgrpc.InferInput("image", [1, 3, SIZE, SIZE], "FP32")
        seg.set_data_from_numpy(_poisoned())
        with pytest.raises(InferenceServerException) as err:
            grpc_client.infer(SEGMENTER, [seg], headers=headers)
        grpc_client.close()
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_garbled_accepts_nonfinite_flag_is_refused_when_the_model_is_read(
    tmp_path: Path,
) -> None:
    garbled = write_tiny_model(
        CLASSIFIER, tmp_path / "c.onnx", size=SIZE, metadata={META_ACCEPTS_NONFINITE: "yes"}
    )
    with pytest.raises(InvalidInputError, match=META_ACCEPTS_NONFINITE):
        read_onnx_info(garbled)
