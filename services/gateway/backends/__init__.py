"""Inference backends behind one interface (:class:`Backend`)."""

from __future__ import annotations

from ..settings import GatewaySettings
from .base import Backend
from .onnx import OnnxBackend
from .shm import SharedMemoryPool
from .tritongrpc import TritonGrpcBackend
from .v2http import V2HttpBackend

__all__ = ["Backend", "OnnxBackend", "TritonGrpcBackend", "V2HttpBackend", "make_backend"]


def make_backend(settings: GatewaySettings) -> Backend:
    """The backend the settings name."""
    if settings.backend == "onnx":
        return OnnxBackend(threads=settings.onnx_threads, spinning=settings.onnx_spinning)
    if settings.backend == "v2-http":
        return V2HttpBackend(settings.backend_url, binary=False, kind="v2-http")
    pool = (
        SharedMemoryPool(settings.shared_memory_slots, settings.shared_memory_slot_bytes)
        if settings.shared_memory
        else None
    )
    if settings.backend == "triton-grpc":
        return TritonGrpcBackend(settings.backend_url, shared_memory=pool)
    return V2HttpBackend(settings.backend_url, binary=True, kind="triton-http", shared_memory=pool)
