"""Just enough of the protobuf wire format to forward a ``ModelInferRequest`` untouched.

Parsing a request with protobuf copies every tensor into the message and again on each
access, and serialising it for the backend copies them once more. Instead the gateway splits
the serialised request at its top level: the small fields (names, shapes, datatypes,
parameters) are parsed by protobuf, the ``raw_input_contents`` are viewed in place, and the
original bytes are what the backend receives.
"""

from __future__ import annotations

from medops.errors import InvalidInputError

RAW_INPUT_CONTENTS = 7
"""Field number of ``ModelInferRequest.raw_input_contents`` (grpc_service.proto)."""

MODEL_VERSION = 2
"""Field number of ``ModelInferRequest.model_version``."""

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise InvalidInputError("ModelInferRequest is not a valid protobuf message")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_raw_contents(message: bytes) -> tuple[bytes, list[memoryview]]:
    """``message`` without its ``raw_input_contents`` (a few hundred bytes, for protobuf to
    parse), and views of those contents in ``message``, in order."""
    data = memoryview(message)
    small: list[memoryview] = []
    raws: list[memoryview] = []
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, kind = key >> 3, key & 7
        if kind == _VARINT:
            _, pos = _varint(data, pos)
        elif kind == _FIXED64:
            pos += 8
        elif kind == _FIXED32:
            pos += 4
        elif kind == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            if number == RAW_INPUT_CONTENTS and pos + length <= len(data):
                raws.append(data[pos : pos + length])
                pos += length
                continue
            pos += length
        else:
            raise InvalidInputError(f"ModelInferRequest: unsupported protobuf wire type {kind}")
        if pos > len(data):
            raise InvalidInputError("ModelInferRequest is truncated")
        small.append(data[start:pos])
    return b"".join(small), raws


def with_model_version(message: bytes, version: str) -> bytes:
    """``message`` naming ``version``: a later occurrence of a singular field overrides an
    earlier one when protobuf parses, so the field is appended (one copy, no re-encoding)."""
    value = version.encode()
    key = _encode_varint(MODEL_VERSION << 3 | _LENGTH_DELIMITED)
    return b"".join((message, key, _encode_varint(len(value)), value))
