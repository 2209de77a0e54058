"""An int8 edge variant of an exported model: ONNX Runtime static quantization.

Weights are quantized per output channel (signed), activations per tensor (unsigned), in QDQ
format (QuantizeLinear/DequantizeLinear pairs around each quantized operator, which every ONNX
Runtime execution provider and TensorRT read), with activation ranges calibrated on slices
the caller passes (training slices: never the test split). The graph's contract is kept: one
float32 input ``image``, one float32 output ``probabilities`` (the final activation stays in
float so that probabilities keep their resolution), and every ``medops.*`` metadata entry of
the source, plus ``medops.precision = int8``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medops import modelspec
from medops.errors import InvalidInputError

META_PRECISION = "medops.precision"
"""``int8`` for a quantized variant; absent (float32) for an exported model."""
INT8 = "int8"


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    calibration_slices: int
    max_abs_diff: float
    """Largest |int8 - float32| probability over the calibration slices."""


class SliceCalibration:
    """Batches of model inputs for ONNX Runtime's calibrator (a ``CalibrationDataReader``)."""

    def __init__(self, images: np.ndarray, batch_size: int = 16) -> None:
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.batch_size = batch_size
        self._batches: Iterator[np.ndarray] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {modelspec.INPUT_NAME: batch}

    def rewind(self) -> None:
        step = self.batch_size
        self._batches = (self.images[i : i + step] for i in range(0, len(self.images), step))


def calibration_sample(images: np.ndarray, count: int) -> np.ndarray:
    """``count`` slices spread evenly over ``images`` (a training split, patient after
    patient), so the ranges see every patient rather than the first few."""
    if len(images) == 0:
        raise InvalidInputError("calibration: no slices to calibrate on")
    at = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int))
    return np.asarray(images[at], dtype=np.float32)


def _check_contract(model: Any, what: str) -> None:
    from onnx import TensorProto

    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    outputs = list(model.graph.output)
    if [i.name for i in inputs] != [modelspec.INPUT_NAME] or [o.name for o in outputs] != [
        modelspec.OUTPUT_NAME
    ]:
        raise InvalidInputError(
            f"{what}: expected one input {modelspec.INPUT_NAME!r} and one output "
            f"{modelspec.OUTPUT_NAME!r}, found {[i.name for i in inputs]} -> "
            f"{[o.name for o in outputs]}"
        )
    for value in (inputs[0], outputs[0]):
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise InvalidInputError(f"{what}: {value.name} is not float32")


def precision(path: Path) -> str:
    """The precision a model file declares (``float32`` when it says nothing)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return props.get(META_PRECISION, "float32")


def quantize_int8(source: Path, target: Path, calibration: np.ndarray) -> QuantizeResult:
    """Quantize the exported model ``source`` to int8 QDQ at ``target``, calibrated on
    ``calibration`` (model inputs ``(N, 3, S, S)``)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(source))
    _check_contract(model, source.name)
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(META_PRECISION) == INT8:
        raise InvalidInputError(f"{source.name}: already an int8 model")
    if modelspec.META_TASK not in props:
        raise InvalidInputError(f"{source.name}: lacks the medops.* serving metadata")
    images = np.ascontiguousarray(calibration, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise InvalidInputError(f"calibration: expected (N, C, S, S) inputs, got {images.shape}")
    # the final activation (sigmoid/softmax) stays float: probabilities keep their resolution
    last = [n.name for n in model.graph.node if modelspec.OUTPUT_NAME in n.output]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medops-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            SliceCalibration(images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # unsigned activations, signed weights (U8S8): ONNX Runtime's fast x86 kernels;
            # signed activations measured slower than float32 on the same CPU
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=last,
        )
    quantized = onnx.load(str(target))
    _check_contract(quantized, target.name)
    del quantized.metadata_props[:]
    for key, value in props.items():
        quantized.metadata_props.add(key=key, value=value)
    quantized.metadata_props.add(key=META_PRECISION, value=INT8)
    onnx.save(quantized, str(target))

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    runs = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for p in (source, target)
    ]
    probe = images[:16]
    fp32, int8 = (s.run([modelspec.OUTPUT_NAME], {modelspec.INPUT_NAME: probe})[0] for s in runs)
    return QuantizeResult(
        path=target,
        calibration_slices=len(images),
        max_abs_diff=float(np.abs(fp32 - int8).max()),
    )
