"""A fleet of real gateway processes (``python -m services.gateway``) on loopback ports sharing
one routing store and one MLflow registry, each stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medops.service.auth import hash_key, new_key
from medops.service.readiness import NotReadyError, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_keys(folder: Path) -> tuple[Path, dict[str, str]]:
    """One API keys file for every replica (as the chart's Secret); returns it and the keys."""
    plain = {role: new_key(role) for role in ("client", "reviewer", "admin")}
    path = folder / "api-keys.json"
    doc = {"keys": [{"role": r, "sha256": hash_key(k)} for r, k in plain.items()]}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path, plain


@dataclass
class Replica:
    """One gateway process."""

    name: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a node dies."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Fleet:
    replicas: list[Replica]
    monitor: Replica
    """The monitor, reading the prediction log the replicas write."""
    admin: dict[str, str]
    client: dict[str, str]
    reviewer: dict[str, str]
    tracking_uri: str
    store_url: str
    poll_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive()]

    def stop(self) -> None:
        for replica in [*self.replicas, self.monitor]:
            replica.stop()


def _start_monitor(work: Path, keys_path: Path, store_url: str) -> Replica:
    port = free_port()
    env = {
        **os.environ,
        "MEDOPS_MONITOR_HOME": str(work / "monitor"),
        "MEDOPS_MONITOR_STORE_URL": store_url,
        "MEDOPS_MONITOR_LOCAL_MODE": "false",
        "MEDOPS_MONITOR_API_KEYS_FILE": str(keys_path),
        "MEDOPS_MONITOR_INTERVAL_S": "0",
    }
    log_path = work / "monitor.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.monitor", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Replica("monitor", port, log_path, proc)


def start_fleet(
    work: Path, *, count: int, tracking_uri: str, store_url: str, models: list[str], poll_s: float
) -> Fleet:
    """``count`` gateways with their own homes and ports and a monitor: one keys file, one
    store (routing and the prediction log)."""
    keys_path, keys = write_keys(work)
    replicas: list[Replica] = []
    monitor = _start_monitor(work, keys_path, store_url)
    try:
        for i in range(count):
            home = work / f"replica-{i}"
            home.mkdir(parents=True, exist_ok=True)
            port = free_port()
            env = {
                **os.environ,
                "MEDOPS_GATEWAY_HOME": str(home),
                "MEDOPS_GATEWAY_TRACKING_URI": tracking_uri,
                "MEDOPS_GATEWAY_MODELS": json.dumps(models),
                "MEDOPS_GATEWAY_ONNX_THREADS": "1",
                "MEDOPS_GATEWAY_POLL_SECONDS": "1",
                "MEDOPS_GATEWAY_LOCAL_MODE": "false",
                "MEDOPS_GATEWAY_API_KEYS_FILE": str(keys_path),
                "MEDOPS_GATEWAY_PREDICTION_STORE_URL": store_url,
                "MEDOPS_GATEWAY_ROUTING_STORE_URL": store_url,
                "MEDOPS_GATEWAY_ROUTING_POLL_SECONDS": str(poll_s),
            }
            log_path = work / f"replica-{i}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "services.gateway", "--port", str(port),
                     "--grpc-port", str(free_port())],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            replicas.append(Replica(f"replica-{i}", port, log_path, proc))
        for replica in [*replicas, monitor]:
            wait_ready(replica)
    except BaseException:
        for replica in [*replicas, monitor]:
            replica.stop()
        raise
    return Fleet(
        replicas=replicas,
        monitor=monitor,
        admin={"authorization": f"Bearer {keys['admin']}"},
        client={"authorization": f"Bearer {keys['client']}"},
        reviewer={"authorization": f"Bearer {keys['reviewer']}"},
        tracking_uri=tracking_uri,
        store_url=store_url,
        poll_s=poll_s,
    )


def wait_ready(replica: Replica, timeout_s: float = 120.0) -> None:
    try:
        wait_until_ready(
            f"{replica.url}/v2/health/ready",
            timeout_s=timeout_s,
            gone=lambda: None if replica.alive() else "exited",
        )
    except NotReadyError as exc:
        raise RuntimeError(f"{replica.name}: {exc.message}\n{replica.log()[-3000:]}") from None
