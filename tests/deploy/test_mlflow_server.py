"""The chart's MLflow server command, run for real: the rendered arguments start MLflow 3, its
DNS-rebinding guard accepts the Service's names and refuses others. (The backend store and
artifact destination become local files: no PostgreSQL or MinIO here.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deploy_support import find, render_profile

from medops.service.readiness import NotReadyError, exited, wait_until_ready

# about a minute and a half on two busy cores (MLflow migrates its store, then starts)
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    (deployment,) = find(render_profile("kind-cpu"), "Deployment", "medops-mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow"]
    work = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{work / 'mlflow.db'}",
        "--artifacts-destination": (work / "artifacts").as_uri(),
    }
    args = []
    for arg in container["args"]:
        key, sep, _ = arg.partition("=")
        args.append(f"{key}={local[key]}" if sep and key in local else arg)
    assert "--serve-artifacts" in args and any(a.startswith("--allowed-hosts=") for a in args)
    mlflow = Path(sys.executable).with_name("mlflow")
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "HOME": str(work)},
    )
    try:
        try:
            wait_until_ready(
                f"http://127.0.0.1:{port}/health", timeout_s=90, gone=exited(proc), interval_s=0.5
            )
        except NotReadyError as exc:
            raise AssertionError((work / "server.log").read_text()[-2000:]) from exc
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _search(port: int, host: str) -> httpx.Response:
    return httpx.get(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        headers={"Host": host},
        timeout=10,
    )


@pytest.mark.parametrize(
    "host",
    ["medops-mlflow:5000", "medops-mlflow.medops.svc.cluster.local:5000", "127.0.0.1:5000"],
)
def test_the_service_names_reach_the_tracking_api(mlflow_server: int, host: str) -> None:
    response = _search(mlflow_server, host)
    assert response.status_code == 200, response.text
    assert "experiments" in response.json()


def test_other_host_names_are_refused(mlflow_server: int) -> None:
    assert _search(mlflow_server, "attacker.example:5000").status_code == 403
