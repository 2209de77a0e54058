"""Any Open Inference Protocol server over HTTP: Triton (binary tensors), KServe, MLServer."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp

from medops.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    InvalidInputError,
    MedopsError,
    NotFoundError,
)

from ..codec import HEADER_LENGTH, decode_response, encode_request, encode_request_shm
from ..types import InferRequest, InferResponse, RestWire
from .base import Backend
from .shm import SharedMemoryPool

log = logging.getLogger("medops.gateway.backends")


def base_url(url: str) -> str:
    return url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"


def _error(status: int, body: bytes, what: str) -> MedopsError:
    try:
        message = str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        message = ""
    message = message or f"HTTP {status}"
    if status == 404 or "unknown model" in message:
        return NotFoundError(f"{what}: {message}")
    if 400 <= status < 500:
        return InvalidInputError(f"{what}: {message}")
    return BackendUnavailableError(f"{what}: backend answered {status}")


class V2HttpBackend(Backend):
    """One pooled ``aiohttp`` session (keep-alive connections) for every call."""

    def __init__(
        self,
        url: str,
        *,
        binary: bool = True,
        kind: str = "triton-http",
        shared_memory: SharedMemoryPool | None = None,
    ) -> None:
        self.url = base_url(url)
        self.binary = binary
        self.kind = kind
        self.shm = shared_memory
        self._shm_registered = False
        self._shm_tried = 0.0
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, skip_auto_headers=("User-Agent",)
            )

    async def close(self) -> None:
        if self._session is not None:
            if self.shm is not None and self._shm_registered:
                with contextlib.suppress(MedopsError):
                    await self._call("POST", "/v2/systemsharedmemory/unregister", 5.0, "shm")
            await self._session.close()
            self._session = None
        if self.shm is not None:
            self.shm.close()

    async def _register_shm(self) -> None:
        """Register every region with the server (again: it forgets them when it restarts)."""
        assert self.shm is not None
        self._shm_tried = time.monotonic()
        try:
            for region in self.shm.regions:
                path = f"/v2/systemsharedmemory/region/{region.name}"
                await self._call("POST", path + "/unregister", 5.0, "shm")
                doc = {"key": self.shm.key(region), "offset": 0, "byte_size": self.shm.slot_bytes}
                status, body, _ = await self._call(
                    "POST", path + "/register", 5.0, "shm", json.dumps(doc).encode()
                )
                if status != 200:
                    raise _error(status, body, "shared memory registration")
        except MedopsError as exc:
            log.warning("shared memory off: tensors go inline", extra={"reason": exc.message})
            self._shm_registered = False
            return
        self._shm_registered = True

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BackendUnavailableError("backend client is not started")
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        timeout_s: float,
        what: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, Any]:
        try:
            async with self.session.request(
                method,
                self.url + path,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                return resp.status, await resp.read(), resp.headers
        except TimeoutError:
            raise BackendTimeoutError(
                f"{what}: backend did not answer within {timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise BackendUnavailableError(
                f"{what}: backend unreachable ({type(exc).__name__})"
            ) from None

    async def live(self) -> bool:
        try:
            status, _, _ = await self._call("GET", "/v2/health/live", 2.0, "liveness")
        except MedopsError:
            return False
        return status == 200

    def _model_path(self, name: str, version: str | None) -> str:
        return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")

    async def ready(self, name: str, version: str) -> bool:
        try:
            status, _, _ = await self._call(
                "GET", self._model_path(name, version) + "/ready", 2.0, f"model {name}"
            )
        except MedopsError:
            return False
        return status == 200

    async def load(self, name: str, version: str, onnx_path: Path | None) -> dict[str, Any]:
        what = f"model {name} version {version}"
        if not await self.ready(name, version):
            # A server in explicit model-control mode loads on request; others answer 4xx.
            await self._call("POST", f"/v2/repository/models/{name}/load", 60.0, what)
            if not await self.ready(name, version):
                raise BackendUnavailableError(f"{what} is not ready on the backend")
        status, body, _ = await self._call("GET", self._model_path(name, version), 5.0, what)
        if status != 200:
            raise _error(status, body, what)
        meta: dict[str, Any] = json.loads(body)
        if self.shm is not None and not self._shm_registered:
            await self._register_shm()
        return meta

    async def _infer_shm(
        self, request: InferRequest, version: str, timeout_s: float
    ) -> InferResponse | None:
        """The request with its tensors in shared memory; None when it must go inline."""
        assert self.shm is not None
        if not self._shm_registered:
            if time.monotonic() - self._shm_tried < 5.0:
                return None
            await self._register_shm()
            if not self._shm_registered:
                return None
        with self.shm.slot(request.inputs) as placed:
            if placed is None:
                return None
            body = encode_request_shm(request, placed)
            status, payload, headers = await self._call(
                "POST",
                self._model_path(request.model, version) + "/infer",
                timeout_s,
                f"model {request.model}",
                body,
                {"Content-Type": "application/json", "Accept-Encoding": "identity"},
            )
        if status != 200:
            if b"shared memory" in payload or b"shared_memory" in payload:
                self._shm_registered = False  # the server restarted: register again later
                return None
            raise _error(status, payload, f"model {request.model}")
        length = headers.get(HEADER_LENGTH)
        doc = decode_response(payload, int(length) if length is not None else None)
        return InferResponse(
            model=request.model,
            version=str(doc.get("model_version") or version),
            id=request.id,
            outputs=doc["outputs"],
        )

    async def infer(self, request: InferRequest, version: str, timeout_s: float) -> InferResponse:
        what = f"model {request.model}"
        if self.shm is not None:
            answer = await self._infer_shm(request, version, timeout_s)
            if answer is not None:
                return answer
        wire = request.wire
        forward = self.binary and isinstance(wire, RestWire)
        if isinstance(wire, RestWire) and forward:
            # Same wire format both ways: forward the caller's body untouched.
            body, header_length = wire.body, wire.header_length
        else:
            body, header_length = encode_request(request, binary=self.binary)
        headers = {
            "Content-Type": "application/octet-stream" if self.binary else "application/json",
            # Compressing a tensor on loopback costs more than sending it.
            "Accept-Encoding": "identity",
        }
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = str(header_length)
        status, payload, resp_headers = await self._call(
            "POST",
            self._model_path(request.model, version) + "/infer",
            timeout_s,
            what,
            body,
            headers,
        )
        if status != 200:
            raise _error(status, payload, what)
        length = resp_headers.get(HEADER_LENGTH)
        answer_length = int(length) if length is not None else None
        if forward:
            # The answer goes back as it came; its tensors are decoded only if someone asks.
            return InferResponse(
                model=request.model,
                version=version,
                id=request.id,
                outputs=[],
                wire=RestWire(payload, answer_length),
                decode=lambda: list(decode_response(payload, answer_length)["outputs"]),
            )
        doc = decode_response(payload, answer_length)
        return InferResponse(
            model=request.model,
            version=str(doc.get("model_version") or version),
            id=request.id,
            outputs=doc["outputs"],
        )
