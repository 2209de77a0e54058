"""The gRPC layer: ``inference.GRPCInferenceService`` on ``grpc.aio``.

Uses the stubs generated from the Open Inference Protocol proto that ship with tritonclient,
so ``tritonclient.grpc`` works against the gateway unchanged. Tensors travel as
``raw_input_contents`` (what tritonclient sends) or typed ``contents``; answers always use
``raw_output_contents``. Routing headers come from the call's metadata; the chosen variant and
version go back as initial metadata.

``ModelInfer`` takes and returns serialised messages: the request is split, not parsed whole
(:mod:`.protowire`), so a gRPC backend gets the caller's bytes and the caller gets the
backend's answer as it came.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2, service_pb2_grpc

from medops.errors import InvalidInputError, MedopsError
from medops.service.auth import Authenticator
from medops.service.errors import grpc_code, public_error
from medops.service.logs import MODEL, REQUEST_ID, VARIANT

from .backends.tritongrpc import CHANNEL_OPTIONS
from .dataplane import DataPlane
from .protowire import split_raw_contents
from .types import (
    GrpcWire,
    InferRequest,
    InferResponse,
    Tensor,
    numpy_dtype,
    refuse_shared_memory,
)

log = logging.getLogger("medops.gateway.access")

T = TypeVar("T")

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
PUBLIC_METHODS = frozenset({"ServerLive", "ServerReady"})
SERVICE = "inference.GRPCInferenceService"


def _tensor(spec: Any, raw: memoryview | bytes | None) -> Tensor:
    refuse_shared_memory(spec.parameters, f"input {spec.name!r}")
    shape = [int(d) for d in spec.shape]
    dtype = numpy_dtype(spec.datatype, f"input {spec.name!r}")
    count = int(np.prod(shape)) if shape else 1
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInputError(
                f"input {spec.name!r}: {len(raw)} bytes do not match "
                f"shape {shape} of {spec.datatype}"
            )
        return Tensor(spec.name, np.frombuffer(raw, dtype=dtype).reshape(shape))
    field = _CONTENTS_FIELD.get(spec.datatype)
    values = getattr(spec.contents, field) if field else []
    if len(values) != count:
        raise InvalidInputError(
            f"input {spec.name!r}: {len(values)} values do not match shape {shape}"
        )
    return Tensor(spec.name, np.asarray(values, dtype=dtype).reshape(shape))


def decode_infer(message: bytes) -> InferRequest:
    """A serialised ``ModelInferRequest`` as an :class:`InferRequest` whose tensors are views
    of ``message``, which travels along as the request's wire."""
    small, raws = split_raw_contents(message)
    try:
        request = service_pb2.ModelInferRequest.FromString(small)
    except DecodeError:
        raise InvalidInputError("ModelInferRequest is not a valid protobuf message") from None
    if raws and len(raws) != len(request.inputs):
        raise InvalidInputError("raw_input_contents must hold one entry per input")
    inputs = [_tensor(spec, raws[i] if raws else None) for i, spec in enumerate(request.inputs)]
    if not inputs:
        raise InvalidInputError("ModelInferRequest holds no inputs")
    for output in request.outputs:
        refuse_shared_memory(output.parameters, f"output {output.name!r}")
    return InferRequest(
        model=request.model_name,
        version=request.model_version or None,
        inputs=inputs,
        id=request.id or None,
        outputs=[o.name for o in request.outputs] or None,
        wire=GrpcWire(message),
    )


def encode_infer(response: InferResponse) -> bytes:
    """The serialised ``ModelInferResponse``: the backend's own when it was forwarded."""
    if isinstance(response.wire, GrpcWire):
        return response.wire.message
    r = service_pb2.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id or ""
    )
    for t in response.tensors():
        r.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        r.raw_output_contents.append(np.ascontiguousarray(t.data).tobytes())
    serialised: bytes = r.SerializeToString()
    return serialised


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, auth: Authenticator) -> None:
        self.dataplane = dataplane
        self.auth = auth

    async def _call(
        self,
        name: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[dict[str, str]], Awaitable[T]],
    ) -> T:
        """Request id, authentication, error mapping and an access line, once for every RPC."""
        start = time.perf_counter()
        metadata = {
            k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)
        }
        rid = metadata.get("x-request-id") or uuid.uuid4().hex
        REQUEST_ID.set(rid)
        MODEL.set(None)
        VARIANT.set(None)
        code = grpc.StatusCode.OK
        try:
            if name not in PUBLIC_METHODS:
                self.auth.check(metadata.get("authorization"), "client")
            return await body(metadata)
        except Exception as exc:
            status, text = public_error(exc)
            code = grpc_code(status)
            await context.abort(code, text)
            raise  # abort raises; this line only satisfies the type checker
        finally:
            log.info(
                "rpc",
                extra={
                    "request_id": rid,
                    "model": MODEL.get(),
                    "variant": VARIANT.get(),
                    "method": name,
                    "code": code.name,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body(_: dict[str, str]) -> Any:
            return service_pb2.ServerLiveResponse(live=await self.dataplane.live())

        return await self._call("ServerLive", context, body)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body(_: dict[str, str]) -> Any:
            return service_pb2.ServerReadyResponse(ready=await self.dataplane.ready())

        return await self._call("ServerReady", context, body)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body(_: dict[str, str]) -> Any:
            ok = await self.dataplane.model_ready(request.name, request.version or None)
            return service_pb2.ModelReadyResponse(ready=ok)

        return await self._call("ModelReady", context, body)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body(_: dict[str, str]) -> Any:
            meta = self.dataplane.server_metadata()
            return service_pb2.ServerMetadataResponse(
                name=meta["name"], version=meta["version"], extensions=meta["extensions"]
            )

        return await self._call("ServerMetadata", context, body)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body(_: dict[str, str]) -> Any:
            meta = self.dataplane.model_metadata(request.name, request.version or None)
            r = service_pb2.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"]
            )
            for t in meta.get("inputs", []):
                r.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            for t in meta.get("outputs", []):
                r.outputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            return r

        return await self._call("ModelMetadata", context, body)

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Serialised in, serialised out (registered without (de)serialisers)."""

        async def body(metadata: dict[str, str]) -> bytes:
            response = await self.dataplane.infer(decode_infer(request), metadata)
            await context.send_initial_metadata(
                (
                    ("x-medops-variant", response.variant or ""),
                    ("x-medops-model-version", response.version),
                )
            )
            return encode_infer(response)

        return await self._call("ModelInfer", context, body)


def create_grpc_server(
    dataplane: DataPlane, auth: Authenticator, host: str, port: int, max_message_bytes: int
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server, bound (not started); returns it and the bound port."""
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *[o for o in CHANNEL_OPTIONS if not o[0].startswith("grpc.max_")],
    ]
    server = grpc.aio.server(options=options)
    servicer = InferenceServicer(dataplane, auth)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    # registered again without (de)serialisers: the later registration is the one served
    server.add_registered_method_handlers(
        SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)}
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise MedopsError(f"cannot bind the gRPC port {host}:{port}", status_code=500)
    return server, bound
