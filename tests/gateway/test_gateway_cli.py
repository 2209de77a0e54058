"""``medops serve`` starts the real gateway process and says where the keys are."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from click.testing import CliRunner
from gateway_harness import ROOT, free_port

from medops.cli import cli
from medops.service.readiness import exited, wait_until_ready
from pipelines.brain import BRAIN_MODELS
from services.gateway.cli import serve


def test_serve_is_a_medops_command_with_host_port_grpc_port_and_backend() -> None:
    cli.add_command(serve, name="serve")
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--grpc-port", "--backend", "--backend-url", "--model-file"):
        assert option in result.output


def test_the_serve_process_starts_on_the_given_ports_writes_keys_and_stops_on_sigterm(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    port, grpc_port = free_port(), free_port()
    home = tmp_path / "home"
    files = [a for name in BRAIN_MODELS for a in ("--model-file", f"{name}={tiny_models[name]}")]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.gateway",
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            *files,
        ],
        cwd=ROOT,
        env={**os.environ, "MEDOPS_HOME": str(home), "MEDOPS_GATEWAY_POLL_SECONDS": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(
            f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=60, gone=exited(proc)
        )
        keys = json.loads((home / "credentials.json").read_text())
        r = httpx.get(
            f"http://127.0.0.1:{port}/v2/models/{BRAIN_MODELS[0]}",
            headers={"authorization": f"Bearer {keys['client']}"},
        )
        assert r.status_code == 200 and r.json()["name"] == BRAIN_MODELS[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    # uvicorn stops gracefully, then re-raises the signal so the parent sees it.
    assert proc.returncode in (0, -signal.SIGTERM)
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    created = [line for line in lines if line["message"].startswith("API keys created")]
    assert created and created[0]["credentials_file"] == str((home / "credentials.json").resolve())
    assert keys["client"] not in output.decode() and keys["admin"] not in output.decode()
    assert any(line["message"] == "gateway started" and line["grpc"] == grpc_port for line in lines)
    assert any(line["message"] == "gateway stopped" for line in lines)
