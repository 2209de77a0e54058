"""The one interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ..types import InferRequest, InferResponse


class Backend(ABC):
    """Runs model versions; the gateway never knows which server is behind it.

    Failures surface as medops errors: ``BackendUnavailableError`` (503) when the server cannot
    be reached, ``BackendTimeoutError`` (504) past the deadline, ``InvalidInputError`` (400)
    when the server rejects the tensors.
    """

    kind: str = "backend"

    async def start(self) -> None:  # noqa: B027 - optional hook, nothing to open by default
        """Open connections; called once before the first request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and sessions."""

    @abstractmethod
    async def live(self) -> bool:
        """Whether the backend answers at all."""

    @abstractmethod
    async def load(self, name: str, version: str, onnx_path: Path | None) -> dict[str, Any]:
        """Make ``name``/``version`` servable; returns its V2 model metadata."""

    async def unload(self, name: str, version: str) -> None:  # noqa: B027 - optional hook
        """Forget a version that no variant serves any more."""

    @abstractmethod
    async def ready(self, name: str, version: str) -> bool:
        """Whether ``name``/``version`` can serve now."""

    @abstractmethod
    async def infer(self, request: InferRequest, version: str, timeout_s: float) -> InferResponse:
        """Run one request on ``version``."""
