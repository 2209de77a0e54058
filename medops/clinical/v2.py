"""A :class:`~medops.clinical.types.Predictor` that speaks the KServe V2 protocol over HTTP
(binary tensors) to a served endpoint: the medops gateway (with an API key, so its routing,
canary and shadow rules apply) or Triton itself.

Routing happens once per model and analysis, as in the gateway's own plane: the endpoint's
default version's metadata gives the input size; one routed request of a blank slice, sent
with a route key, tells which version and variant the router chose; every batch of the
analysis then forces that variant and must come back from that version."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np

from medops.errors import BackendTimeoutError, BackendUnavailableError, MedopsError
from medops.modelspec import INPUT_NAME, OUTPUT_NAME, ModelInfo

from .types import Route

ROUTE_KEY_HEADER = "x-medops-route-key"
VARIANT_HEADER = "x-medops-variant"
VERSION_HEADER = "x-medops-model-version"


class V2Predictor:
    """Models behind a V2 endpoint at ``url`` (``http://host:port``)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise BackendTimeoutError(f"model endpoint: {method} {path} timed out") from exc
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(
                f"model endpoint unreachable: {type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            error = _error_text(response)
            if response.status_code >= 500 or response.status_code in (401, 403, 429):
                raise BackendUnavailableError(
                    f"model endpoint answered {response.status_code} to {path}: {error}"
                )
            raise MedopsError(f"model endpoint answered {response.status_code} to {path}: {error}")
        return response

    async def info(self, model: str, version: str | None = None) -> ModelInfo:
        """A version's serving facts from its V2 metadata (the default version's: None)."""
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        meta = (await self._call("GET", path)).json()
        p = meta.get("parameters") or {}
        try:
            return ModelInfo(
                name=model,
                version=str(p.get("version", version or "")),
                task=str(p["task"]),
                input_size=int(p["input_size"]),
                classes=tuple(str(c) for c in p["classes"]),
                threshold=float(p["threshold"]),
                gate_threshold=(
                    None if p.get("gate_threshold") is None else float(p["gate_threshold"])
                ),
                min_component_px=int(p.get("min_component_px") or 0),
                accepts_nonfinite=bool(p.get("accepts_nonfinite", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MedopsError(
                f"model endpoint: {model} metadata lacks the medops serving parameters ({exc})"
            ) from exc

    async def _infer(
        self, model: str, batch: np.ndarray, headers: Mapping[str, str]
    ) -> tuple[np.ndarray, httpx.Headers]:
        import tritonclient.http as triton_http

        tensor = triton_http.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, np.float32), binary_data=True)
        output = triton_http.InferRequestedOutput(OUTPUT_NAME, binary_data=True)
        body, json_size = triton_http.InferenceServerClient.generate_request_body(
            [tensor], [output]
        )
        wire_headers = {"content-type": "application/octet-stream", **headers}
        if json_size is not None:
            wire_headers["inference-header-content-length"] = str(json_size)
        response = await self._call(
            "POST", f"/v2/models/{model}/infer", content=body, headers=wire_headers
        )
        length = response.headers.get("inference-header-content-length")
        result = triton_http.InferenceServerClient.parse_response_body(
            response.content, header_length=int(length) if length else None
        )
        out = result.as_numpy(OUTPUT_NAME)
        if out is None:
            raise MedopsError(f"model endpoint: {model} answered without {OUTPUT_NAME!r}")
        return np.asarray(out), response.headers

    async def route(self, model: str, routing: Mapping[str, str]) -> Route:
        default = await self.info(model)
        key = routing.get(ROUTE_KEY_HEADER) or secrets.token_hex(8)
        probe = np.zeros((1, 3, default.input_size, default.input_size), np.float32)
        _, headers = await self._infer(model, probe, {ROUTE_KEY_HEADER: key})
        version = headers.get(VERSION_HEADER) or default.version
        variant = headers.get(VARIANT_HEADER) or "default"
        info = default if version == default.version else await self.info(model, version)
        return Route(info, version, variant, handle=key)

    async def predict(self, model: str, batch: np.ndarray, route: Route) -> np.ndarray:
        headers = {VARIANT_HEADER: route.variant} if route.variant != "default" else {}
        probabilities, answered = await self._infer(model, batch, headers)
        version = answered.get(VERSION_HEADER)
        if version is not None and version != route.version:
            # the routing changed during this analysis: its slices must come from one version
            raise BackendUnavailableError(
                f"model endpoint: {model} answered from version {version}, routed to "
                f"{route.version}; analyse again"
            )
        return probabilities


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))[:200]
    except ValueError:
        return response.text[:200]
