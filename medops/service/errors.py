"""One mapping from medops errors to wire statuses, for REST and gRPC, in every service.

User faults carry their status (``MedopsError.status_code``) and a message meant for the
caller. Anything else is a bug: logged with its traceback under an error id, answered with a
500 that says nothing about internals. Every body is ``{"error": message}``.
"""

from __future__ import annotations

import json
import logging
import uuid

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from medops.errors import MedopsError

log = logging.getLogger("medops.service.errors")

GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    406: grpc.StatusCode.INVALID_ARGUMENT,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.FAILED_PRECONDITION,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def error_body(message: str) -> bytes:
    """The KServe error body ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


def public_error(exc: BaseException) -> tuple[int, str]:
    """Status and caller-safe message of any exception; unexpected ones are logged here."""
    if isinstance(exc, MedopsError):
        if exc.status_code >= 500:
            log.warning("request failed", extra={"status": exc.status_code, "reason": exc.message})
        return exc.status_code, exc.message
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error", exc_info=exc, extra={"error_id": error_id})
    return 500, f"internal error (id {error_id})"


def grpc_code(status: int) -> grpc.StatusCode:
    return GRPC_CODES.get(status, grpc.StatusCode.INTERNAL)


def error_response(status: int, message: str) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    """Answer medops errors, invalid requests and unknown routes with the one error body."""

    @app.exception_handler(MedopsError)
    async def _medops_error(_: Request, exc: MedopsError) -> Response:
        return error_response(*public_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        # "body.mask_rle.counts" names the field as the caller wrote it: drop the "body" part.
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
            for e in exc.errors()
        )
        return error_response(400, f"invalid request: {where}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail))
