"""Triton (or any Open Inference Protocol server) over gRPC, one shared channel."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import service_pb2, service_pb2_grpc

from medops.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    InvalidInputError,
    MedopsError,
    NotFoundError,
)

from ..protowire import with_model_version
from ..types import GrpcWire, InferRequest, InferResponse, Tensor, numpy_dtype
from .base import Backend
from .shm import SharedMemoryPool

log = logging.getLogger("medops.gateway.backends")

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE = 512 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


def _error(exc: grpc.aio.AioRpcError, what: str) -> MedopsError:
    code, detail = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendTimeoutError(f"{what}: backend did not answer in time")
    if code == grpc.StatusCode.NOT_FOUND or "unknown model" in detail:
        return NotFoundError(f"{what}: {detail}")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return InvalidInputError(f"{what}: {detail}")
    return BackendUnavailableError(f"{what}: backend unreachable ({code.name})")


class TritonGrpcBackend(Backend):
    kind = "triton-grpc"

    def __init__(self, url: str, *, shared_memory: SharedMemoryPool | None = None) -> None:
        self.url = url.split("://", 1)[-1]
        self.shm = shared_memory
        self._shm_registered = False
        self._shm_tried = 0.0
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._infer_serialised: Any = None

    async def start(self) -> None:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.url, options=CHANNEL_OPTIONS)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
            # no (de)serialisers: bytes in, bytes out, for requests forwarded untouched
            self._infer_serialised = self._channel.unary_unary(MODEL_INFER)

    async def close(self) -> None:
        if self._channel is not None:
            if self.shm is not None and self._shm_registered:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self._stub.SystemSharedMemoryUnregister(
                        service_pb2.SystemSharedMemoryUnregisterRequest(), timeout=5.0
                    )
            await self._channel.close()
            self._channel = None
        if self.shm is not None:
            self.shm.close()

    async def _register_shm(self) -> None:
        """Register every region with the server (again: it forgets them when it restarts)."""
        assert self.shm is not None
        self._shm_tried = time.monotonic()
        try:
            for region in self.shm.regions:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self._stub.SystemSharedMemoryUnregister(
                        service_pb2.SystemSharedMemoryUnregisterRequest(name=region.name),
                        timeout=5.0,
                    )
                await self._stub.SystemSharedMemoryRegister(
                    service_pb2.SystemSharedMemoryRegisterRequest(
                        name=region.name,
                        key=self.shm.key(region),
                        offset=0,
                        byte_size=self.shm.slot_bytes,
                    ),
                    timeout=5.0,
                )
        except grpc.aio.AioRpcError as exc:
            log.warning("shared memory off: tensors go inline", extra={"reason": exc.details()})
            self._shm_registered = False
            return
        self._shm_registered = True

    async def _shm_ok(self) -> bool:
        if self.shm is None:
            return False
        if not self._shm_registered and time.monotonic() - self._shm_tried >= 5.0:
            await self._register_shm()
        return self._shm_registered

    async def live(self) -> bool:
        try:
            r = await self._stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=2.0)
        except grpc.aio.AioRpcError:
            return False
        return bool(r.live)

    async def ready(self, name: str, version: str) -> bool:
        try:
            r = await self._stub.ModelReady(
                service_pb2.ModelReadyRequest(name=name, version=version), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(r.ready)

    async def load(self, name: str, version: str, onnx_path: Path | None) -> dict[str, Any]:
        what = f"model {name} version {version}"
        if not await self.ready(name, version):
            # Loads only in explicit model-control mode; otherwise readiness below decides.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._stub.RepositoryModelLoad(
                    service_pb2.RepositoryModelLoadRequest(model_name=name), timeout=60.0
                )
            if not await self.ready(name, version):
                raise BackendUnavailableError(f"{what} is not ready on the backend")
        if self.shm is not None and not self._shm_registered:
            await self._register_shm()
        try:
            meta = await self._stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name=name, version=version), timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, what) from None
        doc = MessageToDict(meta, preserving_proto_field_name=True)
        for t in doc.get("inputs", []) + doc.get("outputs", []):
            t["shape"] = [int(d) for d in t.get("shape", [])]
        return doc

    def _message(
        self, request: InferRequest, version: str, placed: list[tuple[str, int, int]] | None
    ) -> Any:
        msg = service_pb2.ModelInferRequest(
            model_name=request.model, model_version=version, id=request.id or ""
        )
        for i, t in enumerate(request.inputs):
            spec = msg.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            if placed is None:
                msg.raw_input_contents.append(np.ascontiguousarray(t.data).tobytes())
            else:
                region, offset, size = placed[i]
                spec.parameters["shared_memory_region"].string_param = region
                spec.parameters["shared_memory_offset"].int64_param = offset
                spec.parameters["shared_memory_byte_size"].int64_param = size
        for name in request.outputs or []:
            msg.outputs.add(name=name)
        return msg

    async def infer(self, request: InferRequest, version: str, timeout_s: float) -> InferResponse:
        if await self._shm_ok():
            assert self.shm is not None
            with self.shm.slot(request.inputs) as placed:
                if placed is not None:
                    try:
                        return await self._infer(
                            self._message(request, version, placed), request, timeout_s
                        )
                    except InvalidInputError as exc:
                        if "shared memory" not in exc.message:
                            raise
                        self._shm_registered = False  # the server restarted: register again
        if isinstance(request.wire, GrpcWire):
            return await self._forward(request.wire, request, version, timeout_s)
        return await self._infer(self._message(request, version, None), request, timeout_s)

    async def _forward(
        self, wire: GrpcWire, request: InferRequest, version: str, timeout_s: float
    ) -> InferResponse:
        """The caller spoke gRPC too: its message goes as it came (naming the routed
        version), and its answer comes back serialised, decoded only if someone asks."""
        message = wire.message
        if request.version != version:
            message = with_model_version(message, version)
        try:
            answer: bytes = await self._infer_serialised(message, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, f"model {request.model}") from None
        return InferResponse(
            model=request.model,
            version=version,
            id=request.id,
            outputs=[],
            wire=GrpcWire(answer),
            decode=lambda: _outputs(service_pb2.ModelInferResponse.FromString(answer)),
        )

    async def _infer(self, msg: Any, request: InferRequest, timeout_s: float) -> InferResponse:
        try:
            r = await self._stub.ModelInfer(msg, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, f"model {request.model}") from None
        return InferResponse(
            model=request.model,
            version=r.model_version or msg.model_version,
            id=request.id,
            outputs=_outputs(r),
        )


def _outputs(r: Any) -> list[Tensor]:
    return [
        Tensor(
            o.name,
            np.frombuffer(raw, dtype=numpy_dtype(o.datatype, o.name)).reshape(list(o.shape)),
        )
        for o, raw in zip(r.outputs, r.raw_output_contents, strict=True)
    ]
