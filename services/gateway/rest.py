"""The REST layer: Open Inference Protocol (JSON and binary tensors), analyze and routing.

Thin by design: it parses the wire format, calls the :class:`DataPlane` and writes the answer.
Request ids, authentication, size limits, error bodies and access logs are handled once in a
plain ASGI middleware (cheaper per request than Starlette's ``BaseHTTPMiddleware``).
"""

from __future__ import annotations

import gzip
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from medops.errors import InvalidInputError, MedopsError, NotFoundError, PayloadTooLargeError

from .analyze import Analyzer
from .auth import Authenticator
from .codec import HEADER_LENGTH, decode_request, encode_response
from .dataplane import DataPlane
from .errors import error_body, public_error
from .logs import MODEL, REQUEST_ID, VARIANT
from .settings import GatewaySettings

log = logging.getLogger("medops.gateway.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
"""Probes and the Prometheus scrape: no key (they carry no patient data)."""
ADMIN_PATHS = frozenset({"/v1/routing/audit"})


def needed_role(method: str, path: str) -> str | None:
    """``None`` for health, ``admin`` for changing routing, ``client`` otherwise."""
    if path in PUBLIC_PATHS:
        return None
    if path in ADMIN_PATHS or (path == "/v1/routing" and method != "GET"):
        return "admin"
    return "client"


class GatewayMiddleware:
    """Request id, authentication, body size limit, error bodies and one access log line."""

    def __init__(self, app: ASGIApp, auth: Authenticator, max_request_bytes: int) -> None:
        self.app = app
        self.auth = auth
        self.max_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id") or uuid.uuid4().hex
        REQUEST_ID.set(rid)
        MODEL.set(None)
        VARIANT.set(None)
        status = 500
        started = False
        rid_header = (b"x-request-id", rid.encode("latin-1"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        async def reply_error(code: int, text: str) -> None:
            body = error_body(text)
            await send_wrapper(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_wrapper({"type": "http.response.body", "body": body})

        method, path = scope["method"], scope["path"]
        try:
            role = needed_role(method, path)
            scope.setdefault("state", {})["role"] = (
                self.auth.check(headers.get("authorization"), role) if role else "anonymous"
            )
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise PayloadTooLargeError(
                    f"request body of {declared} bytes exceeds the limit of {self.max_bytes}"
                )
            await self.app(scope, self._limited(receive), send_wrapper)
        except Exception as exc:
            code, text = public_error(exc)
            if not started:
                await reply_error(code, text)
        finally:
            log.info(
                "request",
                extra={
                    "request_id": rid,
                    "model": MODEL.get(),
                    "variant": VARIANT.get(),
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )

    def _limited(self, receive: Receive) -> Receive:
        """Count streamed body bytes too (chunked uploads carry no Content-Length)."""
        seen = 0
        limit = self.max_bytes

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
            return message

        return wrapped


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


def _json(doc: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(doc, status_code=status)


def create_app(
    settings: GatewaySettings, dataplane: DataPlane, auth: Authenticator, analyzer: Analyzer
) -> FastAPI:
    """The REST application; the composition root builds its parts."""
    app = FastAPI(
        title="medops gateway",
        description="Open Inference Protocol (KServe V2) and the clinical analyze API.",
        docs_url="/docs",
        redoc_url=None,
    )

    @app.exception_handler(MedopsError)
    async def _medops_error(_: Request, exc: MedopsError) -> Response:
        code, text = public_error(exc)
        return Response(error_body(text), status_code=code, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return Response(error_body(f"invalid request: {where}"), 400, media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return Response(error_body(str(exc.detail)), exc.status_code, media_type="application/json")

    # ------------------------------------------------------------------ health

    @app.get("/v2/health/live")
    async def live() -> Response:
        ok = await dataplane.live()
        return _json({"live": ok}, 200 if ok else 503)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok, models = await dataplane.readiness()
        return _json({"ready": ok, "models": models}, 200 if ok else 503)

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
        if isinstance(response.wire, tuple) and response.wire[0] == "rest":
            _, payload, header_length = response.wire
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

    @app.post("/v1/analyze")
    async def analyze(request: Request) -> Response:
        return await analyzer.handle(request)

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

    app.add_middleware(GatewayMiddleware, auth=auth, max_request_bytes=settings.max_request_bytes)
    return app


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
