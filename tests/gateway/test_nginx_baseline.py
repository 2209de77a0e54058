"""The reverse-proxy baseline of ``bench/gateway.py``: Debian's nginx, configured by the
benchmark's harness, proxies V2 requests over HTTP and gRPC unchanged (not a timing)."""

from __future__ import annotations

import re

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from gateway_harness import GatewayThread
from gateway_support import SIZE
from nginx_proxy import NginxProxy

from pipelines.brain import CLASSIFIER


def test_the_config_writes_nothing_outside_its_folder(onnx_gateway: GatewayThread) -> None:
    proxy = NginxProxy(onnx_gateway.url, onnx_gateway.grpc_url)
    try:
        proxy.check()  # nginx -t: it parses with Debian's modules (grpc_pass, http2)
        config = proxy.config_path.read_text()
        paths = re.findall(r"\s(/[^\s;]+)", config)
        assert paths, config
        assert all(p.startswith(str(proxy.folder)) for p in paths), paths
        assert f"listen 127.0.0.1:{proxy.http_port};" in config
        assert f"listen 127.0.0.1:{proxy.grpc_port} http2;" in config
        assert "keepalive_requests 1000000;" in config
    finally:
        proxy.stop()
    assert not proxy.folder.exists()


def test_nginx_proxies_a_v2_request_over_http_and_grpc_unchanged(
    onnx_gateway: GatewayThread, client_headers: dict[str, str]
) -> None:
    x = np.random.default_rng(3).random((2, 3, SIZE, SIZE), dtype=np.float32)
    with NginxProxy(onnx_gateway.url, onnx_gateway.grpc_url) as proxy:
        assert proxy.worker_pids(), "nginx started no workers"
        answers = []
        for url in (onnx_gateway.url, proxy.http_url):
            client = thttp.InferenceServerClient(url)
            inp = thttp.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            out = thttp.InferRequestedOutput("probabilities", binary_data=True)
            result = client.infer(CLASSIFIER, [inp], outputs=[out], headers=dict(client_headers))
            answers.append(result.as_numpy("probabilities"))
            client.close()
        for url in (onnx_gateway.grpc_url, proxy.grpc_url):
            grpc_client = tgrpc.InferenceServerClient(url)
            grpc_inp = tgrpc.InferInput("image", list(x.shape), "FP32")
            grpc_inp.set_data_from_numpy(x)
            grpc_result = grpc_client.infer(CLASSIFIER, [grpc_inp], headers=dict(client_headers))
            answers.append(grpc_result.as_numpy("probabilities"))
            grpc_client.close()
    assert proxy.proc is not None and proxy.proc.returncode is not None, "nginx outlived it"
    assert answers[0].shape == (2, 2)
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer, answers[0])
