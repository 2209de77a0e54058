"""Every failure gets its status and a message, and the gateway keeps serving afterwards."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from aiohttp import web
from gateway_harness import GatewayThread, TritonServer, free_port, write_repository
from gateway_support import SIZE, make_settings
from tritonclient.utils import InferenceServerException

from pipelines.brain import CLASSIFIER

X = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)


def infer_body(x: np.ndarray = X, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        **extra,
    }


def still_serving(gw: GatewayThread, headers: dict[str, str]) -> None:
    r = httpx.post(
        f"http://{gw.url}/v2/models/{CLASSIFIER}/infer",
        json=infer_body(),
        headers=headers,
        timeout=30,
    )
    assert r.status_code == 200, r.text


def error_of(r: httpx.Response) -> str:
    message: str = r.json()["error"]
    return message


def test_bad_input_is_a_400_that_says_what_is_wrong(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    url = f"http://{onnx_gateway.url}/v2/models/{CLASSIFIER}/infer"
    cases = [
        (b"{not json", "not valid JSON"),
        (
            json.dumps(infer_body(np.zeros((1, 3, 32, 32), np.float32))).encode(),
            "shape [1, 3, 32, 32]",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "INT8", "shape": [1], "data": [1]}]}
            ).encode(),
            "must be FP32",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
            ).encode(),
            "missing input",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "FP32",
                            "shape": [1, 3, SIZE, SIZE],
                            "data": [1.0, 2.0],
                        }
                    ]
                }
            ).encode(),
            "values do not match",
        ),
        (json.dumps({"outputs": []}).encode(), "non-empty 'inputs'"),
    ]
    for body, fragment in cases:
        r = httpx.post(
            url, content=body, headers={**client_headers, "content-type": "application/json"}
        )
        assert r.status_code == 400, (fragment, r.text)
        assert fragment in error_of(r)
    r = httpx.post(
        url, content=b"{}", headers={**client_headers, "inference-header-content-length": "99"}
    )
    assert r.status_code == 400 and "larger than the body" in error_of(r)
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze?segment=sometimes",
        content=b"x",
        headers=client_headers,
    )
    assert r.status_code == 400 and "segment must be one of" in error_of(r)
    r = httpx.post(f"http://{onnx_gateway.url}/v1/analyze", content=b"", headers=client_headers)
    assert r.status_code == 400 and "empty body" in error_of(r)
    broken_tiff = b"II*\x00" + b"\x00" * 40
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze", content=broken_tiff, headers=client_headers
    )
    assert r.status_code == 400, r.text
    still_serving(onnx_gateway, client_headers)


def test_grpc_bad_input_is_invalid_argument(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    client = tgrpc.InferenceServerClient(onnx_gateway.grpc_url)
    inp = tgrpc.InferInput("image", [1, 3, 32, 32], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer(CLASSIFIER, [inp], headers=dict(client_headers))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "shape" in err.value.message()


def test_unsupported_media_is_a_415_and_unacceptable_answers_a_406(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze",
        content=b"just some text, not an image",
        headers={**client_headers, "content-type": "text/plain"},
    )
    assert r.status_code == 415 and "unrecognised image format" in error_of(r)
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze",
        content=b"x",
        headers={**client_headers, "accept": "text/csv"},
    )
    assert r.status_code == 406 and "offered" in error_of(r)
    still_serving(onnx_gateway, client_headers)


def test_unknown_models_and_versions_are_404_on_both_transports(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    base = f"http://{onnx_gateway.url}/v2/models"
    r = httpx.post(f"{base}/no-such-model/infer", json=infer_body(), headers=client_headers)
    assert r.status_code == 404 and "unknown model 'no-such-model'" in error_of(r)
    assert httpx.get(f"{base}/no-such-model", headers=client_headers).status_code == 404
    r = httpx.post(
        f"{base}/{CLASSIFIER}/versions/42/infer", json=infer_body(), headers=client_headers
    )
    assert r.status_code == 404 and "version 42" in error_of(r)
    assert (
        httpx.get(f"http://{onnx_gateway.url}/v2/nowhere", headers=client_headers).status_code
        == 404
    )
    client = tgrpc.InferenceServerClient(onnx_gateway.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no-such-model", headers=dict(client_headers))
    assert err.value.status() == "StatusCode.NOT_FOUND"
    still_serving(onnx_gateway, client_headers)


def test_a_missing_key_is_401_a_wrong_key_403_and_a_client_key_cannot_change_routing(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    url = f"http://{onnx_gateway.url}/v2/models/{CLASSIFIER}/infer"
    r = httpx.post(url, json=infer_body())
    assert r.status_code == 401 and "missing API key" in error_of(r)
    r = httpx.post(url, json=infer_body(), headers={"authorization": "Bearer not-a-real-key"})
    assert r.status_code == 403 and "not recognised" in error_of(r)
    r = httpx.post(url, json=infer_body(), headers={"authorization": "Basic abc"})
    assert r.status_code == 401
    assert (
        httpx.get(f"http://{onnx_gateway.url}/v2/health/ready").status_code == 200
    )  # health is open
    assert httpx.get(f"http://{onnx_gateway.url}/v1/routing").status_code == 401
    r = httpx.put(
        f"http://{onnx_gateway.url}/v1/routing", json={"models": {}}, headers=client_headers
    )
    assert r.status_code == 403 and "admin" in error_of(r)
    client = tgrpc.InferenceServerClient(onnx_gateway.grpc_url)
    assert client.is_server_live()
    for headers, code in [
        ({}, "UNAUTHENTICATED"),
        ({"authorization": "Bearer wrong"}, "PERMISSION_DENIED"),
    ]:
        with pytest.raises(InferenceServerException) as err:
            client.get_model_metadata(CLASSIFIER, headers=headers)
        assert err.value.status() == f"StatusCode.{code}"
    still_serving(onnx_gateway, client_headers)


def test_too_large_bodies_are_413_whether_declared_or_streamed(
    tiny_models: dict[str, Path], gateway_home: Path, client_headers: dict[str, str]
) -> None:
    settings = make_settings(gateway_home, tiny_models, max_request_bytes=300_000)
    big = np.random.default_rng(1).random((8, 3, SIZE, SIZE), dtype=np.float32)  # 393 kB binary
    with GatewayThread(settings) as gw:
        url = f"http://{gw.url}/v2/models/{CLASSIFIER}/infer"
        r = httpx.post(url, json=infer_body(big), headers=client_headers)
        assert r.status_code == 413 and "exceeds the limit" in error_of(r)

        def chunks() -> Iterator[bytes]:
            yield json.dumps(infer_body(big)).encode()

        r = httpx.post(url, content=chunks(), headers=client_headers)  # chunked: no Content-Length
        assert r.status_code == 413
        r = httpx.post(
            f"http://{gw.url}/v1/analyze", content=b"\0" * 400_000, headers=client_headers
        )
        assert r.status_code == 413
        grpc_client = tgrpc.InferenceServerClient(gw.grpc_url)
        inp = tgrpc.InferInput("image", list(big.shape), "FP32")
        inp.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException) as err:
            grpc_client.infer(CLASSIFIER, [inp], headers=dict(client_headers))
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        still_serving(gw, client_headers)


class SlowV2Server:
    """A minimal Open Inference Protocol server whose infer hangs when the request id says so:
    the only way to make a backend time out on demand."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _infer(self, request: web.Request) -> web.Response:
        doc = await request.json()
        if doc.get("id") == "slow":
            await asyncio.sleep(3)
        n = doc["inputs"][0]["shape"][0]
        out = {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [n, 2],
            "data": [0.5] * (2 * n),
        }
        return web.json_response(
            {"model_name": request.match_info["m"], "model_version": "1", "outputs": [out]}
        )

    async def _meta(self, request: web.Request) -> web.Response:
        return web.json_response({
            "name": request.match_info["m"], "versions": ["1"], "platform": "test",
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
        })  # fmt: skip

    async def _ok(self, _: web.Request) -> web.Response:
        return web.json_response({})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v2/health/live", self._ok)
        app.router.add_get("/v2/models/{m}/versions/{v}/ready", self._ok)
        app.router.add_get("/v2/models/{m}/versions/{v}", self._meta)
        app.router.add_post("/v2/models/{m}/versions/{v}/infer", self._infer)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> SlowV2Server:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_a_backend_past_its_deadline_is_a_504_and_the_next_request_succeeds(
    tiny_models: dict[str, Path], gateway_home: Path, client_headers: dict[str, str]
) -> None:
    with SlowV2Server() as slow:
        settings = make_settings(
            gateway_home,
            tiny_models,
            backend="v2-http",
            backend_url=f"127.0.0.1:{slow.port}",
            request_timeout_s=0.5,
        )
        with GatewayThread(settings) as gw:
            url = f"http://{gw.url}/v2/models/{CLASSIFIER}/infer"
            r = httpx.post(url, json=infer_body(id="slow"), headers=client_headers, timeout=30)
            assert r.status_code == 504 and "did not answer within 0.5 s" in error_of(r)
            client = tgrpc.InferenceServerClient(gw.grpc_url)
            inp = tgrpc.InferInput("image", list(X.shape), "FP32")
            inp.set_data_from_numpy(X)
            with pytest.raises(InferenceServerException) as err:
                client.infer(CLASSIFIER, [inp], request_id="slow", headers=dict(client_headers))
            assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            still_serving(gw, client_headers)


@pytest.mark.integration
def test_a_backend_that_goes_down_makes_requests_503_and_readiness_false_but_liveness_stays(
    tiny_models: dict[str, Path], gateway_home: Path, client_headers: dict[str, str], tmp_path: Path
) -> None:
    repo = write_repository(tmp_path / "repo", {CLASSIFIER: (tiny_models[CLASSIFIER], 1)})
    settings_models = {CLASSIFIER: tiny_models[CLASSIFIER]}
    triton = TritonServer(repo).start()
    try:
        settings = make_settings(
            gateway_home,
            settings_models,
            models=[CLASSIFIER],
            backend="triton-http",
            backend_url=triton.http_url,
        )
        with GatewayThread(settings) as gw:
            assert httpx.get(f"http://{gw.url}/v2/health/ready").status_code == 200
            still_serving(gw, client_headers)
            triton.stop()
            r = httpx.post(
                f"http://{gw.url}/v2/models/{CLASSIFIER}/infer",
                json=infer_body(),
                headers=client_headers,
            )
            assert r.status_code == 503 and "unreachable" in error_of(r)
            client = tgrpc.InferenceServerClient(gw.grpc_url)
            inp = tgrpc.InferInput("image", list(X.shape), "FP32")
            inp.set_data_from_numpy(X)
            with pytest.raises(InferenceServerException) as err:
                client.infer(CLASSIFIER, [inp], headers=dict(client_headers))
            assert err.value.status() == "StatusCode.UNAVAILABLE"
            assert httpx.get(f"http://{gw.url}/v2/health/ready").status_code == 503
            assert httpx.get(f"http://{gw.url}/v2/health/live").status_code == 200
    finally:
        triton.stop()


def test_a_gateway_whose_backend_never_came_up_is_live_but_not_ready(
    tiny_models: dict[str, Path], gateway_home: Path, client_headers: dict[str, str]
) -> None:
    settings = make_settings(
        gateway_home, tiny_models, backend="triton-grpc", backend_url=f"127.0.0.1:{free_port()}"
    )
    with GatewayThread(settings) as gw:
        assert httpx.get(f"http://{gw.url}/v2/health/live").status_code == 200
        r = httpx.get(f"http://{gw.url}/v2/health/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = httpx.post(
            f"http://{gw.url}/v2/models/{CLASSIFIER}/infer",
            json=infer_body(),
            headers=client_headers,
        )
        assert r.status_code == 503
        assert tgrpc.InferenceServerClient(gw.grpc_url).is_server_ready() is False


def test_an_unexpected_failure_is_a_500_that_reveals_nothing_and_is_logged(
    tiny_models: dict[str, Path],
    gateway_home: Path,
    client_headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(gateway_home, tiny_models)
    with GatewayThread(settings) as gw:
        backend = gw.gateway.backend

        async def broken(*_: object, **__: object) -> None:
            raise RuntimeError("secret internal detail at /srv/models")

        backend.infer = broken  # type: ignore[method-assign,assignment]
        with caplog.at_level("ERROR", logger="medops.service.errors"):
            r = httpx.post(
                f"http://{gw.url}/v2/models/{CLASSIFIER}/infer",
                json=infer_body(),
                headers=client_headers,
            )
        assert r.status_code == 500
        assert "secret" not in r.text and "internal error (id " in error_of(r)
        error_id = error_of(r).split("id ")[1].rstrip(")")
        assert any(getattr(rec, "error_id", None) == error_id for rec in caplog.records)
        assert httpx.get(f"http://{gw.url}/v2/health/live").status_code == 200
