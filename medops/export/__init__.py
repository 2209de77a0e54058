"""Export: single-file ONNX with parity checks, and Triton model repositories."""

from medops.export.onnx_export import (
    ExportError,
    ExportResult,
    check_onnx_parity,
    export_onnx,
    prelu_as_leaky_relu,
    read_model_metadata,
)
from medops.export.triton import (
    TritonModel,
    model_config,
    read_model_config,
    write_triton_repository,
)

__all__ = [
    "ExportError",
    "ExportResult",
    "TritonModel",
    "check_onnx_parity",
    "export_onnx",
    "model_config",
    "prelu_as_leaky_relu",
    "read_model_config",
    "read_model_metadata",
    "write_triton_repository",
]
