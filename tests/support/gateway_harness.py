"""Support for tests and benchmarks: tiny contract-abiding models, and real servers on free
ports (Triton from ``.venv-triton``, the gateway itself) started and stopped by PID.

Not used when serving; torch is imported only by :func:`write_tiny_model`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medops.modelspec import (
    INPUT_NAME,
    META_CLASSES,
    META_DATASET_VERSION,
    META_INPUT_SIZE,
    META_TASK,
    META_THRESHOLD,
    OUTPUT_NAME,
)
from medops.service.readiness import exited, wait_until_ready
from pipelines.brain import CLASSIFIER, SEGMENTER, TYPE_CLASSIFIER

ROOT = Path(__file__).resolve().parents[2]
TRITON_VENV = Path(os.environ.get("MEDOPS_TRITON_VENV", ROOT / ".venv-triton"))
START_TRITON = ROOT / "infra" / "triton" / "start-triton.sh"

TASKS = {
    CLASSIFIER: ("classification", ["no_tumour", "tumour"]),
    SEGMENTER: ("segmentation", ["tumour"]),
    TYPE_CLASSIFIER: ("classification", ["glioma", "meningioma", "notumor", "pituitary"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_tiny_model(
    name: str,
    path: Path,
    *,
    size: int = 64,
    threshold: float = 0.5,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
    task: str | None = None,
    classes: list[str] | None = None,
) -> Path:
    """A small seeded conv net obeying the ONNX contract of ``medops.modelspec``;
    ``metadata`` adds keys (e.g. a segmenter's two-stage rule). A name outside
    :data:`TASKS` needs its ``task`` and ``classes``."""
    import torch
    from torch import nn

    if task is None or classes is None:
        task, classes = TASKS[name]
    torch.manual_seed(seed)

    def bias(layer: nn.Module) -> torch.Tensor:
        value = layer.bias
        assert isinstance(value, torch.Tensor)
        return value

    class Classifier(nn.Module):
        """Tumour-ish when much of the FLAIR channel is bright; other classes get noise."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, len(classes))
            with torch.no_grad():
                self.conv.weight.normal_(0.0, 0.05)
                self.conv.weight[0, 1] += 1.0 / 9.0
                bias(self.conv).zero_()
                bias(self.conv)[0] = -0.55
                self.head.weight.normal_(0.0, 0.1)
                self.head.weight[-1, 0] = 60.0
                bias(self.head).zero_()
                bias(self.head)[-1] = -1.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x)).mean(dim=(2, 3))
            return torch.softmax(self.head(h), dim=1)

    class Segmenter(nn.Module):
        """Marks bright FLAIR neighbourhoods, which is where these tumours show."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 1, 3, padding=1)
            with torch.no_grad():
                self.conv1.weight.normal_(0.0, 0.02)
                self.conv1.weight[0, 1] += 1.0 / 9.0
                bias(self.conv1).zero_()
                self.conv2.weight.normal_(0.0, 0.02)
                self.conv2.weight[0, 0, 1, 1] = 1.0
                bias(self.conv2).fill_(-0.6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.conv2(torch.relu(self.conv1(x))) * 30.0)

    net = Segmenter() if task == "segmentation" else Classifier()
    return export_contract_model(
        net, path, size=size, task=task, classes=classes, threshold=threshold, metadata=metadata
    )


def export_contract_model(
    net: Any,
    path: Path,
    *,
    size: int,
    task: str,
    classes: list[str],
    threshold: float = 0.5,
    metadata: dict[str, str] | None = None,
) -> Path:
    """``net`` as an ONNX file under the serving contract, with the metadata serving reads."""
    import onnx
    import torch

    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript run and is fast.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    model = onnx.load(str(path))
    for key, value in {
        META_TASK: task,
        META_INPUT_SIZE: str(size),
        META_CLASSES: json.dumps(classes),
        META_THRESHOLD: str(threshold),
        META_DATASET_VERSION: "test",
        **(metadata or {}),
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def write_repository(repo: Path, models: dict[str, tuple[Path, int]]) -> Path:
    """A Triton repository as the pipeline publishes it (``medops.export``): name ->
    (ONNX file, version)."""
    from medops.export.triton import TritonModel, write_triton_repository

    return write_triton_repository(
        [TritonModel(name=n, version=v, onnx_path=p) for n, (p, v) in models.items()], repo
    )


def stop_process(proc: subprocess.Popen[Any], *, group: bool, timeout_s: float) -> None:
    """SIGTERM (to its process group with ``group``), then SIGKILL to the group after
    ``timeout_s``: a server started with ``start_new_session`` is stopped by PID."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class TritonServer:
    """A real Triton on free loopback ports, stopped by PID."""

    def __init__(self, repository: Path, *, poll_secs: int = 0, log_path: Path | None = None):
        self.repository = repository
        self.poll_secs = poll_secs
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.work_dir = Path(tempfile.mkdtemp(prefix="medops-triton-"))
        self.log_path = log_path or self.work_dir / "triton.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        if not (TRITON_VENV / "bin" / "python").exists():
            raise RuntimeError(f"{TRITON_VENV} is missing: run infra/triton/setup.sh")
        cmd = [
            "bash",
            str(START_TRITON),
            "--repository", str(self.repository),
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
            "--work-dir", str(self.work_dir),
            "--poll-secs", str(self.poll_secs),
        ]  # fmt: skip
        env = {**os.environ, "MEDOPS_ORT_THREADS": os.environ.get("MEDOPS_ORT_THREADS", "1")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            wait_until_ready(
                f"http://{self.http_url}/v2/health/ready",
                timeout_s=timeout_s,
                gone=exited(self.proc),
            )
        except Exception as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"Triton did not start: {exc}\n{tail}") from exc
        return self

    def stop(self) -> None:
        if self.proc is not None:
            # The process group: Triton and the Python backend stubs it spawned.
            stop_process(self.proc, group=True, timeout_s=20)
        self.proc = None
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class GatewayThread:
    """The real gateway (REST + gRPC) on free ports in a background thread of this process."""

    BIND_ATTEMPTS = 3
    """A free port can be taken by another process between choosing and binding it."""

    def __init__(self, settings: Any) -> None:
        self._requested = settings
        self._prepare()

    def _prepare(self) -> None:
        import asyncio

        from services.gateway.app import build_gateway

        self.settings = self._requested.model_copy(
            update={"port": free_port(), "grpc_port": free_port(), "host": "127.0.0.1"}
        )
        self.gateway = build_gateway(self.settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._task: Any = None
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.settings.grpc_port}"

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.gateway.serve())
        try:
            self._loop.run_until_complete(self._task)
        except BaseException as exc:  # reported to the test through .error
            self.error = exc

    def start(self, timeout_s: float = 60.0) -> GatewayThread:
        from medops.service.readiness import NotReadyError

        for attempt in range(1, self.BIND_ATTEMPTS + 1):
            self._thread.start()
            try:
                wait_until_ready(
                    f"http://{self.url}/v2/health/live",
                    timeout_s=timeout_s,
                    gone=lambda: None if self.error is None else f"failed ({self.error!r})",
                    interval_s=0.05,
                )
                return self
            except NotReadyError:
                # uvicorn exits with SystemExit when its port was taken meanwhile: new ports
                if not isinstance(self.error, SystemExit) or attempt == self.BIND_ATTEMPTS:
                    raise
                self._thread.join(timeout=30)
                self._loop.close()
                self._prepare()
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self.gateway.request_exit)
        self._thread.join(timeout=30)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def gateway_process(
    args: list[str], env: dict[str, str], port: int, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``medops serve`` as a separate process (for benchmarks), stopped by PID."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.gateway", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(
            f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=120.0, gone=exited(proc)
        )
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
