"""Gateway fixtures: tiny contract-abiding models, real Triton, real gateways on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_harness import GatewayThread, TritonServer, write_repository, write_tiny_model
from gateway_support import CLASSIFIER_THRESHOLD, SIZE, make_settings, read_keys

from pipelines.brain import CLASSIFIER, SEGMENTER, TYPE_CLASSIFIER


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        CLASSIFIER: write_tiny_model(
            CLASSIFIER, folder / "classifier.onnx", size=SIZE, threshold=CLASSIFIER_THRESHOLD
        ),
        SEGMENTER: write_tiny_model(SEGMENTER, folder / "segmenter.onnx", size=SIZE, seed=1),
        TYPE_CLASSIFIER: write_tiny_model(TYPE_CLASSIFIER, folder / "type.onnx", size=SIZE, seed=2),
    }


@pytest.fixture(scope="session")
def triton(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """Real Triton 2.51 on CPU serving the repository the pipeline's export writes."""
    repo = write_repository(
        tmp_path_factory.mktemp("triton") / "repository",
        {name: (path, 1) for name, path in tiny_models.items()},
    )
    with TritonServer(repo) as server:
        yield server


@pytest.fixture(scope="session")
def gateway_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-home")


@pytest.fixture(scope="session")
def onnx_gateway(tiny_models: dict[str, Path], gateway_home: Path) -> Iterator[GatewayThread]:
    """The embedded default: in-process ONNX Runtime."""
    with GatewayThread(make_settings(gateway_home, tiny_models)) as gw:
        yield gw


@pytest.fixture(scope="session")
def triton_http_gateway(
    tiny_models: dict[str, Path], gateway_home: Path, triton: TritonServer
) -> Iterator[GatewayThread]:
    settings = make_settings(
        gateway_home, tiny_models, backend="triton-http", backend_url=triton.http_url
    )
    with GatewayThread(settings) as gw:
        yield gw


@pytest.fixture(scope="session")
def triton_grpc_gateway(
    tiny_models: dict[str, Path], gateway_home: Path, triton: TritonServer
) -> Iterator[GatewayThread]:
    settings = make_settings(
        gateway_home, tiny_models, backend="triton-grpc", backend_url=triton.grpc_url
    )
    with GatewayThread(settings) as gw:
        yield gw


@pytest.fixture(scope="session")
def keys(onnx_gateway: GatewayThread, gateway_home: Path) -> dict[str, str]:
    return read_keys(gateway_home)


@pytest.fixture(scope="session")
def client_headers(keys: dict[str, str]) -> dict[str, str]:
    return {"authorization": f"Bearer {keys['client']}"}


@pytest.fixture(scope="session")
def admin_headers(keys: dict[str, str]) -> dict[str, str]:
    return {"authorization": f"Bearer {keys['admin']}"}


@pytest.fixture(scope="session")
def lgg_patient(lgg_dir: Path) -> Path:
    """The first LGG patient (20 slices, tumour on some of them)."""
    patients = sorted(p for p in lgg_dir.iterdir() if p.is_dir())
    assert patients, f"no patient folders in {lgg_dir}"
    return patients[0]
