"""A Triton Inference Server model repository for exported medops models.

Layout: ``<out>/<name>/config.pbtxt`` (GPU instances), ``<out>/<name>/configs/cpu.pbtxt``
(the same model on CPU: ``tritonserver --model-config-name=cpu``) and
``<out>/<name>/<version>/model.onnx``.
The configs are built as Triton ``ModelConfig`` protobufs, so they always parse.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from medops import modelspec
from medops.errors import InvalidInputError
from medops.export.onnx_export import read_model_metadata


@dataclass(frozen=True)
class TritonModel:
    """One model version to publish."""

    name: str
    version: int
    onnx_path: Path
    task: str = ""
    """classification | segmentation; read from the ONNX metadata when empty."""
    input_size: int = 0
    """Read from the ONNX metadata when 0."""
    num_outputs: int = 0
    """Classes (classifier) or 1 (segmenter); from the metadata when 0."""
    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_microseconds: int = 2000
    instance_count: int = 1
    parameters: dict[str, str] = field(default_factory=dict)
    """Extra string parameters (e.g. alias, git commit); the medops metadata is always added."""


def _resolved(model: TritonModel) -> tuple[str, int, int, dict[str, str]]:
    info = read_model_metadata(model.onnx_path)
    task = model.task or info["task"]
    input_size = model.input_size or info["input_size"]
    outputs = model.num_outputs or (1 if task == "segmentation" else len(info["classes"]))
    params = {
        modelspec.META_TASK: task,
        modelspec.META_INPUT_SIZE: str(input_size),
        modelspec.META_CLASSES: json.dumps(info["classes"]),
        modelspec.META_THRESHOLD: repr(info["threshold"]),
        modelspec.META_DATASET_VERSION: info["dataset_version"],
    }
    return task, input_size, outputs, params | model.parameters


def model_config(
    model: TritonModel, *, kind: str = "KIND_GPU", versions: list[int] | None = None
) -> mc.ModelConfig:
    """The Triton ``ModelConfig`` for ``model`` (explicit input/output, dynamic batching)."""
    task, size, outputs, params = _resolved(model)
    config = mc.ModelConfig(
        name=model.name, backend="onnxruntime", max_batch_size=model.max_batch_size
    )
    config.input.add(name=modelspec.INPUT_NAME, data_type=mc.TYPE_FP32, dims=[3, size, size])
    out_dims = [1, size, size] if task == "segmentation" else [outputs]
    config.output.add(name=modelspec.OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=out_dims)
    preferred = [b for b in model.preferred_batch_sizes if b <= model.max_batch_size]
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = model.max_queue_delay_microseconds
    group = config.instance_group.add(count=model.instance_count)
    group.kind = mc.ModelInstanceGroup.Kind.Value(kind)
    if versions:
        config.version_policy.specific.versions.extend(sorted(versions))
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def write_triton_repository(models: list[TritonModel], out_dir: str | Path) -> Path:
    """Write (or refresh) a Triton model repository for ``models``; return ``out_dir``.

    Several versions of one name share one config (all of them served: version_policy
    specific), and must agree on task, input size and outputs.
    """
    if not models:
        raise InvalidInputError("models: nothing to publish")
    out = Path(out_dir)
    by_name: dict[str, list[TritonModel]] = defaultdict(list)
    for model in models:
        if model.version < 1:
            raise InvalidInputError(f"{model.name}: version must be >= 1, got {model.version}")
        if not model.name or "/" in model.name:
            raise InvalidInputError(f"name: {model.name!r} is not a valid model name")
        by_name[model.name].append(model)
    for name, versions in by_name.items():
        numbers = [m.version for m in versions]
        if len(set(numbers)) != len(numbers):
            raise InvalidInputError(f"{name}: version listed twice in {numbers}")
        shapes = {_resolved(m)[:3] for m in versions}
        if len(shapes) > 1:
            raise InvalidInputError(
                f"{name}: versions disagree on task/input size/outputs: {sorted(shapes)}"
            )
        latest = max(versions, key=lambda m: m.version)
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "configs").mkdir(parents=True)
        for m in versions:
            (folder / str(m.version)).mkdir()
            shutil.copyfile(m.onnx_path, folder / str(m.version) / "model.onnx")
        listed = numbers if len(numbers) > 1 else None
        for kind, target in (
            ("KIND_GPU", folder / "config.pbtxt"),
            ("KIND_CPU", folder / "configs" / "cpu.pbtxt"),
        ):
            target.write_text(
                text_format.MessageToString(model_config(latest, kind=kind, versions=listed))
            )
    return out


def read_model_config(path: str | Path) -> mc.ModelConfig:
    """Parse a config.pbtxt into Triton's ``ModelConfig`` (raises on any syntax error)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
