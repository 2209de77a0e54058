"""Bring your own model: an ONNX file trained anywhere becomes a registered, gated version of
a task's model, judged exactly as a trained one is.

The file must already meet the serving contract of :mod:`medops.modelspec` (one float32
input ``image`` of shape ``(batch, channels, S, S)``, one float32 output ``probabilities``
with the task's class count, activations inside the graph); the import checks that, adds the
serving facts (``medops.*`` metadata) the task declares, chooses the segmenter's smallest
component on the task's validation data, evaluates on the task's test split (the pipeline's
own split, so the gate compares it with the champion on the same samples), writes the report
and model card, registers the version (alias ``challenger``) and applies the gate. A file
that breaks the contract is refused with every problem, and nothing is registered.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medops.errors import InvalidInputError
from medops.modelspec import INPUT_NAME, OUTPUT_NAME
from medops.tasks import TaskSpec, read_task
from pipelines import steps
from pipelines.presets import get_preset
from pipelines.tasks import encode


@dataclass(frozen=True)
class Imported:
    name: str
    version: str
    promoted: bool
    headline: dict[str, float]
    champion: dict[str, Any] | None
    """The champion's headline on the same test samples (None: there was none)."""


def _dims(value_info: Any) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def contract_problems(model: Any, spec: TaskSpec) -> tuple[list[str], int | None]:
    """What in the ONNX graph ``model`` contradicts the serving contract and ``spec``; and
    the square input size it takes (None when it cannot be read)."""
    from onnx import TensorProto

    problems: list[str] = []
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    outputs = list(graph.output)
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(
            f"inputs: expected one named {INPUT_NAME!r}, found {[i.name for i in inputs]}"
        )
    if [o.name for o in outputs] != [OUTPUT_NAME]:
        found = [o.name for o in outputs]
        problems.append(f"outputs: expected one named {OUTPUT_NAME!r}, found {found}")
    if problems:
        return problems, None
    for role, value in (("input", inputs[0]), ("output", outputs[0])):
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            kind = TensorProto.DataType.Name(value.type.tensor_type.elem_type)
            problems.append(f"{role} {value.name}: datatype {kind}, the contract says FLOAT")
    shape_in, shape_out = _dims(inputs[0]), _dims(outputs[0])
    channels = spec.preprocessing.channels
    size: int | None = None
    if len(shape_in) != 4:
        problems.append(f"input {INPUT_NAME}: shape {shape_in}, expected (batch, {channels}, S, S)")
    else:
        batch, c, h, w = shape_in
        if isinstance(batch, int):
            problems.append(
                f"input {INPUT_NAME}: batch dimension fixed at {batch}; serving batches"
            )
        if c != channels:
            problems.append(
                f"input {INPUT_NAME}: {c} channels, task {spec.name} preprocesses to {channels}"
            )
        if not isinstance(h, int) or h != w:
            problems.append(f"input {INPUT_NAME}: spatial shape {h}x{w}, expected a fixed square")
        else:
            size = h
    n = len(spec.label.classes)
    if spec.is_segmentation:
        wanted = f"(batch, {n}, S, S)"
        fits = len(shape_out) == 4 and shape_out[1] == n
        if fits and size is not None and shape_out[2:] != [size, size]:
            fits = False
    else:
        wanted = f"(batch, {n})"
        fits = len(shape_out) == 2 and shape_out[1] == n
    if not fits:
        problems.append(
            f"output {OUTPUT_NAME}: shape {shape_out}; task {spec.name} ({spec.kind}, classes "
            f"{spec.label.classes}) needs {wanted}"
        )
    return problems, size


def _with_metadata(model: Any, metadata: dict[str, str], out: Path) -> Path:
    import onnx

    kept = [p for p in model.metadata_props if not p.key.startswith("medops.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))
    return out


def import_model(
    name: str,
    onnx_path: Path,
    task_path: Path,
    *,
    data_dir: Path,
    home: Path,
    tracking_uri: str,
    preset: str = "fast",
    seed: int = 0,
    work: Path | None = None,
) -> Imported:
    """Check, evaluate, register and gate ``onnx_path`` as a new version of ``name`` (a model
    of the task in ``task_path``); :class:`InvalidInputError` naming every problem first.

    The gate applies the preset's floors of the task and its tolerance against the champion
    on the same test samples; an import becomes champion only when there is none yet, else
    it waits as ``challenger`` for a canary (or ``medops models promote``)."""
    import onnx

    from medops import modelspec
    from medops.evaluation import build_report
    from medops.evaluation.stats import segmenter_intervals
    from medops.evaluation.two_stage import choose_two_stage_rule, evaluate_two_stage
    from medops.registry import TAG_HEADLINE, Registry, render_model_card
    from medops.registry.card import intervals_from_metrics

    spec = read_task(task_path)
    get_preset(preset)
    if name not in spec.models:
        raise InvalidInputError(
            f"{name}: not a model of task {spec.name} (its models: {spec.models})"
        )
    if not spec.is_segmentation:
        raise InvalidInputError(f"task {spec.name}: importing a {spec.kind} model comes later")
    try:
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises its own errors and protobuf's
        raise InvalidInputError(f"{onnx_path}: not a valid ONNX model ({exc})") from None
    problems, size = contract_problems(model, spec)
    if problems:
        raise InvalidInputError(
            f"{onnx_path.name} breaks the serving contract: " + "; ".join(problems)
        )
    assert size is not None
    Registry(tracking_uri).check()
    task = encode(spec)
    work = Path(work or tempfile.mkdtemp(prefix="medops-import-"))
    work.mkdir(parents=True, exist_ok=True)
    ingested = steps.ingest_data(str(Path(data_dir) / spec.data.path), str(home), task)
    manifest, splits = ingested["manifest"], str(work / "splits.json")
    # the pipeline's own split of this task: the champion was judged on the same samples
    steps.split_data(manifest, splits, seed=seed, max_patients=get_preset(preset).max_patients)
    steps.validate_data(manifest, splits, str(work / "validation.txt"), task)
    sets = {
        split: steps.load_split(manifest, splits, split, size=size, home=str(home))
        for split in ("val", "test")
    }
    probs = {split: steps.onnx_probs(onnx_path, data.images) for split, data in sets.items()}
    for split, p in probs.items():
        if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
            raise InvalidInputError(
                f"{onnx_path.name}: its {split} outputs lie in [{p.min():.3g}, {p.max():.3g}]; "
                "the contract wants probabilities (the sigmoid inside the graph)"
            )
    threshold = (
        float(spec.decision.threshold) if isinstance(spec.decision.threshold, float | int) else 0.5
    )
    val, test = sets["val"], sets["test"]
    chosen = spec.decision.min_component_px
    rule = choose_two_stage_rule(
        np.ones(len(val.labels)),
        probs["val"],
        val,
        gates=(0.0,),
        seg_threshold=threshold,
        **({"min_sizes": (int(chosen),)} if isinstance(chosen, int) else {}),
    )
    two = evaluate_two_stage(
        np.ones(len(test.labels)),
        probs["test"],
        test,
        threshold=0.0,
        seg_threshold=threshold,
        min_component_px=rule.min_component_px,
    )
    ev = two.segmenter_only
    headline = {k: float(v) for k, v in ev.headline().items()}
    headline |= segmenter_intervals(ev, spec.intervals)
    champion = steps.evaluate_champion(task, manifest, splits, str(home), tracking_uri)
    from medops.data import load_manifest

    dataset_version = load_manifest(manifest).version
    evaluation_path = work / "evaluation.json"
    steps._write_json(
        evaluation_path,
        {
            "task": spec.name,
            "dataset_version": dataset_version,
            "threshold": threshold,
            "classes": list(spec.label.classes),
            "headline": headline,
            "subgroups": {},
            "champion": champion,
            "evaluation": "single-split",
            "gate_threshold": None,
            "min_component_px": rule.min_component_px,
        },
    )
    report = work / "report.html"
    title = f"{name} (imported) on dataset {spec.data.path} {dataset_version} (test samples)"
    report.write_text(build_report(segmenter=ev, subgroups={}, data=test, title=title))
    served = _with_metadata(
        model,
        {
            modelspec.META_TASK: "segmentation",
            modelspec.META_INPUT_SIZE: str(size),
            modelspec.META_CLASSES: json.dumps(list(spec.label.classes)),
            modelspec.META_THRESHOLD: repr(threshold),
            modelspec.META_DATASET_VERSION: dataset_version,
            modelspec.META_MIN_COMPONENT: str(rule.min_component_px),
        },
        work / "model.onnx",
    )
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
    params = {
        "origin": "import",
        "onnx_sha256": digest,
        "image_size": size,
        "pipeline_preset": preset,
        "seed": seed,
    }
    metrics = {f"test_{k}": v for k, v in headline.items()}
    card = render_model_card(
        name,
        intended_use=spec.intended_use,
        limits=spec.limits,
        dataset_version=dataset_version,
        metrics={k: v for k, v in headline.items() if not k.endswith(("_ci_low", "_ci_high"))},
        subgroups={},
        params=params,
        evaluation="single-split",
        intervals=intervals_from_metrics(headline),
    )
    registered = Registry(tracking_uri).log_and_register(
        name,
        onnx_path=served,
        dataset_version=dataset_version,
        params=params,
        metrics=metrics,
        report_html=report,
        model_card=card,
        artifacts={"evaluation.json": evaluation_path},
        tags={
            "pipeline_preset": preset,
            "evaluation": "single-split",
            "origin": "import",
            TAG_HEADLINE: ",".join(spec.metrics),
        },
        run_name=f"{name}-import",
    )
    promoted = steps.gate(
        task,
        preset,
        tracking_uri,
        registered.version,
        str(evaluation_path),
        promote=champion is None,
    )
    # served as a canary or as the champion, it is monitored like a trained version
    registry = steps._registry(tracking_uri, str(home))
    steps.build_drift_reference(registry, name, registered.version, Path(home))
    return Imported(
        name=name,
        version=registered.version,
        promoted=promoted,
        headline=headline,
        champion=champion,
    )
