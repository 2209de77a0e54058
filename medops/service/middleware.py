"""The ASGI middleware every medops HTTP service runs: request id, keys, size limit, errors, log.

A plain ASGI middleware (cheaper per request than Starlette's ``BaseHTTPMiddleware``). Each
service passes its role policy: ``needed_role(method, path)`` gives the roles that may call a
path (``admin`` always may), or ``None`` for the open ones (health, metrics).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from medops.errors import PayloadTooLargeError

from .auth import Authenticator
from .errors import error_body, public_error
from .logs import MODEL, REQUEST_ID, VARIANT

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

RolePolicy = Callable[[str, str], Collection[str] | str | None]
"""``(method, path)`` -> the roles that may call it, or ``None`` when it needs no key."""


class ServiceMiddleware:
    """Request id, authentication, body size limit, error bodies and one access log line."""

    def __init__(
        self,
        app: ASGIApp,
        auth: Authenticator,
        needed_role: RolePolicy,
        max_request_bytes: int,
        service: str,
    ) -> None:
        self.app = app
        self.auth = auth
        self.needed_role = needed_role
        self.max_bytes = max_request_bytes
        self.log = logging.getLogger(f"medops.{service}.access")

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
            roles = self.needed_role(method, path)
            scope.setdefault("state", {})["role"] = (
                self.auth.check(headers.get("authorization"), roles)
                if roles is not None
                else "anonymous"
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
            self.log.info(
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
