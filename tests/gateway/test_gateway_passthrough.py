"""Pass-through: a V2 request in the backend's own wire format is forwarded as bytes and its
answer returned as the backend wrote it, bit for bit what the decoding path and Triton itself
answer, and bad input is refused exactly as before."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from gateway_harness import GatewayThread, TritonServer
from gateway_support import SIZE, make_settings
from tritonclient.grpc import service_pb2

from medops.errors import InvalidInputError
from pipelines.brain import CLASSIFIER, SEGMENTER
from services.gateway.protowire import split_raw_contents, with_model_version
from services.gateway.types import GrpcWire, InferResponse, RestWire

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
LIMIT = 200_000
"""The gateways' body limit: 2 slices (98 kB) pass, 5 (246 kB) do not."""


def _batch(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


# ---------------------------------------------------------------------- clients on the wire


def rest_body(
    x: np.ndarray, *, name: str = "image", datatype: str = "FP32", size: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor body asking for a binary answer, and its headers."""
    raw = x.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw) if size is None else size},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + raw, headers


def rest_infer(
    url: str, model: str, body: bytes, headers: dict[str, str], auth: dict[str, str] | None
) -> httpx.Response:
    return httpx.post(
        f"http://{url}/v2/models/{model}/infer",
        content=body,
        headers={**headers, **(auth or {})},
        timeout=30,
    )


def rest_output_bytes(r: httpx.Response) -> bytes:
    assert r.status_code == 200, r.text
    return r.content[int(r.headers["inference-header-content-length"]) :]


def grpc_message(
    x: np.ndarray, model: str, *, name: str = "image", version: str = "", raws: int = 1
) -> bytes:
    msg = service_pb2.ModelInferRequest(model_name=model, model_version=version, id="req-7")
    msg.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    for _ in range(raws):
        msg.raw_input_contents.append(x.tobytes())
    data: bytes = msg.SerializeToString()
    return data


def grpc_infer(url: str, message: bytes, auth: dict[str, str] | None) -> bytes:
    """The serialised answer of a serialised request, as the server sent it."""
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary(MODEL_INFER)
        answer: bytes = call(message, metadata=tuple((auth or {}).items()), timeout=30)
    return answer


def grpc_output_bytes(answer: bytes) -> bytes:
    data: bytes = service_pb2.ModelInferResponse.FromString(answer).raw_output_contents[0]
    return data


# ---------------------------------------------------------------------- gateways


@pytest.fixture(scope="module")
def gateways(
    tiny_models: dict[str, Path], gateway_home: Path, triton: TritonServer
) -> Iterator[dict[tuple[str, bool], GatewayThread]]:
    """(backend, pass-through) -> a running gateway; every one with the same body limit."""
    urls = {"triton-http": triton.http_url, "triton-grpc": triton.grpc_url, "onnx": ""}
    started: dict[tuple[str, bool], GatewayThread] = {}
    try:
        for backend, url in urls.items():
            for passthrough in (True, False):
                settings = make_settings(
                    gateway_home,
                    tiny_models,
                    backend=backend,
                    backend_url=url or "127.0.0.1:1",
                    passthrough=passthrough,
                    max_request_bytes=LIMIT,
                )
                started[(backend, passthrough)] = GatewayThread(settings).start()
        yield started
    finally:
        for gw in started.values():
            gw.stop()


@contextlib.contextmanager
def answers_of(gw: GatewayThread) -> Iterator[list[InferResponse]]:
    """The data plane's answers while the block runs (the gateway runs in this process)."""
    plane = gw.gateway.dataplane
    seen: list[InferResponse] = []
    infer = plane.infer

    async def spy(*args: Any, **kwargs: Any) -> InferResponse:
        response = await infer(*args, **kwargs)
        seen.append(response)
        return response

    plane.infer = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del plane.infer


# ---------------------------------------------------------------------- same answers


@pytest.mark.integration
@pytest.mark.parametrize("model", [CLASSIFIER, SEGMENTER])
def test_rest_binary_answers_are_triton_s_own_bytes_and_match_the_decoding_path(
    model: str,
    gateways: dict[tuple[str, bool], GatewayThread],
    triton: TritonServer,
    client_headers: dict[str, str],
) -> None:
    body, headers = rest_body(_batch(seed=5))
    direct = rest_infer(triton.http_url, model, body, headers, None)
    with answers_of(gateways[("triton-http", True)]) as seen:
        fast = rest_infer(gateways[("triton-http", True)].url, model, body, headers, client_headers)
    # forwarded: the whole answer, JSON header included, is what Triton wrote
    assert fast.status_code == 200 and fast.content == direct.content
    assert isinstance(seen[0].wire, RestWire) and seen[0].wire.body == direct.content
    # decoded only for a classifier's prediction counts
    assert bool(seen[0].outputs) == (model == CLASSIFIER)
    assert fast.headers["x-medops-variant"] == "champion"
    assert fast.headers["x-medops-model-version"] == "1"
    for key in (("triton-http", False), ("triton-grpc", True), ("triton-grpc", False)):
        with answers_of(gateways[key]) as seen:
            decoded = rest_infer(gateways[key].url, model, body, headers, client_headers)
        assert seen[0].wire is None  # re-encoded by the gateway: the same tensor bytes
        assert rest_output_bytes(decoded) == rest_output_bytes(direct)


@pytest.mark.integration
@pytest.mark.parametrize("model", [CLASSIFIER, SEGMENTER])
@pytest.mark.parametrize("version", ["", "1"])
def test_grpc_raw_answers_are_triton_s_own_bytes_and_match_the_decoding_path(
    model: str,
    version: str,
    gateways: dict[tuple[str, bool], GatewayThread],
    triton: TritonServer,
    client_headers: dict[str, str],
) -> None:
    # routed (no version: the gateway names the one it chose) or pinned (forwarded as is)
    message = grpc_message(_batch(seed=6), model, version=version)
    direct = grpc_infer(triton.grpc_url, grpc_message(_batch(seed=6), model, version="1"), None)
    with answers_of(gateways[("triton-grpc", True)]) as seen:
        fast = grpc_infer(gateways[("triton-grpc", True)].grpc_url, message, client_headers)
    assert fast == direct
    assert isinstance(seen[0].wire, GrpcWire) and seen[0].wire.message == direct
    assert bool(seen[0].outputs) == (model == CLASSIFIER)
    answer = service_pb2.ModelInferResponse.FromString(fast)
    assert answer.id == "req-7" and answer.model_version == "1"
    for key in (("triton-grpc", False), ("triton-http", True), ("triton-http", False)):
        with answers_of(gateways[key]) as seen:
            decoded = grpc_infer(gateways[key].grpc_url, message, client_headers)
        assert seen[0].wire is None
        assert grpc_output_bytes(decoded) == grpc_output_bytes(direct)


@pytest.mark.integration
def test_the_onnx_backend_answers_the_same_bytes_with_and_without_pass_through(
    gateways: dict[tuple[str, bool], GatewayThread], client_headers: dict[str, str]
) -> None:
    x = _batch(seed=8)
    body, headers = rest_body(x)
    on, off = gateways[("onnx", True)], gateways[("onnx", False)]
    for model in (CLASSIFIER, SEGMENTER):
        fast = rest_output_bytes(rest_infer(on.url, model, body, headers, client_headers))
        assert fast == rest_output_bytes(rest_infer(off.url, model, body, headers, client_headers))
        message = grpc_message(x, model)
        fast_grpc = grpc_output_bytes(grpc_infer(on.grpc_url, message, client_headers))
        assert fast_grpc == grpc_output_bytes(grpc_infer(off.grpc_url, message, client_headers))
        assert fast_grpc == fast


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["triton-http", "triton-grpc"])
def test_requests_stages_and_prediction_counts_are_kept_on_the_fast_path(
    backend: str, gateways: dict[tuple[str, bool], GatewayThread], client_headers: dict[str, str]
) -> None:
    gw = gateways[(backend, True)]

    def metric(prefix: str, *labels: str) -> float:
        text = httpx.get(f"http://{gw.url}/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(prefix + "{")
            and f'model="{CLASSIFIER}"' in line
            and all(label in line for label in labels)
        )

    def counts() -> list[float]:
        return [
            metric("medops_requests_total", 'status="200"'),
            metric("medops_request_duration_seconds_count", 'stage="infer"'),
            metric("medops_request_duration_seconds_count", 'stage="total"'),
            metric("medops_predictions_total"),
        ]

    before = counts()
    x = _batch(n=2, seed=9)
    if backend == "triton-grpc":
        grpc_infer(gw.grpc_url, grpc_message(x, CLASSIFIER), client_headers)
    else:
        rest_output_bytes(rest_infer(gw.url, CLASSIFIER, *rest_body(x), client_headers))
    # one request, each stage observed once, and the forwarded answer decoded for its classes
    assert counts() == [before[0] + 1, before[1] + 1, before[2] + 1, before[3] + 2]


# ---------------------------------------------------------------------- bad input


def _rest_cases() -> list[tuple[str, str, bytes, dict[str, str], int, str]]:
    x, nan = _batch(n=1), _batch(n=1)
    nan[0, 0, 0, 0], nan[0, 1, 2, 3], nan[0, 2, 4, 5] = np.nan, np.inf, -np.inf
    short_body, short_headers = rest_body(x)
    region = {"shared_memory_region": "medops-0", "shared_memory_byte_size": 16}
    shm_input = {"name": "image", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE]}
    shm_in = json.dumps({"inputs": [{**shm_input, "parameters": region}]}).encode()
    out_header = json.dumps(
        {
            "inputs": [{**shm_input, "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "probabilities", "parameters": region}],
        }
    ).encode()
    shm_out = out_header + x.tobytes()
    out_headers = {"inference-header-content-length": str(len(out_header))}
    as_json = {"content-type": "application/json"}
    return [
        ("size vs shape", CLASSIFIER, *rest_body(x, size=1000), 400, "do not match shape"),
        ("short body", CLASSIFIER, short_body[:-4], short_headers, 400, "runs past the end"),
        ("unknown input", CLASSIFIER, *rest_body(x, name="pixels"), 400, "missing input"),
        ("datatype", CLASSIFIER, *rest_body(x.astype(np.float64), datatype="FP64"), 400,
         "must be FP32"),
        ("unknown model", "no-such-model", *rest_body(x), 404, "unknown model"),
        ("nan", CLASSIFIER, *rest_body(nan), 400, "3 non-finite value(s)"),
        ("too large", CLASSIFIER, *rest_body(_batch(n=5)), 413, "exceeds the limit"),
        ("shm input", CLASSIFIER, shm_in, as_json, 400, "shared memory parameters"),
        ("shm output", CLASSIFIER, shm_out, out_headers, 400, "shared memory parameters"),
    ]  # fmt: skip


@pytest.mark.integration
def test_bad_rest_input_on_the_fast_path_gets_the_same_4xx_as_the_decoding_path(
    gateways: dict[tuple[str, bool], GatewayThread], client_headers: dict[str, str]
) -> None:
    fast, decoding = gateways[("triton-http", True)], gateways[("triton-http", False)]
    for case, model, body, headers, status, fragment in _rest_cases():
        answers = [
            rest_infer(gw.url, model, body, headers, client_headers) for gw in (fast, decoding)
        ]
        assert [r.status_code for r in answers] == [status, status], (case, answers[0].text)
        assert fragment in answers[0].json()["error"], case
        assert answers[0].json()["error"] == answers[1].json()["error"], case
    body, headers = rest_body(_batch(n=1))
    assert rest_infer(fast.url, CLASSIFIER, body, headers, client_headers).status_code == 200


def _grpc_cases() -> list[tuple[str, bytes, grpc.StatusCode, str]]:
    x, nan = _batch(n=1), _batch(n=1)
    nan[0, 0, 0, 0], nan[0, 1, 2, 3], nan[0, 2, 4, 5] = np.nan, np.inf, -np.inf
    wrong_size = service_pb2.ModelInferRequest(model_name=CLASSIFIER)
    wrong_size.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    wrong_size.raw_input_contents.append(x.tobytes()[:-8])
    shm_in = service_pb2.ModelInferRequest(model_name=CLASSIFIER)
    spec = shm_in.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    spec.parameters["shared_memory_region"].string_param = "medops-0"
    shm_out = service_pb2.ModelInferRequest.FromString(grpc_message(x, CLASSIFIER))
    shm_out.outputs.add(name="probabilities").parameters["shared_memory_region"].string_param = "r"
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("size vs shape", wrong_size.SerializeToString(), invalid, "bytes do not match shape"),
        ("raw per input", grpc_message(x, CLASSIFIER, raws=2), invalid, "one entry per input"),
        ("unknown input", grpc_message(x, CLASSIFIER, name="pixels"), invalid, "missing input"),
        ("unknown model", grpc_message(x, "no-such-model"), grpc.StatusCode.NOT_FOUND,
         "unknown model"),
        ("nan", grpc_message(nan, CLASSIFIER), invalid, "3 non-finite value(s)"),
        ("too large", grpc_message(_batch(n=5), CLASSIFIER), grpc.StatusCode.RESOURCE_EXHAUSTED,
         ""),
        ("not protobuf", b"\x0a\xff\xff\xff", invalid, "ModelInferRequest"),
        ("shm input", shm_in.SerializeToString(), invalid, "shared memory parameters"),
        ("shm output", shm_out.SerializeToString(), invalid, "shared memory parameters"),
    ]  # fmt: skip


@pytest.mark.integration
def test_bad_grpc_input_on_the_fast_path_gets_the_same_status_as_the_decoding_path(
    gateways: dict[tuple[str, bool], GatewayThread], client_headers: dict[str, str]
) -> None:
    fast, decoding = gateways[("triton-grpc", True)], gateways[("triton-grpc", False)]
    for case, message, code, fragment in _grpc_cases():
        errors: list[Any] = []
        for gw in (fast, decoding):
            with pytest.raises(grpc.RpcError) as err:
                grpc_infer(gw.grpc_url, message, client_headers)
            errors.append(err.value)
        assert [e.code() for e in errors] == [code, code], (case, errors[0].details())
        assert fragment in (errors[0].details() or ""), case
        assert errors[0].details() == errors[1].details(), case
    grpc_infer(fast.grpc_url, grpc_message(_batch(n=1), CLASSIFIER), client_headers)


# ---------------------------------------------------------------------- shadow copies


@pytest.mark.integration
def test_a_shadow_copy_of_a_forwarded_request_runs_and_is_compared(
    tiny_models: dict[str, Path],
    gateway_home: Path,
    triton: TritonServer,
    client_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    routing = tmp_path / "routing.json"
    routing.write_text(
        json.dumps(
            {
                "models": {
                    CLASSIFIER: {
                        "strategy": "shadow",
                        "variants": [
                            {"name": "champion", "alias": "champion", "weight": 100},
                            {"name": "challenger", "version": "1", "weight": 0},
                        ],
                        "shadow": {"variant": "challenger", "percent": 100},
                    }
                }
            }
        )
    )
    settings = make_settings(
        gateway_home,
        tiny_models,
        backend="triton-grpc",
        backend_url=triton.grpc_url,
        routing_file=routing,
    )
    with GatewayThread(settings) as gw:
        fast = grpc_infer(gw.grpc_url, grpc_message(_batch(seed=10), CLASSIFIER), client_headers)
        assert service_pb2.ModelInferResponse.FromString(fast).model_version == "1"
        deadline = time.monotonic() + 20
        while True:
            doc = httpx.get(f"http://{gw.url}/v1/routing/decisions", headers=client_headers)
            rows = {r["variant"]: r for r in doc.json()["variants"] if r["model"] == CLASSIFIER}
            if rows.get("challenger", {}).get("compared", 0) >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert rows["challenger"]["shadowed"] == 1
    assert rows["challenger"]["compared"] == 1 and rows["challenger"]["disagreements"] == 0
    assert rows["challenger"]["errors"] == 0


# ---------------------------------------------------------------------- the wire format


def test_a_request_splits_into_its_small_fields_and_views_of_its_tensors() -> None:
    msg = service_pb2.ModelInferRequest(model_name="m", model_version="3", id="r")
    msg.parameters["priority"].int64_param = 2
    for i, shape in enumerate(([1, 3, 4, 4], [2])):
        msg.inputs.add(name=f"in{i}", datatype="FP32", shape=shape)
    msg.outputs.add(name="out")
    raws = [np.arange(48, dtype=np.float32).tobytes(), np.ones(2, np.float32).tobytes()]
    msg.raw_input_contents.extend(raws)
    data = msg.SerializeToString()
    small, views = split_raw_contents(data)
    assert len(small) < 100 and [bytes(v) for v in views] == raws
    assert all(v.obj is data for v in views)  # views of the received bytes, not copies
    header = service_pb2.ModelInferRequest.FromString(small)
    expected = service_pb2.ModelInferRequest()
    expected.CopyFrom(msg)
    del expected.raw_input_contents[:]
    assert header == expected
    renamed = service_pb2.ModelInferRequest.FromString(with_model_version(data, "12"))
    assert renamed.model_version == "12"
    renamed.model_version = "3"
    assert renamed == msg
    for broken in (data[:-3], b"\x0a\xff", b"\x0f"):
        with pytest.raises(InvalidInputError):
            split_raw_contents(broken)


def test_the_onnx_backend_runs_on_views_of_the_request_bytes(
    tiny_models: dict[str, Path],
) -> None:
    import asyncio

    from services.gateway.backends import OnnxBackend
    from services.gateway.types import InferRequest, Tensor

    x = _batch(n=1, seed=12)
    backend = OnnxBackend(threads=1)
    fed: list[np.ndarray] = []

    async def run(wire: bytes, offset: int) -> np.ndarray:
        await backend.load(CLASSIFIER, "1", tiny_models[CLASSIFIER])
        session = backend._sessions[(CLASSIFIER, "1")]
        real_run = session.run

        def spy(names: Any, feeds: dict[str, np.ndarray]) -> Any:
            fed.extend(feeds.values())
            return real_run(names, feeds)

        session.run = spy  # type: ignore[method-assign]
        view = np.frombuffer(memoryview(wire)[offset:], np.float32).reshape(x.shape)
        request = InferRequest(model=CLASSIFIER, inputs=[Tensor("image", view)])
        answer = await backend.infer(request, "1", 30.0)
        await backend.close()
        return np.asarray(answer.outputs[0].data)

    wire = b"\0" * 8 + x.tobytes()
    aligned = asyncio.run(run(wire, 8))
    assert np.shares_memory(fed[0], np.frombuffer(wire, np.uint8))  # a view, not a copy
    backend = OnnxBackend(threads=1)
    odd = b"\0" * 5 + x.tobytes()
    unaligned = asyncio.run(run(odd, 5))
    assert fed[1].flags.aligned and not np.shares_memory(fed[1], np.frombuffer(odd, np.uint8))
    np.testing.assert_array_equal(aligned, unaligned)
