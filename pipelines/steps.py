"""The pipeline's steps as plain functions over files: testable without KFP.

Each Kubeflow component (:mod:`pipelines.components`) is a thin wrapper that calls one of these
with its artifact paths. Heavy libraries are imported inside the functions so that a step only
pays for what it uses.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medops.errors import DatasetError, InvalidInputError
from medops.modelspec import CHALLENGER, CHAMPION, INPUT_NAME, MODEL_NAMES
from pipelines.presets import get_preset

if TYPE_CHECKING:
    from medops.data import ArraySet
    from medops.training import TrainConfig

log = logging.getLogger(__name__)

TASK_MODEL: dict[str, str] = {
    "classifier": MODEL_NAMES[0],
    "segmenter": MODEL_NAMES[1],
    "type-classifier": MODEL_NAMES[2],
}


def _read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _write_json(path: str | Path, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=float))


def _task(task: str) -> str:
    if task not in TASK_MODEL:
        raise InvalidInputError(f"task: {task!r} is not one of {', '.join(TASK_MODEL)}")
    return task


# --------------------------------------------------------------------------- registry


def check_registry(tracking_uri: str) -> str:
    """Fail fast (before any training) when the registry cannot be reached."""
    from medops.registry import Registry

    Registry(tracking_uri).check()
    return tracking_uri


# ------------------------------------------------------------------------------- data


def ingest_data(data_path: str, home: str) -> dict[str, Any]:
    """Ingest a dataset folder; return its manifest path, version and size."""
    from medops.data import ingest

    manifest = ingest(Path(data_path), Path(home))
    if not manifest.samples:
        raise DatasetError(f"{data_path}: the dataset holds no samples")
    return {
        "manifest": str(manifest.path),
        "version": manifest.version,
        "kind": manifest.kind,
        "samples": len(manifest.samples),
        "patients": len(manifest.patients),
    }


def split_data(
    manifest_path: str,
    splits_out: str,
    *,
    seed: int = 0,
    max_patients: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Split by patient (seeded, stratified); optionally keep the first N patients per split."""
    from medops.data import Splits, load_manifest, split_dataset

    manifest = load_manifest(manifest_path)
    if len(manifest.patients) < 3:
        raise DatasetError(
            f"dataset {manifest.name}: {len(manifest.patients)} patient(s); a train/validation/"
            "test split by patient needs at least 3"
        )
    splits = split_dataset(manifest, seed=int(seed))
    if max_patients:
        labels = manifest.patient_labels()

        def cap(patients: list[str], name: str) -> list[str]:
            # keep the classes mixed: take patients round-robin over their labels
            by_label: dict[int, list[str]] = {}
            for pid in patients:
                by_label.setdefault(labels.get(pid, 0), []).append(pid)
            mixed = [
                group[i]
                for i in range(max((len(g) for g in by_label.values()), default=0))
                for _, group in sorted(by_label.items())
                if i < len(group)
            ]
            return mixed[: int(max_patients.get(name, len(patients)))]

        splits = Splits(
            train=cap(splits.train, "train"),
            val=cap(splits.val, "val"),
            test=cap(splits.test, "test"),
            seed=splits.seed,
            fractions=splits.fractions,
            version=splits.version,
        )
    Path(splits_out).parent.mkdir(parents=True, exist_ok=True)
    splits.save(Path(splits_out))
    return {name: len(getattr(splits, name)) for name in ("train", "val", "test")}


def validate_data(manifest_path: str, splits_path: str, report_out: str) -> dict[str, Any]:
    """Validate the dataset and its split; raise :class:`DatasetError` with the report if bad.

    Beyond :func:`medops.data.validate` it refuses splits that cannot train or evaluate a
    model: an empty split, or a split with a single class.
    """
    from medops.data import Splits, load_manifest, validate

    manifest = load_manifest(manifest_path)
    splits = Splits.load(splits_path)
    report = validate(manifest, splits)
    text = report.to_text()
    problems: list[str] = []
    labels = {s.sample_id: s.label for s in manifest.samples}
    for split in ("train", "val", "test"):
        ids = splits.sample_ids(manifest, split)
        present = {labels[i] for i in ids}
        if not ids:
            problems.append(f"the {split} split holds no samples")
        elif len(present) < 2:
            only = manifest.classes[next(iter(present))] if manifest.classes else present
            problems.append(f"the {split} split is single-class (only {only!s})")
    if problems:
        text += "\nsplit problems: " + "; ".join(problems) + "\n"
    Path(report_out).parent.mkdir(parents=True, exist_ok=True)
    Path(report_out).write_text(text)
    if not report.ok or problems:
        raise DatasetError(f"dataset {manifest.name} failed validation:\n{text}")
    return {"ok": True, "warnings": len(report.warnings)}


def load_split(
    manifest_path: str, splits_path: str, split: str, *, size: int, home: str
) -> ArraySet:
    """The preprocessed arrays of one split at ``size`` pixels (cached under ``home``)."""
    from medops.data import Splits, load_arrays, load_manifest

    manifest = load_manifest(manifest_path)
    splits = Splits.load(splits_path)
    ids = splits.sample_ids(manifest, split)  # type: ignore[arg-type]
    if not ids:
        raise DatasetError(f"dataset {manifest.name}: the {split} split is empty")
    return load_arrays(manifest, ids, size=size, home=Path(home))


# --------------------------------------------------------------------------- training


def train_config(task: str, preset: str, overrides: Mapping[str, Any] | str = "") -> TrainConfig:
    """The training config of ``task`` under a pipeline preset, with ``overrides`` applied.

    Values are coerced to the config's field types: pipeline parameters that went through
    JSON may turn ints into floats.
    """
    from medops.training import TrainConfig

    chosen = get_preset(preset)
    extra = json.loads(overrides) if isinstance(overrides, str) and overrides else overrides
    merged: dict[str, Any] = {**chosen.overrides.get(_task(task), {}), **dict(extra or {})}
    types = {f.name: f.type for f in fields(TrainConfig)}
    unknown = sorted(set(merged) - set(types))
    if unknown:
        raise InvalidInputError(f"overrides: unknown training settings {unknown}")
    for key, value in list(merged.items()):
        kind = str(types[key])
        if isinstance(value, float) and kind.startswith("int") and value.is_integer():
            merged[key] = int(value)
        elif isinstance(value, list):
            merged[key] = tuple(value)
    return TrainConfig.preset(task, chosen.train_preset, **merged)  # type: ignore[arg-type]


def _registry(tracking_uri: str, home: str) -> Any:
    """A registry client that caches downloads under ``home`` (not in the temp folder)."""
    from medops.registry import Registry

    return Registry(tracking_uri, cache_dir=Path(home) / "registry-cache")


def _warm_start_path(task: str, warm_start: str, tracking_uri: str, home: str) -> str | None:
    if not warm_start:
        return None
    if Path(warm_start).is_file():
        return warm_start
    # an alias (champion) or version number of this task's registered model
    return str(_registry(tracking_uri, home).weights_path(TASK_MODEL[task], warm_start))


def train(
    task: str,
    preset: str,
    manifest_path: str,
    splits_path: str,
    home: str,
    weights_out: str,
    *,
    overrides: Mapping[str, Any] | str = "",
    warm_start: str = "",
    tracking_uri: str = "",
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Train one model on the train split (early stopping on val); save its weights."""
    from medops.training import save_weights, train_model

    config = train_config(task, preset, overrides)
    start = _warm_start_path(task, warm_start, tracking_uri, home)
    if start:
        config = config.replace(warm_start=start)
    size = config.image_size
    train_set = load_split(manifest_path, splits_path, "train", size=size, home=home)
    val_set = load_split(manifest_path, splits_path, "val", size=size, home=home)
    result = train_model(config, train_set, val_set, on_epoch=on_epoch)
    save_weights(result.model, weights_out)
    return {
        "best_epoch": result.best_epoch,
        "best_metric": result.best_metric,
        "metric_name": result.metric_name,
        "stopped_early": result.stopped_early,
        "train_seconds": result.seconds,
        "epochs_run": len(result.history),
        "history": result.history,
        "config": config.to_params(),
        "overrides": json.loads(overrides)
        if isinstance(overrides, str) and overrides
        else dict(overrides or {}),
    }


# ------------------------------------------------------------------------- evaluation


def _flat_subgroups(subgroups: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    return {
        f"{attribute}={group}": dict(values)
        for attribute, groups in subgroups.items()
        for group, values in groups.items()
    }


def _evaluate_probs(task: str, probs: Any, test: ArraySet, threshold: float) -> Any:
    from medops.evaluation import evaluate_classifier, evaluate_segmenter

    if task == "segmenter":
        return evaluate_segmenter(probs, test, threshold=threshold)
    return evaluate_classifier(probs, test, threshold=threshold if task == "classifier" else None)


def onnx_probs(onnx_path: Path, images: Any, batch_size: int = 32) -> Any:
    """Run an exported model with ONNX Runtime over ``images`` in batches."""
    import numpy as np
    import onnxruntime as ort

    from medops.modelspec import INPUT_NAME, OUTPUT_NAME

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    out = [
        session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images[i : i + batch_size])})[
            0
        ]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def evaluate_champion(
    task: str, manifest_path: str, splits_path: str, home: str, tracking_uri: str
) -> dict[str, Any] | None:
    """Re-evaluate the current champion's ONNX on this run's test patients (None: no champion).

    The champion keeps its own input size and operating threshold, so the gate compares both
    models as they would serve, on the same held-out patients.
    """
    registry = _registry(tracking_uri, home)
    name = TASK_MODEL[task]
    if registry.get_alias(name, CHAMPION) is None:
        return None
    champion = registry.resolve(name, CHAMPION)
    test = load_split(manifest_path, splits_path, "test", size=champion.info.input_size, home=home)
    probs = onnx_probs(champion.onnx_path, test.images)
    ev = _evaluate_probs(task, probs, test, champion.info.threshold)
    return {"version": champion.info.version, "headline": ev.headline()}


def evaluate(
    task: str,
    preset: str,
    manifest_path: str,
    splits_path: str,
    home: str,
    weights_path: str,
    report_out: str,
    evaluation_out: str,
    *,
    overrides: Mapping[str, Any] | str = "",
    tracking_uri: str = "",
) -> dict[str, float]:
    """Evaluate the trained model on the test patients (threshold chosen on validation).

    Writes the interactive HTML report and an evaluation JSON (headline, subgroups, threshold,
    and the champion's headline on the same test patients); returns the headline metrics.
    """
    from medops.data import load_manifest
    from medops.evaluation import (
        build_report,
        evaluate_classifier,
        evaluate_segmenter,
        subgroup_metrics,
    )
    from medops.training import build_model, load_weights

    config = train_config(task, preset, overrides)
    model = build_model(config)
    load_weights(model, weights_path)
    model.eval()
    size = config.image_size
    test = load_split(manifest_path, splits_path, "test", size=size, home=home)
    manifest = load_manifest(manifest_path)
    if task == "segmenter":
        ev: Any = evaluate_segmenter(model, test)
        threshold = ev.threshold
    elif task == "classifier":
        val = load_split(manifest_path, splits_path, "val", size=size, home=home)
        ev = evaluate_classifier(model, test, val=val)
        threshold = ev.threshold
    else:
        ev = evaluate_classifier(model, test)
        threshold = 0.5
    subgroups = subgroup_metrics(ev, manifest.patients)
    title = f"{TASK_MODEL[task]} on dataset {manifest.name} {manifest.version} (test patients)"
    html = build_report(
        classifier=ev if task != "segmenter" else None,
        segmenter=ev if task == "segmenter" else None,
        subgroups=subgroups,
        data=test if task == "segmenter" else None,
        title=title,
    )
    Path(report_out).parent.mkdir(parents=True, exist_ok=True)
    Path(report_out).write_text(html)
    headline = {k: float(v) for k, v in ev.headline().items()}
    champion = (
        evaluate_champion(task, manifest_path, splits_path, home, tracking_uri)
        if (tracking_uri)
        else None
    )
    _write_json(
        evaluation_out,
        {
            "task": task,
            "dataset_version": manifest.version,
            "threshold": float(threshold),
            "classes": list(manifest.classes),
            "headline": headline,
            "subgroups": _flat_subgroups(subgroups),
            "champion": champion,
        },
    )
    return headline


def evaluate_system(
    preset: str,
    manifest_path: str,
    splits_path: str,
    home: str,
    classifier_weights: str,
    segmenter_weights: str,
    classifier_evaluation: str,
    report_out: str,
    *,
    classifier_overrides: Mapping[str, Any] | str = "",
    segmenter_overrides: Mapping[str, Any] | str = "",
) -> dict[str, float]:
    """The two-stage system end to end on the test patients: the classifier (at its
    validation-chosen threshold) gates the segmenter. Writes an HTML report; returns metrics."""
    from medops.evaluation import build_report, evaluate_two_stage, predict_probs
    from medops.training import build_model, load_weights

    probs = {}
    data = None
    for task, weights, overrides in (
        ("classifier", classifier_weights, classifier_overrides),
        ("segmenter", segmenter_weights, segmenter_overrides),
    ):
        config = train_config(task, preset, overrides)
        model = build_model(config)
        load_weights(model, weights)
        model.eval()
        # each model sees the test slices at its own input size (same slices, same order)
        test = load_split(manifest_path, splits_path, "test", size=config.image_size, home=home)
        probs[task] = predict_probs(model, test.images)
        data = test
    assert data is not None
    threshold = float(_read_json(classifier_evaluation)["threshold"])
    ev = evaluate_two_stage(probs["classifier"], probs["segmenter"], data, threshold=threshold)
    html = build_report(two_stage=ev, title="Two-stage system (classifier gates segmenter)")
    Path(report_out).parent.mkdir(parents=True, exist_ok=True)
    Path(report_out).write_text(html)
    return {k: float(v) for k, v in ev.headline().items()}


def attach_to_version(
    task: str, tracking_uri: str, version: str, metrics: Mapping[str, float], report: str
) -> None:
    """Log extra evidence (metrics, a report) on the run behind a registered version."""
    from medops.registry import Registry

    Registry(tracking_uri).attach(
        TASK_MODEL[task], str(version), metrics=metrics, artifacts={"report/system.html": report}
    )


# ----------------------------------------------------------------- export and registry


def export(
    task: str,
    preset: str,
    weights_path: str,
    evaluation_path: str,
    onnx_out: str,
    *,
    overrides: Mapping[str, Any] | str = "",
) -> float:
    """Export the trained model to one ONNX file (parity-checked); return the max abs diff."""
    from medops.export import export_onnx
    from medops.training import build_model, load_weights

    config = train_config(task, preset, overrides)
    model = build_model(config)
    load_weights(model, weights_path)
    evaluation = _read_json(evaluation_path)
    classes = ["tumour"] if task == "segmenter" else list(evaluation["classes"])
    result = export_onnx(
        model.eval(),
        onnx_out,
        task="segmentation" if task == "segmenter" else "classification",
        input_size=config.image_size,
        classes=classes,
        threshold=float(evaluation["threshold"]),
        dataset_version=str(evaluation["dataset_version"]),
    )
    return float(result.max_abs_diff)


def register(
    task: str,
    preset: str,
    tracking_uri: str,
    onnx_path: str,
    weights_path: str,
    report_path: str,
    evaluation_path: str,
    training_path: str,
    *,
    max_abs_diff: float = float("nan"),
    hpo_trials: int = 0,
) -> str:
    """Log the run and register the ONNX model as a new version (alias ``challenger``)."""
    from medops.registry import Registry, render_model_card

    name = TASK_MODEL[task]
    evaluation = _read_json(evaluation_path)
    training = _read_json(training_path)
    metrics = {f"test_{k}": v for k, v in evaluation["headline"].items()}
    metrics |= {
        "best_epoch": float(training["best_epoch"]),
        f"best_{training['metric_name']}": float(training["best_metric"]),
        "train_seconds": float(training["train_seconds"]),
        "epochs_run": float(training["epochs_run"]),
        "onnx_max_abs_diff": float(max_abs_diff),
    }
    params = {**training["config"], "pipeline_preset": preset, "hpo_trials": int(hpo_trials)}
    card = render_model_card(
        name,
        dataset_version=evaluation["dataset_version"],
        metrics=evaluation["headline"],
        subgroups=evaluation["subgroups"],
        params=params,
    )
    history = Path(tempfile.mkdtemp(prefix="medops-history-")) / "history.json"
    history.write_text(json.dumps(training["history"], indent=1))
    registered = Registry(tracking_uri).log_and_register(
        name,
        onnx_path=Path(onnx_path),
        dataset_version=evaluation["dataset_version"],
        params=params,
        metrics=metrics,
        report_html=Path(report_path),
        model_card=card,
        weights_path=Path(weights_path),
        artifacts={
            "evaluation.json": Path(evaluation_path),
            "training/history.json": history,
        },
        tags={"pipeline_preset": preset},
        run_name=f"{task}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    return registered.version


def gate(task: str, preset: str, tracking_uri: str, version: str, evaluation_path: str) -> bool:
    """Apply the promotion gate to a new version and record the decision (and promotion)."""
    from medops.registry import Registry, promotion_gate

    chosen = get_preset(preset)
    evaluation = _read_json(evaluation_path)
    champion = evaluation.get("champion")
    decision = promotion_gate(
        evaluation["headline"],
        champion["headline"] if champion else None,
        minimums=chosen.minimums.get(task, {}),
        tolerance=chosen.tolerance.get(task, 0.0),
    )
    decision.evidence["champion_version"] = champion["version"] if champion else None
    decision.evidence["challenger_version"] = str(version)
    decision.evidence["same_test_patients"] = True
    # a preset may leave promotion to a live canary, unless there is no champion to serve
    move = chosen.promote or champion is None
    decision.evidence["promoted_by"] = "gate" if move else "live canary"
    return Registry(tracking_uri).record_gate(
        TASK_MODEL[task], str(version), decision, move_champion=move
    )


def publish(tracking_uri: str, out_dir: str) -> list[dict[str, Any]]:
    """Write the Triton model repository from the registry's champions (and challengers).

    A challenger is published beside its champion (for canaries) when both agree on task,
    input size and classes; otherwise only the champion is served. Downloads are cached
    beside ``out_dir`` (``<home>/triton-repo`` -> ``<home>/registry-cache``).
    """
    from medops.export import TritonModel, write_triton_repository

    registry = _registry(tracking_uri, str(Path(out_dir).resolve().parent))
    models: list[TritonModel] = []
    published: list[dict[str, Any]] = []
    for name in MODEL_NAMES:
        if registry.get_alias(name, CHAMPION) is None:
            continue
        champion = registry.resolve(name, CHAMPION)
        chosen = [(CHAMPION, champion)]
        if (challenger_version := registry.get_alias(name, CHALLENGER)) not in (
            None,
            champion.info.version,
        ):
            challenger = registry.resolve(name, str(challenger_version))
            same = (challenger.info.task, challenger.info.input_size, challenger.info.classes)
            if same == (champion.info.task, champion.info.input_size, champion.info.classes):
                chosen.append((CHALLENGER, challenger))
        for alias, resolved in chosen:
            models.append(
                TritonModel(
                    name=name,
                    version=int(resolved.info.version),
                    onnx_path=resolved.onnx_path,
                    parameters={"medops.alias": alias},
                )
            )
            published.append({"name": name, "version": resolved.info.version, "alias": alias})
    if not models:
        # the gate may rightly keep every challenger out: nothing to serve is not a failure
        log.warning("no registered model has a champion yet: nothing published to %s", out_dir)
        return []
    write_triton_repository(models, Path(out_dir))
    home = Path(out_dir).resolve().parent
    for entry in published:
        build_drift_reference(registry, entry["name"], entry["version"], home)
    return published


def build_drift_reference(registry: Any, name: str, version: str, home: Path) -> None:
    """Store the monitor's reference for a served version: the features, embedding and outputs
    of the model on its own training patients, under ``<home>/monitoring/reference``."""
    import numpy as np
    import onnxruntime as ort
    from mlflow.tracking import MlflowClient

    from medops.monitoring.drift import build_reference, reference_dir

    if (reference_dir(name, version, home=home) / "meta.json").is_file():
        return
    resolved = registry.resolve(name, version)
    dataset_version = registry.version_tags(name, version).get("dataset_version", "")
    found = sorted(home.glob(f"datasets/*/{dataset_version}/manifest.json"))
    if not dataset_version or not found:
        log.warning(
            "no local dataset %r for %s v%s: no drift reference", dataset_version, name, version
        )
        return
    params = MlflowClient(registry.tracking_uri).get_run(resolved.run_id).data.params
    preset = get_preset(params.get("pipeline_preset", "fast"))
    info = resolved.info
    with tempfile.TemporaryDirectory(prefix="medops-reference-") as tmp:
        splits_path = str(Path(tmp) / "splits.json")
        # the very patients this version trained on: the run's seed and the preset's cap
        split_data(
            str(found[0]),
            splits_path,
            seed=int(params.get("seed", 0)),
            max_patients=preset.max_patients,
        )
        arrays = load_split(
            str(found[0]), splits_path, "train", size=info.input_size, home=str(home)
        )
    images, patients = arrays.images, arrays.patient_ids
    if info.task == "segmentation":
        # serving segments the slices the classifier flags: compare with tumour slices alone
        keep = np.flatnonzero(arrays.labels == 1)
        images, patients = images[keep], [patients[i] for i in keep]
    if len(images) < 8:
        log.warning(
            "%s v%s: %d training slices, too few for a drift reference", name, version, len(images)
        )
        return
    session = ort.InferenceSession(str(resolved.onnx_path), providers=["CPUExecutionProvider"])
    probs = np.concatenate(
        [session.run(None, {INPUT_NAME: images[i : i + 64]})[0] for i in range(0, len(images), 64)]
    )
    outputs = None
    if info.task == "classification":
        # as the gateway logs them: the answered class's probability is the confidence
        answered = [
            len(row) - 1 if row[-1] >= info.threshold else int(row[:-1].argmax()) for row in probs
        ]
        outputs = [
            {f"prob_{c}": float(p) for c, p in zip(info.classes, row, strict=True)}
            | {"confidence": float(row[k])}
            for row, k in zip(probs, answered, strict=True)
        ]
    build_reference(
        list(images), model=name, model_version=version, home=home, outputs=outputs, groups=patients
    )
