"""The edge's composition root and HTTP side: health, readiness, ``/metrics``, the outbox
listing and the explicit "series complete" trigger (admin keys). The DIMSE listener and the
analysis/delivery loop run for the app's lifetime."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from medops.clinical import Chain, ClinicalPlane
from medops.clinical.v2 import V2Predictor
from medops.errors import InvalidInputError, UnsupportedMediaTypeError
from medops.monitoring import PredictionFeatures
from medops.monitoring.store import PredictionStore
from medops.service.auth import Authenticator
from medops.service.errors import install_error_handlers
from medops.service.health import METRICS_PATH, OPEN_PATHS, add_health_routes
from medops.service.middleware import ServiceMiddleware

from .delivery import CStoreSender, Sender, StowSender
from .edge import DicomEdge, EdgeMetrics
from .polling import Poller
from .settings import DicomEdgeSettings

log = logging.getLogger("medops.dicom_edge")


STOW_PATH = "/dicom-web/studies"


def needed_role(method: str, path: str) -> str | tuple[str, ...] | None:
    """Health and metrics open; STOW-RS (sending studies in, like an analysis request) a client
    key; everything else (the outbox holds results) an admin key."""
    if path in OPEN_PATHS:
        return None
    if method == "POST" and (path == STOW_PATH or path.startswith(STOW_PATH + "/")):
        return ("client",)
    return "admin"


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/related; type="application/dicom"`` body (PS3.18 STOW-RS)."""
    import email.parser
    import email.policy

    media = content_type.split(";")[0].strip().lower()
    if media != "multipart/related" or "application/dicom" not in content_type.lower():
        raise UnsupportedMediaTypeError(
            f'STOW-RS takes multipart/related; type="application/dicom", not {media or "none"}'
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise InvalidInputError("STOW-RS: the body is not a multipart message")
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload:
            parts.append(payload)
    if not parts:
        raise InvalidInputError("STOW-RS: the body holds no DICOM part")
    return parts


def stow_answer(results: list[tuple[str | None, str | None, int]]) -> tuple[int, dict[str, Any]]:
    """PS3.18's Store Instances Response: stored and failed instances (UIDs the caller sent,
    so nothing new leaves), 200 all stored, 202 some failed, 409 none stored."""
    stored, failed = [], []
    for sop_class, sop_uid, status in results:
        item: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
            "00081155": {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"},
        }
        if status == 0:
            stored.append(item)
        else:
            failed.append({**item, "00081197": {"vr": "US", "Value": [status]}})
    answer: dict[str, Any] = {}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    code = 200 if not failed else 202 if stored else 409
    return code, answer


def build_sender(settings: DicomEdgeSettings) -> Sender:
    if settings.destination == "stow":
        if not settings.stow_url:
            raise InvalidInputError("destination stow needs MEDOPS_DICOM_STOW_URL")
        return StowSender(settings.stow_url)
    return CStoreSender(
        settings.dest_host, settings.dest_port, settings.dest_ae_title, settings.ae_title
    )


def build_edge(
    settings: DicomEdgeSettings, registry: CollectorRegistry
) -> tuple[DicomEdge, V2Predictor]:
    predictor = V2Predictor(
        settings.endpoint_url,
        api_key=None
        if settings.endpoint_api_key is None
        else settings.endpoint_api_key.get_secret_value(),
        timeout_s=settings.endpoint_timeout_s,
    )
    chain = Chain(classifier=settings.classifier, segmenter=settings.segmenter)
    key = settings.deid_key
    plane = ClinicalPlane(
        predictor,
        {settings.chain: chain},
        default_chain=settings.chain,
        deid_key=None if key is None else key.get_secret_value().encode(),
        store=None if settings.store_url is None else PredictionStore(settings.store_url),
        features=PredictionFeatures(settings.home),
    )
    edge = DicomEdge(settings, plane, build_sender(settings), EdgeMetrics(registry))
    if settings.poll_url:
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(url=settings.poll_url.rstrip("/"))
        client.set_http_retry_params(retry=False)  # the next poll is the retry
        edge.poller = Poller(
            client,
            edge.spool,
            modality=settings.poll_modality,
            series_description=settings.poll_series_description,
            days=settings.poll_days,
            limit=settings.poll_limit,
        )
    return edge, predictor


def create_app(
    settings: DicomEdgeSettings,
    *,
    registry: CollectorRegistry | None = None,
    auth: Authenticator | None = None,
) -> FastAPI:
    registry = registry or CollectorRegistry()
    auth = auth or settings.authenticator()
    edge, predictor = build_edge(settings, registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        edge.start_listener()
        stop = asyncio.Event()
        task = asyncio.create_task(edge.run(stop))
        try:
            yield
        finally:
            stop.set()
            await task
            edge.stop_listener()
            await predictor.aclose()

    app = FastAPI(title="medops dicom edge", lifespan=lifespan)
    app.state.edge = edge
    install_error_handlers(app)

    async def live() -> bool:
        return True

    async def ready() -> tuple[bool, dict[str, Any]]:
        listening = edge._ae is not None
        return listening, {} if listening else {"reason": "the DIMSE listener is not running"}

    add_health_routes(app, live, ready)

    @app.get(METRICS_PATH)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/outbox")
    async def outbox() -> dict[str, Any]:
        entries = await asyncio.to_thread(edge.outbox_listing)
        return {"pending": len(entries), "entries": entries}

    async def stow(request: Request) -> Response:
        parts = multipart_parts(await request.body(), request.headers.get("content-type", ""))
        results = await asyncio.to_thread(lambda: [edge.store_with_uids(p) for p in parts])
        code, answer = stow_answer(results)
        return Response(json.dumps(answer), status_code=code, media_type="application/dicom+json")

    app.add_api_route(STOW_PATH, stow, methods=["POST"])
    app.add_api_route(STOW_PATH + "/{study}", stow, methods=["POST"])

    @app.get("/v1/series/refused")
    async def refused() -> dict[str, Any]:
        """Series that were not analysed (mixed sizes, undecodable, ...), with the reason."""
        return {"series": await asyncio.to_thread(edge.spool.refusals)}

    @app.post("/v1/series/complete")
    async def complete() -> dict[str, Any]:
        """Treat every spooled series as complete now (no waiting for the quiet time)."""
        return {"triggered": await asyncio.to_thread(edge.spool.trigger)}

    app.add_middleware(
        ServiceMiddleware,
        auth=auth,
        needed_role=needed_role,
        max_request_bytes=settings.max_request_bytes,
        service="dicom_edge",
    )
    return app
