"""The REST layer: Open Inference Protocol (JSON and binary tensors), analyze and routing.

Thin by design: it parses the wire format, calls the :class:`DataPlane` and writes the answer.
Request ids, authentication, size limits, error bodies and access logs are handled once by the
shared :class:`~medops.service.middleware.ServiceMiddleware` with the gateway's role policy.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Callable
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from medops.clinical import (
    SEGMENT_MODES,
    AnalyzeRequest,
    ClinicalPlane,
    SegmentMode,
    Upload,
    choose_media_type,
)
from medops.clinical.explain import (
    METHODS,
    TARGETS,
    Explainer,
    ExplainRequest,
    Method,
    Target,
    parse_slices,
)
from medops.clinical.feedback import record_feedback
from medops.clinical.preview import preview
from medops.clinical.review import PredictionLog, review_queue
from medops.errors import InvalidInputError, MedopsError, NotFoundError
from medops.service.auth import ROLES, Authenticator
from medops.service.errors import install_error_handlers
from medops.service.health import OPEN_PATHS, add_health_routes
from medops.service.logs import REQUEST_ID
from medops.service.middleware import ServiceMiddleware

from .codec import HEADER_LENGTH, decode_request, encode_response
from .dataplane import DataPlane
from .settings import GatewaySettings
from .types import RestWire
from .ui import SecurityHeaders, add_ui_routes, is_page

ADMIN_PATHS = frozenset({"/v1/routing/audit"})
FEEDBACK_PATH = "/v1/feedback"
SESSION_PATH = "/v1/session"
GRAFANA_DASHBOARDS = (
    ("medops-drift-quality", "Drift and quality"),
    ("medops-variants", "Variants (canary, A/B, shadow)"),
    ("medops-traffic", "Traffic"),
    ("medops-latency", "Latency"),
    ("medops-errors", "Errors"),
)
"""The Helm chart's Grafana dashboards (``charts/medops/files/dashboards``): uid, title."""


def needed_role(method: str, path: str) -> str | tuple[str, ...] | None:
    """``None`` for health, metrics and the page files (``/ui/``: no data; the calls they make
    send a key), ``admin`` for changing routing, a reviewer or client key for feedback, any
    key to ask which role it has, ``client`` otherwise."""
    if path in OPEN_PATHS or is_page(path):
        return None
    if path == FEEDBACK_PATH and method == "POST":
        return ("reviewer", "client")
    if path == SESSION_PATH:
        return ROLES
    if path in ADMIN_PATHS or (path == "/v1/routing" and method != "GET"):
        return "admin"
    return "client"


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error) as exc:
        raise InvalidInputError(f"request body is not valid {encoding} ({exc})") from None
    raise InvalidInputError(f"unsupported Content-Encoding {encoding!r}")


async def _upload(request: Request) -> Upload:
    """The body as an :class:`Upload`: one file, or a multipart form's file parts (several
    parts: the files of one DICOM series)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form()
        except Exception as exc:  # the multipart parser raises its own types
            raise InvalidInputError(f"malformed multipart body ({type(exc).__name__})") from None
        parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not parts:
            raise InvalidInputError("multipart body holds no file part")
        files = tuple([await p.read() for p in parts])
        if len(files) == 1:
            return Upload(files, parts[0].filename, parts[0].content_type)
        return Upload(files, None, "application/dicom")
    body = await request.body()
    if not body:
        raise InvalidInputError("empty body: send an image file or a multipart upload")
    return Upload((body,), None, content_type or None)


def _json(doc: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(doc, status_code=status)


def create_app(
    settings: GatewaySettings,
    dataplane: DataPlane,
    auth: Authenticator,
    clinical: ClinicalPlane,
    *,
    store: PredictionLog | None = None,
    catalog: Callable[[], list[dict[str, Any]]] | None = None,
) -> FastAPI:
    """The REST application; the composition root builds its parts (``store``: the prediction
    log feedback is written to; ``catalog``: the registry's view of the served models)."""
    app = FastAPI(
        title="medops gateway",
        description="Open Inference Protocol (KServe V2) and the clinical analyze API.",
        docs_url="/docs",
        redoc_url=None,
    )

    install_error_handlers(app)

    # ------------------------------------------------------------------ health

    async def ready() -> tuple[bool, dict[str, Any]]:
        ok, models = await dataplane.readiness()
        return ok, {"models": models}

    add_health_routes(app, dataplane.live, ready)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if dataplane.metrics is None:
            raise NotFoundError("metrics are off")
        return Response(generate_latest(dataplane.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v2")
    async def server_metadata() -> Response:
        return _json(dataplane.server_metadata())

    # ------------------------------------------------------------------ models

    @app.get("/v2/models")
    async def model_index() -> Response:
        """Every served model with its state (the V2 repository index's fields and, like
        KServe's list, one entry per model)."""
        return _json({"models": await dataplane.model_index()})

    @app.post("/v2/repository/index")
    async def repository_index() -> Response:
        """The Open Inference Protocol's repository extension index (Triton's shape): a list
        of ``{name, version, state, reason}``."""
        models = await dataplane.model_index()
        return _json(
            [{k: m[k] for k in ("name", "version", "state", "reason") if k in m} for m in models]
        )

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str | None = None) -> Response:
        return _json(dataplane.model_metadata(model, version))

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str | None = None) -> Response:
        ok = await dataplane.model_ready(model, version)
        return _json({"name": model, "ready": ok}, 200 if ok else 503)

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(request: Request, model: str, version: str | None = None) -> Response:
        headers = request.headers
        body = _decode_body(await request.body(), headers.get("content-encoding"))
        length = headers.get(HEADER_LENGTH)
        if length is not None and not length.isdigit():
            raise InvalidInputError("Inference-Header-Content-Length must be an integer")
        infer_request, binary = decode_request(
            model, version, body, int(length) if length is not None else None
        )
        response = await dataplane.infer(infer_request, headers)
        if isinstance(response.wire, RestWire):
            payload, header_length = response.wire.body, response.wire.header_length
        else:
            payload, header_length = encode_response(response, binary)
        out_headers = {
            "x-medops-variant": response.variant or "",
            "x-medops-model-version": response.version,
        }
        if header_length is None:
            return Response(payload, media_type="application/json", headers=out_headers)
        out_headers["Inference-Header-Content-Length"] = str(header_length)
        return Response(payload, media_type="application/octet-stream", headers=out_headers)

    # ------------------------------------------------------------------ clinical API

    async def analyze_request(request: Request) -> AnalyzeRequest:
        """What ``/v1/analyze`` and ``/v1/explain`` share: upload, segment mode, routing."""
        media_type = choose_media_type(request.headers.get("accept"))
        query = request.query_params
        segment = query.get("segment", "auto").lower()
        if segment not in SEGMENT_MODES:
            raise InvalidInputError(f"segment must be one of {SEGMENT_MODES}, got {segment!r}")
        return AnalyzeRequest(
            upload=await _upload(request),
            segment=cast(SegmentMode, segment),
            media_type=media_type,
            routing=request.headers,
            request_id=REQUEST_ID.get(),
            model=query.get("model"),
            chain=query.get("chain"),
        )

    @app.post("/v1/analyze")
    async def analyze(request: Request) -> Response:
        analysis = await clinical.analyze(await analyze_request(request))
        answer = analysis.answer
        assert answer is not None
        headers = {
            "x-medops-variant": analysis.first.route.variant,
            "x-medops-model-version": analysis.first.route.version,
        }
        if answer.filename:
            headers["content-disposition"] = f'attachment; filename="{answer.filename}"'
        return Response(answer.body, media_type=answer.media_type, headers=headers)

    explainer = Explainer(clinical, torch_models=dataplane.models.source.torch_model)

    @app.post("/v1/explain")
    async def explain(request: Request) -> Response:
        """Saliency per slice (``slices=K[,K...]``; all by default) of the classifier's
        decision and the segmenter's mask, by occlusion (default) or ``method=gradcam`` (409
        for a version without torch weights): JSON arrays, or one slice's PNG heat map
        (``Accept: image/png``; ``target=classifier|segmenter``). Upload forms as analyze."""
        query = request.query_params
        target = query.get("target", "auto").lower()
        if target not in TARGETS:
            raise InvalidInputError(f"target must be one of {TARGETS}, got {target!r}")
        method = query.get("method", "occlusion").lower()
        if method not in METHODS:
            raise InvalidInputError(f"method must be one of {METHODS}, got {method!r}")
        slices = parse_slices(query.get("slices"))
        explanation = await explainer.explain(
            ExplainRequest(
                await analyze_request(request),
                slices,
                cast(Target, target),
                cast(Method, method),
            )
        )
        answer = explanation.answer
        assert answer is not None
        first = explanation.analysis.first.route
        headers = {"x-medops-variant": first.variant, "x-medops-model-version": first.version}
        return Response(answer.body, media_type=answer.media_type, headers=headers)

    # ------------------------------------------------------------------ review and console

    @app.get(SESSION_PATH)
    async def session(request: Request) -> Response:
        """The role of the caller's key (what the pages show depends on it)."""
        return _json({"role": request.state.role})

    @app.post(FEEDBACK_PATH)
    async def feedback(request: Request) -> Response:
        """A reviewer's confirmation or correction of one logged prediction (a slice's
        ``prediction_id``): ``label`` and/or ``mask_rle`` (COCO RLE at the image's size), into
        the prediction log the monitor reads. Unknown ids are 404; a malformed body or a mask
        of the wrong size is 400, naming the field."""
        if store is None:
            raise NotFoundError("feedback needs the prediction log (MEDOPS_GATEWAY_PREDICTION_LOG)")
        try:
            body = await request.json()
        except ValueError as exc:
            raise InvalidInputError(f"feedback is not valid JSON ({exc})") from None
        request_id = await asyncio.to_thread(record_feedback, store, body)
        return _json({"request_id": request_id, "stored": True})

    @app.post("/v1/preview")
    async def preview_upload(request: Request) -> Response:
        """The upload's slices as the review page shows them (de-identified, scaled to 8 bits,
        PNG data URLs at the image's size); ``slices=K[,K...]`` for some. Upload forms as
        analyze."""
        slices = parse_slices(request.query_params.get("slices"))
        upload = await _upload(request)
        doc = await asyncio.to_thread(preview, upload, clinical.deid_key, slices)
        return _json(doc)

    @app.get("/v1/review/queue")
    async def queue(model: str, limit: int = 20) -> Response:
        """The unreviewed predictions of ``model``, least confident first, and whether each
        study was kept (de-identified) for the review page."""
        if store is None:
            raise NotFoundError("the review queue needs the prediction log")
        items = await asyncio.to_thread(review_queue, store, model, clinical.review, limit=limit)
        enabled = clinical.review is not None and clinical.review.enabled
        return _json({"model": model, "kept_for_review": enabled, "items": items})

    @app.get("/v1/review/studies/{request_id}")
    async def kept_study(request_id: str) -> Response:
        """A study kept for review: its analysis (as analyze answered it) and slice previews."""
        if clinical.review is None:
            raise NotFoundError("keeping studies for review is off")
        return _json(await asyncio.to_thread(clinical.review.get, request_id))

    @app.get("/v1/models/registry")
    async def model_registry() -> Response:
        """Each served model's versions with aliases, gate verdicts and evaluation figures."""
        if catalog is None:
            return _json({"models": []})
        return _json({"models": await asyncio.to_thread(catalog)})

    @app.get("/v1/monitor/history")
    async def monitor_history(request: Request, model: str) -> Response:
        """The monitor's recent evaluations of ``model`` (drift share, quality from feedback),
        asked with the caller's own key, for the console's drift chart."""
        if not settings.monitor_url:
            raise NotFoundError("no monitor configured (MEDOPS_GATEWAY_MONITOR_URL)")
        return await _monitor_get(
            settings.monitor_url, "/v1/drift/history", {"model": model}, request
        )

    @app.get("/v1/monitor/report")
    async def monitor_report(request: Request, model: str) -> Response:
        """The monitor's latest Evidently drift report of ``model`` (a self-contained HTML
        page), asked with the caller's key; the console saves it as a file, since a page
        with inline scripts is not shown under the pages' CSP."""
        if not settings.monitor_url:
            raise NotFoundError("no monitor configured (MEDOPS_GATEWAY_MONITOR_URL)")
        answer = await _monitor_get(
            settings.monitor_url, "/v1/drift/report", {"model": model}, request
        )
        if answer.status_code == 200:
            answer.headers["content-disposition"] = 'attachment; filename="drift-report.html"'
        return answer

    @app.get("/v1/console/links")
    async def console_links() -> Response:
        """Where the console links to: the Grafana dashboards (``MEDOPS_GATEWAY_GRAFANA_URL``),
        and whether the monitor's Evidently report can be fetched."""
        base = (settings.grafana_url or "").rstrip("/")
        dashboards = [{"title": t, "url": f"{base}/d/{uid}"} for uid, t in GRAFANA_DASHBOARDS]
        return _json(
            {
                "grafana": dashboards if base else [],
                "evidently_report": bool(settings.monitor_url),
            }
        )

    add_ui_routes(app)

    # ------------------------------------------------------------------ routing

    @app.get("/v1/routing")
    async def get_routing() -> Response:
        document = dataplane.router.document()
        return _with_etag(_json(document), document)

    @app.put("/v1/routing")
    async def put_routing(request: Request) -> Response:
        """Replace the document; ``If-Match: "<revision>"`` (or the document's ``revision``)
        makes it a compare-and-set: a stale revision gets 409 naming the current one."""
        try:
            document = await request.json()
        except ValueError as exc:
            raise InvalidInputError(f"routing document is not valid JSON ({exc})") from None
        if not isinstance(document, dict):
            raise InvalidInputError("routing document must be a JSON object")
        expected = _expected_revision(request.headers.get("if-match"), document)
        accepted = dataplane.router.replace(
            document, actor=request.state.role, expected_revision=expected
        )
        await dataplane.sync_models()
        return _with_etag(_json(accepted), accepted)

    @app.get("/v1/routing/audit")
    async def routing_audit() -> Response:
        return _json({"entries": dataplane.router.audit()})

    @app.get("/v1/routing/decisions")
    async def routing_decisions() -> Response:
        """Progressive-delivery analysis decisions, live per-variant counters and the state of
        each canary (the fleet's when replicas share a routing store)."""
        router = dataplane.router
        return _json(
            {
                "decisions": router.decisions(),
                "variants": router.stats(),
                "progress": router.progress(),
            }
        )

    app.add_middleware(
        ServiceMiddleware,
        auth=auth,
        needed_role=needed_role,
        max_request_bytes=settings.max_request_bytes,
        service="gateway",
    )
    app.add_middleware(SecurityHeaders)
    return app


async def _monitor_get(base: str, path: str, params: dict[str, str], request: Request) -> Response:
    """GET from the monitor with the caller's Authorization; its 4xx pass through as they are,
    an unreachable monitor is 503."""
    import httpx

    url = (base if "://" in base else f"http://{base}").rstrip("/") + path
    headers = {"authorization": request.headers.get("authorization", "")}
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            answer = await client.get(url, params=params, headers=headers)
    except httpx.HTTPError as exc:
        raise MedopsError(
            f"the monitor is unreachable ({type(exc).__name__})", status_code=503
        ) from None
    if answer.status_code >= 500:
        raise MedopsError(f"the monitor answered {answer.status_code}", status_code=502)
    return Response(
        answer.content,
        status_code=answer.status_code,
        media_type=answer.headers.get("content-type", "application/json"),
    )


def _with_etag(response: Response, document: dict[str, Any]) -> Response:
    response.headers["etag"] = f'"{document["revision"]}"'
    return response


def _expected_revision(if_match: str | None, document: dict[str, Any]) -> int | None:
    """The revision a PUT was written against: ``If-Match`` (an ETag from GET, quoted or not)
    or the document's ``revision``; None when neither is given (replace what is current)."""
    given: int | None = None
    if if_match is not None and if_match.strip() != "*":
        tag = if_match.strip().removeprefix("W/").strip('"')
        if not tag.isdigit():
            raise InvalidInputError(
                f'If-Match: expected the routing revision as an ETag ("7"), got {if_match[:32]!r}'
            )
        given = int(tag)
    body = document.get("revision")
    if body is not None:
        if isinstance(body, bool) or not isinstance(body, int) or body < 0:
            raise InvalidInputError(f"revision: expected a whole number >= 0, got {body!r}")
        if given is not None and given != body:
            raise InvalidInputError(
                f"If-Match names revision {given} but the document's revision is {body}"
            )
        given = body
    return given
