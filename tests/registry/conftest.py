"""Registry fixtures: a real ``mlflow server`` on a free loopback port (see mlflow_helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mlflow_helpers import start_mlflow_server, stop_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield url
    finally:
        stop_server(proc)
