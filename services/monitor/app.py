"""The monitor's HTTP API: drift results and reports, feedback, metrics and health.

``create_app(settings)`` is the one composition root; nothing lives in module globals. Keys,
error bodies, request ids, access logs and health paths are the shared ones of
:mod:`medops.service`, with the monitor's role policy (:func:`needed_role`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medops.errors import InvalidInputError, MedopsError, NotFoundError
from medops.monitoring.metrics import MonitorMetrics
from medops.monitoring.monitor import Monitor
from medops.monitoring.policy import (
    GitHubDispatchAction,
    KFPAction,
    LocalPipelineAction,
    RetrainAction,
    RetrainPolicy,
    WebhookAction,
)
from medops.monitoring.store import REVIEWER_ROLES, PredictionStore
from medops.service.auth import ROLES, Authenticator
from medops.service.errors import install_error_handlers
from medops.service.health import METRICS_PATH, OPEN_PATHS, add_health_routes
from medops.service.middleware import ServiceMiddleware
from services.monitor.settings import MonitorSettings

log = logging.getLogger("medops.monitor")

FEEDBACK_PATH = "/v1/feedback"


def needed_role(method: str, path: str) -> str | tuple[str, ...] | None:
    """Health and metrics open; feedback a reviewer or client key; other reads any key; every
    other call (``POST /v1/evaluate`` can fire a retraining run) an admin key."""
    if path in OPEN_PATHS:
        return None
    if path == FEEDBACK_PATH and method == "POST":
        return ("reviewer", "client")
    if method in ("GET", "HEAD"):
        return ROLES
    return "admin"


class MaskRLE(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: list[int] = Field(min_length=2, max_length=2)
    counts: list[int]


class Feedback(BaseModel):
    """A reviewer's confirmation or correction of one prediction."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128)
    label: str | None = Field(default=None, max_length=64)
    mask_rle: MaskRLE | None = None
    reviewer_role: str = "radiologist"


def build_actions(settings: MonitorSettings) -> list[RetrainAction]:
    """The retraining actions ``settings.triggers`` names, checked for their settings."""
    actions: list[RetrainAction] = []
    for name in settings.triggers:
        if name == "local":
            actions.append(LocalPipelineAction(settings.pipeline_command))
        elif name == "webhook":
            if not settings.webhook_url:
                raise InvalidInputError("MEDOPS_MONITOR_WEBHOOK_URL: required by trigger 'webhook'")
            actions.append(WebhookAction(settings.webhook_url))
        elif name == "github":
            if not settings.github_repository or settings.github_token is None:
                raise InvalidInputError(
                    "MEDOPS_MONITOR_GITHUB_REPOSITORY and MEDOPS_MONITOR_GITHUB_TOKEN: "
                    "required by trigger 'github'"
                )
            actions.append(
                GitHubDispatchAction(
                    settings.github_repository,
                    settings.github_token.get_secret_value(),
                    event_type=settings.github_event_type,
                )
            )
        elif name == "kfp":
            if not settings.kfp_host or settings.kfp_package is None:
                raise InvalidInputError(
                    "MEDOPS_MONITOR_KFP_HOST and MEDOPS_MONITOR_KFP_PACKAGE: "
                    "required by trigger 'kfp'"
                )
            actions.append(KFPAction(settings.kfp_host, settings.kfp_package))
    return actions


def build_monitor(settings: MonitorSettings, registry: CollectorRegistry) -> Monitor:
    """A :class:`Monitor` wired from settings: store, metrics, policy and actions."""
    home = settings.medops_home
    url = settings.store_url or f"sqlite:///{home.resolve() / 'monitoring' / 'predictions.db'}"
    return Monitor(
        PredictionStore(url),
        MonitorMetrics(registry),
        home=home,
        models=settings.models,
        policy=RetrainPolicy(
            sustained_windows=settings.sustained_windows,
            accuracy_threshold=settings.accuracy_threshold,
            sensitivity_threshold=settings.sensitivity_threshold,
            dice_threshold=settings.dice_threshold,
            min_feedback=settings.min_feedback,
        ),
        actions=build_actions(settings),
        window_size=settings.window_size,
        min_window=settings.min_window,
        drift_share_threshold=settings.drift_share_threshold,
        negative_label=settings.negative_label,
    )


def create_app(
    settings: MonitorSettings,
    *,
    monitor: Monitor | None = None,
    registry: CollectorRegistry | None = None,
    auth: Authenticator | None = None,
) -> FastAPI:
    """The monitor app; pass ``monitor`` and its ``registry`` (or ``auth``) to wire parts
    yourself."""
    registry = registry or CollectorRegistry()
    mon = monitor or build_monitor(settings, registry)
    auth = auth or settings.authenticator()

    async def loop() -> None:
        while True:
            try:
                await run_in_threadpool(mon.evaluate_all)
            except Exception:  # the loop must survive anything one evaluation does
                log.exception("monitor: evaluation round failed")
            await asyncio.sleep(settings.interval_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(loop()) if settings.interval_s > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="medops monitor", lifespan=lifespan)
    app.state.monitor = mon

    install_error_handlers(app)

    async def live() -> bool:
        return True

    async def ready() -> tuple[bool, dict[str, Any]]:
        try:
            await run_in_threadpool(mon.store.count)
        except MedopsError as exc:  # the prediction log is unreachable
            return False, {"reason": exc.message}
        return True, {}

    add_health_routes(app, live, ready)

    @app.get(METRICS_PATH)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/drift")
    async def drift(model: str | None = None) -> dict[str, Any]:
        ev = mon.latest(model)
        if ev.drift is None:
            raise NotFoundError(f"drift: no result for {ev.model}: {ev.note}")
        return {**ev.drift.to_dict(), "quality": ev.quality.to_dict()}

    @app.get("/v1/drift/history")
    async def drift_history(model: str) -> dict[str, Any]:
        """Recent evaluations of ``model`` (drift share and quality), oldest first."""
        return {"model": model, "evaluations": mon.history(model)}

    @app.get("/v1/drift/report", response_class=HTMLResponse)
    async def report(model: str | None = None) -> HTMLResponse:
        ev = mon.latest(model)
        if ev.drift is None or ev.drift.html is None:
            raise NotFoundError(f"drift report: none yet for {ev.model}")
        return HTMLResponse(ev.drift.html)

    @app.post("/v1/evaluate")
    async def evaluate() -> dict[str, Any]:
        done = await run_in_threadpool(mon.evaluate_all)
        return {
            "evaluations": [
                {
                    "model": ev.model,
                    "window_size": ev.window_size,
                    "drift_detected": None if ev.drift is None else ev.drift.drift_detected,
                    "drift_share": None if ev.drift is None else ev.drift.drift_share,
                    "quality": ev.quality.to_dict(),
                    "retrain_triggered": ev.trigger is not None,
                    "note": ev.note,
                }
                for ev in done
            ]
        }

    @app.post(FEEDBACK_PATH)
    async def feedback(body: Feedback) -> dict[str, Any]:
        if body.reviewer_role not in REVIEWER_ROLES:
            raise InvalidInputError(f"reviewer_role: expected one of {', '.join(REVIEWER_ROLES)}")
        await run_in_threadpool(
            mon.store.record_feedback,
            body.request_id,
            body.label,
            None if body.mask_rle is None else body.mask_rle.model_dump(),
            reviewer_role=body.reviewer_role,
        )
        return {"request_id": body.request_id, "stored": True}

    app.add_middleware(
        ServiceMiddleware,
        auth=auth,
        needed_role=needed_role,
        max_request_bytes=settings.max_request_bytes,
        service="monitor",
    )
    return app
