"""In-process ONNX Runtime: the embedded default, no server to run."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from medops.errors import BackendUnavailableError, InvalidInputError

from ..types import InferRequest, InferResponse, Tensor
from .base import Backend

_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


def _shape(dims: list[Any]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in dims]


class OnnxBackend(Backend):
    """Keeps one ``InferenceSession`` per loaded version; runs them in worker threads (ONNX
    Runtime releases the GIL, so the event loop keeps serving)."""

    kind = "onnx"

    def __init__(self, *, threads: int = 2, workers: int = 4, spinning: bool = False) -> None:
        self._threads = threads
        self._spinning = spinning
        self._sessions: dict[tuple[str, str], ort.InferenceSession] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnx")

    async def close(self) -> None:
        self._sessions.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def live(self) -> bool:
        return True

    def _open(self, path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self._spinning else "0"
        )
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    async def load(self, name: str, version: str, onnx_path: Path | None) -> dict[str, Any]:
        if onnx_path is None or not Path(onnx_path).is_file():
            raise BackendUnavailableError(f"model {name} version {version}: ONNX file not found")
        loop = asyncio.get_running_loop()
        try:
            session = await loop.run_in_executor(self._pool, self._open, Path(onnx_path))
        except Exception as exc:  # ONNX Runtime raises its own types for corrupt files
            reason = type(exc).__name__
            raise BackendUnavailableError(
                f"model {name} version {version}: ONNX Runtime cannot load it ({reason})"
            ) from exc
        self._sessions[(name, version)] = session
        return {
            "name": name,
            "versions": [version],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {
                    "name": i.name,
                    "datatype": _ORT_TYPES.get(i.type, i.type),
                    "shape": _shape(i.shape),
                }
                for i in session.get_inputs()
            ],
            "outputs": [
                {
                    "name": o.name,
                    "datatype": _ORT_TYPES.get(o.type, o.type),
                    "shape": _shape(o.shape),
                }
                for o in session.get_outputs()
            ],
        }

    async def unload(self, name: str, version: str) -> None:
        self._sessions.pop((name, version), None)

    async def ready(self, name: str, version: str) -> bool:
        return (name, version) in self._sessions

    async def infer(self, request: InferRequest, version: str, timeout_s: float) -> InferResponse:
        session = self._sessions.get((request.model, version))
        if session is None:
            raise BackendUnavailableError(f"model {request.model} version {version} is not loaded")
        # views of the request's bytes, not copies; copied only when the wire left them
        # unaligned for their dtype
        feeds = {t.name: np.require(t.data, requirements=("C", "A")) for t in request.inputs}
        names = request.outputs or [o.name for o in session.get_outputs()]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._pool, session.run, names, feeds)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ValueError) as exc:
            # ONNX Runtime's message names the input and the mismatch, and nothing else.
            raise InvalidInputError(f"model {request.model}: {exc}") from None
        return InferResponse(
            model=request.model,
            version=version,
            id=request.id,
            outputs=[Tensor(n, np.asarray(r)) for n, r in zip(names, results, strict=True)],
        )
