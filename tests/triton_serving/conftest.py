"""Real Triton 2.51 (from .venv-triton) on free loopback ports, stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_harness import TritonServer, write_repository, write_tiny_model

from pipelines.brain import CLASSIFIER, SEGMENTER


@pytest.fixture(scope="module")
def triton_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("triton-models")
    return {
        CLASSIFIER: write_tiny_model(CLASSIFIER, folder / "classifier.onnx", size=32),
        SEGMENTER: write_tiny_model(SEGMENTER, folder / "segmenter.onnx", size=32, seed=1),
    }


@pytest.fixture(scope="module")
def triton_repository(
    triton_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The repository as the pipeline's export writes it (KIND_GPU config + configs/cpu.pbtxt)."""
    return write_repository(
        tmp_path_factory.mktemp("triton-repo") / "repository",
        {name: (path, 1) for name, path in triton_models.items()},
    )


@pytest.fixture(scope="module")
def triton_server(triton_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(triton_repository) as server:
        yield server
