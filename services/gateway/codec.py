"""The V2 REST wire format: JSON tensors and the binary tensor extension."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from medops.errors import InvalidInputError

from .types import (
    InferRequest,
    InferResponse,
    RestWire,
    Tensor,
    numpy_dtype,
    refuse_shared_memory,
)

HEADER_LENGTH = "inference-header-content-length"


def _tensor_from_json(item: dict[str, Any], binary: memoryview, offset: int) -> tuple[Tensor, int]:
    name = item.get("name")
    if not isinstance(name, str):
        raise InvalidInputError("inputs[]: every input needs a string 'name'")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInputError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    dtype = numpy_dtype(str(item.get("datatype")), f"input {name!r}")
    count = int(np.prod(shape)) if shape else 1
    params = dict(item.get("parameters") or {})
    refuse_shared_memory(params, f"input {name!r}")
    size = params.pop("binary_data_size", None)
    if size is not None:
        size = int(size)
        if offset + size > len(binary):
            raise InvalidInputError(
                f"input {name!r}: binary_data_size {size} runs past the end of the body"
            )
        if size != count * dtype.itemsize:
            raise InvalidInputError(
                f"input {name!r}: {size} bytes do not match shape {shape} of {item['datatype']}"
            )
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        return Tensor(name, array, params), offset + size
    if "data" not in item:
        raise InvalidInputError(f"input {name!r}: neither 'data' nor binary_data_size given")
    try:
        # A number beyond the datatype's range becomes ±Inf, which validation then refuses.
        with np.errstate(over="ignore"):
            values: np.ndarray = np.asarray(item["data"], dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"input {name!r}: data is not {item['datatype']}: {exc}") from None
    if values.size != count:
        raise InvalidInputError(f"input {name!r}: {values.size} values do not match shape {shape}")
    return Tensor(name, values.reshape(shape), params), offset


def decode_request(
    model: str, version: str | None, body: bytes, header_length: int | None
) -> tuple[InferRequest, bool]:
    """Parse a V2 infer body; returns the request and whether outputs should be binary."""
    view = memoryview(body)
    if header_length is None:
        header_bytes, binary = view, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInputError("Inference-Header-Content-Length is larger than the body")
        header_bytes, binary = view[:header_length], view[header_length:]
    try:
        doc = json.loads(bytes(header_bytes))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InvalidInputError("request body must be an object with a non-empty 'inputs' list")
    offset = 0
    inputs = []
    for item in doc["inputs"]:
        if not isinstance(item, dict):
            raise InvalidInputError("inputs[]: every input must be an object")
        tensor, offset = _tensor_from_json(item, binary, offset)
        inputs.append(tensor)
    params = dict(doc.get("parameters") or {})
    binary_out = bool(params.pop("binary_data_output", False))
    outputs = None
    if isinstance(doc.get("outputs"), list):
        outputs = []
        for out in doc["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInputError("outputs[]: every output needs a string 'name'")
            outputs.append(out["name"])
            refuse_shared_memory(out.get("parameters") or {}, f"output {out['name']!r}")
            if (out.get("parameters") or {}).get("binary_data", False):
                binary_out = True
    request = InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        id=doc.get("id"),
        outputs=outputs,
        parameters=params,
        wire=RestWire(body, header_length),
    )
    return request, binary_out


def encode_response(response: InferResponse, binary: bool) -> tuple[bytes, int | None]:
    """Serialise a response; returns the body and the JSON header length (binary only)."""
    outputs = []
    chunks: list[bytes] = []
    for t in response.tensors():
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary:
            raw = np.ascontiguousarray(t.data).tobytes()
            entry["parameters"] = {**t.parameters, "binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            if t.parameters:
                entry["parameters"] = t.parameters
            entry["data"] = t.data.ravel().tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    }
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not binary:
        return header, None
    return b"".join([header, *chunks]), len(header)


def encode_request(request: InferRequest, *, binary: bool) -> tuple[bytes, int | None]:
    """Serialise a request for a remote V2 server (binary tensors when it speaks them)."""
    inputs = []
    chunks: list[bytes] = []
    for t in request.inputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary:
            raw = np.ascontiguousarray(t.data).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = t.data.ravel().tolist()
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id is not None:
        doc["id"] = request.id
    if request.outputs is not None:
        doc["outputs"] = [
            {"name": n, "parameters": {"binary_data": binary}} for n in request.outputs
        ]
    elif binary:
        doc["parameters"] = {"binary_data_output": True}
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not binary:
        return header, None
    return b"".join([header, *chunks]), len(header)


def encode_request_shm(request: InferRequest, placed: list[tuple[str, int, int]]) -> bytes:
    """A JSON-only request whose inputs lie in registered shared memory regions."""
    inputs = [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": t.shape,
            "parameters": {
                "shared_memory_region": region,
                "shared_memory_offset": offset,
                "shared_memory_byte_size": size,
            },
        }
        for t, (region, offset, size) in zip(request.inputs, placed, strict=True)
    ]
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id is not None:
        doc["id"] = request.id
    if request.outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in request.outputs]
    else:
        doc["parameters"] = {"binary_data_output": True}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_response(body: bytes, header_length: int | None) -> dict[str, Any]:
    """Parse a remote V2 response into ``{"model_version": ..., "outputs": [Tensor]}``."""
    view = memoryview(body)
    header = view if header_length is None else view[:header_length]
    binary = memoryview(b"") if header_length is None else view[header_length:]
    doc = json.loads(bytes(header))
    offset = 0
    outputs = []
    for item in doc.get("outputs", []):
        dtype = numpy_dtype(item["datatype"], f"output {item['name']!r}")
        params = dict(item.get("parameters") or {})
        size = params.pop("binary_data_size", None)
        if size is not None:
            array = np.frombuffer(binary[offset : offset + int(size)], dtype=dtype)
            offset += int(size)
        else:
            array = np.asarray(item["data"], dtype=dtype)
        outputs.append(Tensor(item["name"], array.reshape(item["shape"]), params))
    doc["outputs"] = outputs
    return doc
