"""Transport-neutral request and response types of the Open Inference Protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medops.errors import InvalidInputError

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_DATATYPES = {v: k for k, v in DTYPES.items()}


def numpy_dtype(datatype: str, where: str) -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype; BYTES and unknown names are a 400."""
    try:
        return DTYPES[datatype]
    except KeyError:
        raise InvalidInputError(
            f"{where}: unsupported datatype {datatype!r}; expected one of {sorted(DTYPES)}"
        ) from None


def v2_datatype(dtype: np.dtype[Any]) -> str:
    try:
        return _DATATYPES[np.dtype(dtype)]
    except KeyError:
        raise InvalidInputError(f"unsupported tensor dtype {dtype}") from None


def count_nonfinite(dtype: np.dtype[Any], buffer: bytes | memoryview | np.ndarray) -> int:
    """How many NaN or ±Inf values a tensor holds (0 for non-floating dtypes), in one
    ``np.isfinite`` pass. Takes a dtype and the raw buffer (bytes or an array) so a path that
    forwards the wire bytes without decoding a tensor can check them too."""
    if dtype.kind != "f":
        return 0
    values = buffer if isinstance(buffer, np.ndarray) else np.frombuffer(buffer, dtype=dtype)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def refuse_shared_memory(parameters: Iterable[str], where: str) -> None:
    """Shared memory regions are between the gateway and its backend: a caller naming one
    (forwarded as it came) would have the backend read or write tensors it does not own."""
    if any(str(key).startswith("shared_memory") for key in parameters):
        raise InvalidInputError(
            f"{where}: shared memory parameters are not accepted; send the tensor's data"
        )


@dataclass
class Tensor:
    """One named tensor; ``data`` is a numpy array of ``shape``."""

    name: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def datatype(self) -> str:
        return v2_datatype(self.data.dtype)

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.data.shape]


@dataclass(frozen=True)
class RestWire:
    """A V2 REST body as it travelled: a JSON header, then the binary tensors (when
    ``header_length`` is set)."""

    body: bytes
    header_length: int | None


@dataclass(frozen=True)
class GrpcWire:
    """A serialised ``ModelInferRequest`` or ``ModelInferResponse`` as it travelled."""

    message: bytes


Wire = RestWire | GrpcWire


@dataclass
class InferRequest:
    model: str
    inputs: list[Tensor]
    version: str | None = None
    """Pinned model version; ``None`` lets routing choose."""
    id: str | None = None
    outputs: list[str] | None = None
    """Requested output names; ``None`` means all."""
    parameters: dict[str, Any] = field(default_factory=dict)
    wire: Wire | None = None
    """The request as it arrived, so a backend speaking the same wire format forwards these
    bytes instead of re-encoding ``inputs`` (views into them, never copies); ``None`` when the
    data plane wants it re-encoded."""


@dataclass
class InferResponse:
    model: str
    version: str
    outputs: list[Tensor]
    id: str | None = None
    variant: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    wire: Wire | None = None
    """The backend's answer in the caller's wire format, when it was forwarded untouched;
    then ``outputs`` stays empty until :meth:`tensors` decodes it."""
    decode: Callable[[], list[Tensor]] | None = None
    """Decodes ``wire`` into output tensors, for whoever needs the numbers (prediction
    counts, shadow comparison); set with ``wire``."""

    def tensors(self) -> list[Tensor]:
        """The outputs as arrays, decoded from the forwarded bytes on first use."""
        if self.decode is not None:
            self.outputs, self.decode = self.decode(), None
        return self.outputs
