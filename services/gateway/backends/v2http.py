"""Any Open Inference Protocol server over HTTP: Triton (binary tensors), KServe, MLServer."""

from __future__ import annotations

import json
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

from ..codec import HEADER_LENGTH, decode_response, encode_request
from ..types import InferRequest, InferResponse
from .base import Backend


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

    def __init__(self, url: str, *, binary: bool = True, kind: str = "triton-http") -> None:
        self.url = base_url(url)
        self.binary = binary
        self.kind = kind
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, skip_auto_headers=("User-Agent",)
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        return meta

    async def infer(self, request: InferRequest, version: str, timeout_s: float) -> InferResponse:
        what = f"model {request.model}"
        wire = request.wire
        if self.binary and isinstance(wire, tuple) and wire[0] == "rest":
            # Same wire format both ways: forward the caller's body untouched.
            body, header_length = wire[1], wire[2]
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
        header_length = int(length) if length is not None else None
        doc = decode_response(payload, header_length)
        forwarded = isinstance(wire, tuple) and body is wire[1]
        return InferResponse(
            model=request.model,
            version=str(doc.get("model_version") or version),
            id=request.id,
            outputs=doc["outputs"],
            wire=("rest", payload, header_length) if forwarded else None,
        )
