"""An int8 edge variant of a registered version, registered and gated as a version of its own.

``medops export --precision int8 NAME VERSION``: the float32 version's ONNX is quantized
(:mod:`medops.export.quantize`, calibrated on slices of the pipeline's training split only),
both are evaluated on the same test split (the pipeline's own split of that data, with the
float32 version's stored rule), and the int8 file is registered as a new version of the same
model tagged ``precision=int8`` (alias ``challenger``). The gate judges it against the float32
source on those patients with a tolerance of 0.01 on the ranking metric (AUC, Dice,
accuracy), plus the preset's floors it measures; it never moves ``champion`` itself: a canary
(or ``medops models promote``) does.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from medops.errors import InvalidInputError, NotFoundError
from medops.export.quantize import INT8, calibration_sample, precision, quantize_int8
from pipelines import steps
from pipelines.local import FOURCLASS_DIR, LGG_DIR
from pipelines.presets import gate_minimums, get_preset
from pipelines.tasks import BRAIN, PipelineTask, encode

TOLERANCE = 0.01
"""How much worse than its float32 source an int8 variant may be, per ranking metric."""
RANKING = {"classifier": "auc", "segmenter": "dice_patient_mean", "type-classifier": "accuracy"}
CALIBRATION_SLICES = 256


@dataclass(frozen=True)
class Quantized:
    name: str
    version: str
    source_version: str
    passed: bool
    """The gate's verdict against the float32 source (champion is never moved here)."""
    headline: dict[str, float]
    source_headline: dict[str, float]
    reasons: list[str]
    calibration_slices: int


def _task_of(name: str, task: str | None) -> tuple[str, PipelineTask]:
    """The pipeline ``task`` parameter for ``name``: a brain model, or the task file's."""
    if task is not None:
        from medops.tasks import read_task

        spec = read_task(Path(task))
        if name not in spec.models:
            raise InvalidInputError(f"{name}: not a model of task {spec.name} ({spec.models})")
        param = encode(spec)
        return param, steps._task(param)
    roles = {model: role for role, model in BRAIN.items()}
    if name not in roles:
        raise InvalidInputError(
            f"{name}: not one of the brain pipeline's models ({', '.join(roles)}); "
            "name the task file of a task's model with --task"
        )
    return roles[name], steps._task(roles[name])


def _data(found: PipelineTask, data_dir: Path, preset: str) -> tuple[Path, dict[str, int]]:
    chosen = get_preset(preset)
    if found.spec is not None:
        return Path(data_dir) / found.spec.data.path, dict(chosen.max_patients or {})
    if found.role == "type-classifier":
        return Path(data_dir) / FOURCLASS_DIR, dict(chosen.type_max_patients or {})
    return Path(data_dir) / LGG_DIR, dict(chosen.max_patients or {})


def _floors(found: PipelineTask, preset: str) -> dict[str, float]:
    """The preset's floors for the task, as the pipeline's gate reads them."""
    chosen = get_preset(preset)
    if found.spec is None:
        return gate_minimums(chosen, found.role)
    declared = found.spec.presets.get(preset)  # type: ignore[call-overload]
    return dict(declared.floors) if declared else {}


def export_int8(
    name: str,
    version: str,
    *,
    data_dir: Path,
    home: Path,
    tracking_uri: str,
    task: str | None = None,
    preset: str = "fast",
    seed: int = 0,
    calibration_slices: int = CALIBRATION_SLICES,
    work: Path | None = None,
) -> Quantized:
    """Quantize, evaluate, register and gate ``name`` ``version`` (a number or an alias) as
    an int8 version; the refusals (unknown version, no ONNX file, already int8) come first,
    before anything is registered."""
    from medops.data import load_manifest
    from medops.registry import Registry, promotion_gate

    param, found = _task_of(name, task)
    registry = Registry(tracking_uri)
    registry.check()
    try:
        source = registry.resolve(name, version)
    except NotFoundError as exc:
        raise NotFoundError(
            f"{name} version {version}: not found, or it has no ONNX model to quantize "
            f"({exc.message})"
        ) from None
    if precision(source.onnx_path) == INT8:
        raise InvalidInputError(f"{name} version {source.info.version} is already int8")
    tags = registry.version_tags(name, source.info.version)
    work = Path(work or tempfile.mkdtemp(prefix="medops-int8-"))
    work.mkdir(parents=True, exist_ok=True)

    data_path, caps = _data(found, data_dir, preset)
    manifest = steps.ingest_data(str(data_path), str(home), param if found.spec else "")["manifest"]
    splits = str(work / "splits.json")
    # the pipeline's own split: the float32 version was judged on these test patients
    steps.split_data(manifest, splits, seed=seed, max_patients=caps or None)
    size = source.info.input_size
    train = steps.load_split(manifest, splits, "train", size=size, home=str(home))
    calibration = calibration_sample(train.images, calibration_slices)  # never the test split
    del train
    result = quantize_int8(source.onnx_path, work / "model.onnx", calibration)

    test = steps.load_split(manifest, splits, "test", size=size, home=str(home))
    headlines = {}
    for label, path in (("int8", result.path), ("float32", source.onnx_path)):
        probs = steps.onnx_probs(path, test.images)
        ev = steps._evaluate_probs(param, probs, test, source.info)
        headlines[label] = {k: float(v) for k, v in ev.headline().items()}
    headline, reference = headlines["int8"], headlines["float32"]
    ranking = RANKING[found.role]
    floors = _floors(found, preset)
    decision = promotion_gate(
        headline,
        reference,
        minimums={k: v for k, v in floors.items() if k in headline},
        tolerance={ranking: TOLERANCE},
    )
    decision.evidence.update(
        {
            "champion_version": source.info.version,
            "challenger_version": None,
            "reference": "float32 source",
            "same_test_patients": True,
            "precision": INT8,
            "promoted_by": "live canary",
        }
    )
    dataset_version = load_manifest(manifest).version
    evaluation_path = work / "evaluation.json"
    steps._write_json(
        evaluation_path,
        {
            "headline": headline,
            "champion": {"version": source.info.version, "headline": reference},
            "dataset_version": dataset_version,
            "precision": INT8,
            "calibration_slices": result.calibration_slices,
        },
    )
    params = {
        "origin": "quantized",
        "source_version": source.info.version,
        "precision": INT8,
        "calibration": f"{result.calibration_slices} training slices",
        "pipeline_preset": preset,
        "seed": seed,
        "quantization": "onnxruntime static QDQ, per-channel s8 weights, u8 activations",
    }
    registered = registry.log_and_register(
        name,
        onnx_path=result.path,
        dataset_version=dataset_version,
        params=params,
        metrics={
            **{f"test_{k}": v for k, v in headline.items()},
            **{f"float32_test_{k}": v for k, v in reference.items()},
            "int8_max_abs_diff": result.max_abs_diff,
        },
        artifacts={"evaluation.json": evaluation_path},
        tags={
            "precision": INT8,
            "origin": "quantized",
            "pipeline_preset": preset,
            "evaluation": tags.get("evaluation", "single-split"),
        },
        run_name=f"{name}-v{source.info.version}-int8",
    )
    decision.evidence["challenger_version"] = registered.version
    registry.record_gate(name, registered.version, decision, move_champion=False)
    return Quantized(
        name=name,
        version=registered.version,
        source_version=source.info.version,
        passed=decision.promote,
        headline=headline,
        source_headline=reference,
        reasons=list(decision.reasons),
        calibration_slices=result.calibration_slices,
    )
