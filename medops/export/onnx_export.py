"""Single-file ONNX export with the serving contract baked in, checked against PyTorch."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from medops import modelspec
from medops.errors import InvalidInputError, MedopsError
from medops.models import ServingWrapper, segmenter_multiple, spec_task

log = logging.getLogger(__name__)
MAX_BATCH = 4096


class ExportError(MedopsError):
    """The exported graph does not reproduce the PyTorch model (parity beyond tolerance)."""

    status_code = 500


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float
    """Largest |ONNX Runtime - PyTorch| over a random batch of 2 and a batch of 1."""
    opset: int
    input_size: int


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    task: str,
    input_size: int,
    classes: list[str],
    threshold: float,
    dataset_version: str,
    gate_threshold: float | None = None,
    min_component_px: int = 0,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Export ``model`` (logits, or already a :class:`ServingWrapper`) to one ONNX file.

    The graph takes ``image`` float32 (N, 3, S, S) with a dynamic batch axis and returns
    ``probabilities`` (softmax or sigmoid inside the graph, after the wrapper's calibration
    temperature); ``metadata_props`` carry the :mod:`medops.modelspec` keys, the segmenter's
    two-stage rule (``gate_threshold``, ``min_component_px``) among them. ONNX Runtime is
    then compared with PyTorch on a random batch of 2 and a batch of 1: :class:`ExportError`
    if the largest difference exceeds ``tolerance``.
    """
    task_name = spec_task(task)
    wrapper = model if isinstance(model, ServingWrapper) else ServingWrapper(model, task_name)
    if wrapper.task != task_name:
        raise InvalidInputError(f"task: the model is a {wrapper.task} model, not {task_name}")
    multiple = segmenter_multiple(wrapper)
    if input_size < 1 or input_size % multiple:
        raise InvalidInputError(
            f"input_size: {input_size} is not a positive multiple of {multiple}"
        )
    if not classes:
        raise InvalidInputError("classes: need at least one class name")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = wrapper.cpu().eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, input_size, input_size, generator=generator)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[modelspec.INPUT_NAME],
            output_names=[modelspec.OUTPUT_NAME],
            dynamic_shapes={"image": {0: batch}},
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    proto = onnx.load(str(path))
    prelu_as_leaky_relu(proto.graph)
    metadata = {
        modelspec.META_TASK: task_name,
        modelspec.META_INPUT_SIZE: str(input_size),
        modelspec.META_CLASSES: json.dumps(list(classes)),
        modelspec.META_THRESHOLD: repr(float(threshold)),
        modelspec.META_DATASET_VERSION: dataset_version,
        modelspec.META_TEMPERATURE: repr(float(wrapper.temperature)),
    }
    if gate_threshold is not None:
        metadata[modelspec.META_GATE_THRESHOLD] = repr(float(gate_threshold))
    if min_component_px:
        metadata[modelspec.META_MIN_COMPONENT] = str(int(min_component_px))
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    diff = check_onnx_parity(wrapper, path, input_size=input_size, tolerance=tolerance)
    log.info("exported %s (opset %d, max abs diff %.2e)", path.name, opset, diff)
    return ExportResult(path=path, max_abs_diff=diff, opset=opset, input_size=input_size)


def prelu_as_leaky_relu(graph: onnx.GraphProto) -> int:
    """Rewrite each PRelu whose slope is one constant as LeakyRelu with that slope, in place;
    return how many. The same function, but ONNX Runtime's CPU PRelu kernel (a broadcasting
    multiply) took 45 % of the segmenter's time and LeakyRelu takes 4 %; int8 quantization
    fuses LeakyRelu into its neighbours too. A per-channel PRelu is left as it is."""
    constants = {i.name: i for i in graph.initializer}
    slopes, replaced = set(), 0
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in constants:
            continue
        slope = onnx.numpy_helper.to_array(constants[node.input[1]])
        if slope.size != 1:
            continue
        slopes.add(node.input[1])
        leaky = onnx.helper.make_node(
            "LeakyRelu", [node.input[0]], node.output, name=node.name, alpha=float(slope.item())
        )
        node.CopyFrom(leaky)
        replaced += 1
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name in slopes - used]
    for initializer in unused:
        graph.initializer.remove(initializer)
    return replaced


def check_onnx_parity(
    model: nn.Module, onnx_path: str | Path, *, input_size: int, tolerance: float = 1e-4
) -> float:
    """Largest |ONNX Runtime - PyTorch| on a seeded random batch of 2 and a batch of 1.

    ``model`` is compared as a :class:`ServingWrapper` (probabilities); raises
    :class:`ExportError` when the difference exceeds ``tolerance`` or the shapes differ.
    """
    onnx_path = Path(onnx_path)
    if not isinstance(model, ServingWrapper):
        model = ServingWrapper(
            model, "segmenter" if segmenter_multiple(model) > 1 else "classifier"
        )
    model = model.cpu().eval()
    generator = torch.Generator().manual_seed(0)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for batch in (2, 1):
        x = torch.rand(batch, 3, input_size, input_size, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run([modelspec.OUTPUT_NAME], {modelspec.INPUT_NAME: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(
                f"onnx: output shape {got.shape} differs from PyTorch {expected.shape}"
            )
        diff = max(diff, float(np.abs(got - expected).max()))
    if diff > tolerance:
        raise ExportError(
            f"onnx: ONNX Runtime differs from PyTorch by {diff:.3g} "
            f"(tolerance {tolerance:g}) in {onnx_path.name}"
        )
    return diff


def read_model_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """The serving facts stored in an exported model: task, input_size, classes, threshold,
    dataset_version (typed), plus input/output names and opset."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InvalidInputError(f"model: file {onnx_path} does not exist")
    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise InvalidInputError(
            f"model: {onnx_path.name} is not a readable ONNX file: {exc}"
        ) from exc
    props = {p.key: p.value for p in proto.metadata_props}
    missing = [
        k
        for k in (
            modelspec.META_TASK,
            modelspec.META_INPUT_SIZE,
            modelspec.META_CLASSES,
            modelspec.META_THRESHOLD,
        )
        if k not in props
    ]
    if missing:
        raise InvalidInputError(f"model: {onnx_path.name} lacks metadata {missing}")
    try:
        classes = json.loads(props[modelspec.META_CLASSES])
        info = {
            "task": props[modelspec.META_TASK],
            "input_size": int(props[modelspec.META_INPUT_SIZE]),
            "classes": [str(c) for c in classes],
            "threshold": float(props[modelspec.META_THRESHOLD]),
            "dataset_version": props.get(modelspec.META_DATASET_VERSION, ""),
        }
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"model: {onnx_path.name} has malformed metadata: {exc}") from exc
    info |= {
        "inputs": [i.name for i in proto.graph.input],
        "outputs": [o.name for o in proto.graph.output],
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0),
    }
    return info
