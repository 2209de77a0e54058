"""Pipeline fixtures: a real ``mlflow server`` on a free loopback port."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registry"))

from mlflow_helpers import start_mlflow_server, stop_server

# A plain test folder named "triton" on sys.path would pass for OpenAI's Triton compiler and
# make torch's optimisers fail; torch handles a missing package, so hide the impostor.
_spec = importlib.util.find_spec("triton")
if _spec is not None and _spec.origin is None and "triton" not in sys.modules:
    sys.modules["triton"] = None  # type: ignore[assignment]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield url
    finally:
        stop_server(proc)
