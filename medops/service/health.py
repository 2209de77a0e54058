"""Health conventions every medops service follows: the KServe V2 paths, open like /metrics.

``/v2/health/live`` answers ``{"live": bool}`` and ``/v2/health/ready`` ``{"ready": bool, ...}``,
200 when true and 503 when not, so one probe configuration fits every service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"
OPEN_PATHS = frozenset({LIVE_PATH, READY_PATH, METRICS_PATH})
"""Probes and the Prometheus scrape: no key (they carry no patient data)."""


def add_health_routes(
    app: FastAPI,
    live: Callable[[], Awaitable[bool]],
    ready: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]],
) -> None:
    """Serve liveness and readiness; ``ready`` returns the verdict and details for the body."""

    @app.get(LIVE_PATH)
    async def _live() -> JSONResponse:
        ok = await live()
        return JSONResponse({"live": ok}, status_code=200 if ok else 503)

    @app.get(READY_PATH)
    async def _ready() -> JSONResponse:
        ok, details = await ready()
        return JSONResponse({"ready": ok, **details}, status_code=200 if ok else 503)
