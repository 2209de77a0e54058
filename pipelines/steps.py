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
from medops.modelspec import CHALLENGER, CHAMPION, INPUT_NAME
from pipelines.presets import check_floors, gate_minimums, get_preset
from pipelines.tasks import BRAIN, PipelineTask, floor_key, resolve

if TYPE_CHECKING:
    from medops.data import ArraySet
    from medops.training import TrainConfig

log = logging.getLogger(__name__)

TASK_MODEL: dict[str, str] = BRAIN


def _read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _write_json(path: str | Path, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=float))


def _task(task: str) -> PipelineTask:
    """The brain role or task document a step's ``task`` parameter names."""
    return resolve(task)


# --------------------------------------------------------------------------- registry


def check_registry(tracking_uri: str) -> str:
    """Fail fast (before any training) when the registry cannot be reached."""
    from medops.registry import Registry

    Registry(tracking_uri).check()
    return tracking_uri


# ------------------------------------------------------------------------------- data


def ingest_data(data_path: str, home: str, task: str = "") -> dict[str, Any]:
    """Ingest a dataset folder (as ``task`` declares it: layout, folders, mask threshold,
    samples kept together); return its manifest path, version and size."""
    from medops.data import ingest

    spec = _task(task).spec if task else None
    if spec is None:
        manifest = ingest(Path(data_path), Path(home))
    else:
        layout, options = spec.data.layout, spec.layout_options()
        manifest = ingest(Path(data_path), Path(home), layout=layout, options=options)
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


def validate_data(
    manifest_path: str, splits_path: str, report_out: str, task: str = ""
) -> dict[str, Any]:
    """Validate the dataset and its split; raise :class:`DatasetError` with the report if bad.

    Beyond :func:`medops.data.validate` it refuses splits that cannot train or evaluate a
    model: an empty split, or (unless ``task`` is a segmentation task file, whose every
    sample may hold a finding) a split with a single class.
    """
    from medops.data import Splits, load_manifest, validate

    manifest = load_manifest(manifest_path)
    splits = Splits.load(splits_path)
    report = validate(manifest, splits)
    text = report.to_text()
    problems: list[str] = []
    labels = {s.sample_id: s.label for s in manifest.samples}
    spec = _task(task).spec if task else None
    needs_both = spec is None or not spec.is_segmentation
    for split in ("train", "val", "test"):
        ids = splits.sample_ids(manifest, split)
        present = {labels[i] for i in ids}
        if not ids:
            problems.append(f"the {split} split holds no samples")
        elif needs_both and len(present) < 2:
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
    found = _task(task)
    extra = json.loads(overrides) if isinstance(overrides, str) and overrides else overrides
    declared = (
        found.spec.train_overrides(preset)
        if found.spec is not None
        else chosen.overrides.get(found.role, {})
    )
    merged: dict[str, Any] = {**declared, **dict(extra or {})}
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
    return TrainConfig.preset(found.role, chosen.train_preset, **merged)  # type: ignore[arg-type]


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
    return str(_registry(tracking_uri, home).weights_path(_task(task).model, warm_start))


def pretrain(preset: str, fourclass_path: str, home: str, *, on_epoch: Any = None) -> str:
    """Transfer learning for the tumour classifier: its own network (architecture, widths,
    input size) trained to tell tumour types apart on the 4-class data; returns the weights
    file, or "" when the preset does not pretrain.

    The 4-class slices come from other patients, scanners and sites than the LGG data, so one
    pretraining serves every split and fold without leaking test patients. Kept under
    ``<home>/pretrained`` by a key of the settings and the data version: trained once.
    """
    import hashlib

    from medops.training import save_weights, train_model

    if not get_preset(preset).pretrain:
        return ""
    binary = train_config("classifier", preset)
    shape = {"arch": binary.arch, "widths": binary.widths, "image_size": binary.image_size}
    config = train_config("type-classifier", preset, shape)
    ingested = ingest_data(fourclass_path, home)
    key = hashlib.sha256(
        json.dumps([config.to_params(), ingested["version"]], sort_keys=True).encode()
    ).hexdigest()[:16]
    weights = Path(home) / "pretrained" / f"{TASK_MODEL['classifier']}-{key}.pt"
    if weights.is_file():
        return str(weights)
    splits = weights.with_suffix(".splits.json")
    split_data(ingested["manifest"], str(splits), seed=config.seed)
    size = config.image_size
    train_set = load_split(ingested["manifest"], str(splits), "train", size=size, home=home)
    val_set = load_split(ingested["manifest"], str(splits), "val", size=size, home=home)
    result = train_model(config, train_set, val_set, on_epoch=on_epoch)
    partial = save_weights(result.model, weights.with_suffix(".partial"))
    partial.replace(weights)  # a run stopped halfway leaves no weights that look complete
    log.info("pretrained on tumour types: %s %.3f", result.metric_name, result.best_metric)
    return str(weights)


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
    pretrained: str = "",
    tracking_uri: str = "",
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Train one model on the train split (early stopping on val); save its weights.

    ``warm_start`` (a registry alias or version, or a file) wins over ``pretrained`` (the
    weights :func:`pretrain` wrote); the classifier's new two-class head starts fresh."""
    from medops.training import save_weights, train_model

    config = train_config(task, preset, overrides)
    start = _warm_start_path(task, warm_start, tracking_uri, home) or pretrained or None
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
        "candidate_metrics": result.candidate_metrics,
        "chosen_candidate": result.chosen_candidate,
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


def _evaluate_probs(task: str, probs: Any, test: ArraySet, info: Any) -> Any:
    """A served model's evaluation from its ONNX outputs, with its own stored rule."""
    from medops.evaluation import evaluate_classifier, segmentation_metrics
    from medops.transforms import drop_small_components

    role = _task(task).role
    if role == "segmenter":
        mask = drop_small_components(probs[:, 0] >= info.threshold, info.min_component_px)
        assert test.masks is not None
        return segmentation_metrics(mask, test.masks, test.patient_ids, threshold=info.threshold)
    threshold = info.threshold if role == "classifier" else None
    return evaluate_classifier(probs, test, threshold=threshold)


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

    The champion keeps its own input size, operating threshold and post-processing, so the
    gate compares both models as they would serve, on the same held-out patients.
    """
    registry = _registry(tracking_uri, home)
    name = _task(task).model
    if registry.get_alias(name, CHAMPION) is None:
        return None
    champion = registry.resolve(name, CHAMPION)
    test = load_split(manifest_path, splits_path, "test", size=champion.info.input_size, home=home)
    probs = onnx_probs(champion.onnx_path, test.images)
    ev = _evaluate_probs(task, probs, test, champion.info)
    return {"version": champion.info.version, "headline": ev.headline()}


def serving_model(
    task: str,
    preset: str,
    weights_path: str,
    *,
    overrides: Mapping[str, Any] | str = "",
    temperature: float = 1.0,
) -> tuple[Any, TrainConfig]:
    """The trained network as it serves (probabilities, calibration, test-time flips)."""
    from medops.models import ServingWrapper
    from medops.training import build_model, load_weights

    config = train_config(task, preset, overrides)
    model = build_model(config)
    load_weights(model, weights_path)
    wrapper = ServingWrapper(
        model, config.task, temperature=temperature, flip_average=config.test_time_flip
    )
    return wrapper.eval(), config


INTERVAL_METRICS = {
    "classifier": ("auc", "sensitivity", "specificity"),
    "type-classifier": ("accuracy",),
    "segmenter": ("dice_patient_mean", "two_stage_dice_patient_mean"),
}
"""Headline metrics that get a patient-level bootstrap 95 % interval (``_ci_low/_ci_high``)."""


def _evaluate_classifier(
    task: str, model: Any, test: ArraySet, val: ArraySet
) -> tuple[Any, dict[str, float], float, Any]:
    """Calibrate on validation, choose the operating point there, evaluate on test.

    Returns the evaluation (calibrated), extra headline figures (ECE before calibration,
    intervals), the fitted temperature and the uncalibrated test probabilities.
    """
    from medops.evaluation import calibration, evaluate_classifier, predict_probs
    from medops.evaluation.stats import classifier_intervals
    from medops.evaluation.temperature import apply_temperature, fit_temperature

    val_raw, test_raw = predict_probs(model, val.images), predict_probs(model, test.images)
    temperature = fit_temperature(val_raw, val.labels)
    val_probs = apply_temperature(val_raw, temperature)
    test_probs = apply_temperature(test_raw, temperature)
    found = _task(task)
    if found.role == "classifier":
        ev = evaluate_classifier(test_probs, test, val=val, val_probs=val_probs)
        uncalibrated = calibration(test_raw[:, 1], test.labels == 1)[0]
    else:
        ev = evaluate_classifier(test_probs, test)
        uncalibrated = calibration(test_raw.max(1), test_raw.argmax(1) == test.labels)[0]
    extra = {"ece_uncalibrated": uncalibrated, "temperature": temperature}
    names = found.spec.intervals if found.spec is not None else INTERVAL_METRICS[found.role]
    return ev, extra | classifier_intervals(ev, names), temperature, test_raw


def _evaluate_segmenter(
    model: Any,
    config: TrainConfig,
    manifest_path: str,
    splits_path: str,
    home: str,
    classifier: Any,
    classifier_size: int,
    classifier_threshold: float,
) -> tuple[Any, Any, dict[str, float], Any]:
    """The segmenter alone and the served two-stage answer, with the rule (gate threshold,
    smallest component) chosen on validation patients. ``classifier`` None: no gate.

    Also reports the plain rule (gate at the classifier's operating threshold, no
    post-processing) on the same patients, so what the chosen rule gains is on record."""
    import numpy as np

    from medops.evaluation import evaluate_two_stage, predict_probs
    from medops.evaluation.stats import mean_intervals
    from medops.evaluation.two_stage import GATE_GRID, choose_two_stage_rule

    probs: dict[str, dict[str, Any]] = {"val": {}, "test": {}}
    arrays: dict[str, ArraySet] = {}
    for split in ("val", "test"):
        data = load_split(manifest_path, splits_path, split, size=config.image_size, home=home)
        arrays[split] = data
        probs[split]["segmenter"] = predict_probs(model, data.images)
        if classifier is None:
            probs[split]["classifier"] = np.ones(len(data.labels))
        else:
            # the same slices in the same order, at the classifier's own input size
            small = load_split(manifest_path, splits_path, split, size=classifier_size, home=home)
            probs[split]["classifier"] = predict_probs(classifier, small.images)[:, 1]
    rule = choose_two_stage_rule(
        probs["val"]["classifier"],
        probs["val"]["segmenter"],
        arrays["val"],
        gates=GATE_GRID if classifier is not None else (0.0,),
    )
    test = arrays["test"]
    two = evaluate_two_stage(
        probs["test"]["classifier"],
        probs["test"]["segmenter"],
        test,
        threshold=rule.gate_threshold,
        min_component_px=rule.min_component_px,
    )
    extra = two.headline() if classifier is not None else {}
    if classifier is not None:
        plain = evaluate_two_stage(
            probs["test"]["classifier"],
            probs["test"]["segmenter"],
            test,
            threshold=classifier_threshold,
        )
        extra["plain_gate_dice_patient_mean"] = plain.gated.headline()["dice_patient_mean"]
    extra["val_dice_patient_mean_rule"] = rule.val_dice_patient_mean
    per_patient = {"dice_patient_mean": [p["dice"] for p in two.segmenter_only.patients.values()]}
    if classifier is not None:
        per_patient["two_stage_dice_patient_mean"] = [
            p["dice"] for p in two.gated.patients.values()
        ]
    return two, rule, extra | mean_intervals(per_patient), test


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
    classifier_weights: str = "",
    classifier_evaluation: str = "",
    classifier_overrides: Mapping[str, Any] | str = "",
) -> dict[str, float]:
    """Evaluate the trained model on the test patients, everything chosen on validation.

    Classifiers are calibrated (temperature scaling) and get their operating point on the
    validation patients. The segmenter, given the classifier of the same run, is judged as it
    serves: the classifier gates it at a threshold and small components are dropped, both
    chosen on validation for the best mean per-patient Dice; the segmenter alone is reported
    beside it. Writes the HTML report and an evaluation JSON (headline with bootstrap
    intervals, subgroups, the stored rule, and the champion's headline on the same patients).
    """
    from medops.data import load_manifest
    from medops.evaluation import build_report, subgroup_metrics
    from medops.evaluation.stats import segmenter_intervals

    manifest = load_manifest(manifest_path)
    found = _task(task)
    model, config = serving_model(task, preset, weights_path, overrides=overrides)
    stored: dict[str, Any] = {}
    title = f"{found.model} on dataset {manifest.name} {manifest.version} (test patients)"
    if found.segmenter:
        classifier, classifier_size, classifier_threshold = None, 0, 0.5
        if classifier_weights:
            classifier_facts = _read_json(classifier_evaluation)
            temperature = float(classifier_facts["temperature"])
            classifier_threshold = float(classifier_facts["threshold"])
            classifier, cls_config = serving_model(
                "classifier",
                preset,
                classifier_weights,
                overrides=classifier_overrides,
                temperature=temperature,
            )
            classifier_size = cls_config.image_size
        two, rule, extra, test = _evaluate_segmenter(
            model,
            config,
            manifest_path,
            splits_path,
            home,
            classifier,
            classifier_size,
            classifier_threshold,
        )
        ev: Any = two.segmenter_only
        if found.spec is not None:
            extra |= segmenter_intervals(ev, found.spec.intervals)
        threshold = 0.5
        stored = {
            # an ungated segmenter serves every slice: no gate threshold to store
            "gate_threshold": rule.gate_threshold if classifier is not None else None,
            "min_component_px": rule.min_component_px,
            # per-patient values (no identifiers) for pooling over cross-validation folds
            "patient_dice": {"segmenter": [p["dice"] for p in ev.patients.values()]}
            | (
                {"two_stage": [p["dice"] for p in two.gated.patients.values()]}
                if classifier is not None
                else {}
            ),
            "patient_iou": {"segmenter": [p["iou"] for p in ev.patients.values()]},
        }
        subgroups = subgroup_metrics(two.gated if classifier is not None else ev, manifest.patients)
        html = build_report(
            segmenter=ev,
            two_stage=two if classifier is not None else None,
            subgroups=subgroups,
            data=test,
            title=title,
        )
    else:
        size = config.image_size
        test = load_split(manifest_path, splits_path, "test", size=size, home=home)
        val = load_split(manifest_path, splits_path, "val", size=size, home=home)
        ev, extra, temperature, uncalibrated = _evaluate_classifier(task, model, test, val)
        threshold = ev.threshold if found.role == "classifier" else 0.5
        stored = {"temperature": temperature}
        if found.role == "classifier":
            # per-slice scores (no identifiers) for pooling over cross-validation folds
            stored["slices"] = {
                "tumour_prob": [float(p) for p in ev.scores],
                "tumour_prob_uncalibrated": [float(p) for p in uncalibrated[:, 1]],
                "label": [int(y) for y in ev.labels],
            }
        subgroups = subgroup_metrics(ev, manifest.patients)
        html = build_report(
            classifier=ev,
            subgroups=subgroups,
            title=title,
        )
    Path(report_out).parent.mkdir(parents=True, exist_ok=True)
    Path(report_out).write_text(html)
    headline = {k: float(v) for k, v in (ev.headline() | extra).items()}
    champion = (
        evaluate_champion(task, manifest_path, splits_path, home, tracking_uri)
        if tracking_uri
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
            "evaluation": "single-split",
        }
        | stored,
    )
    return headline


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
    """Export the trained model as it serves (calibration, test-time flips, the two-stage
    rule in its metadata) to one ONNX file (parity-checked); return the max abs diff."""
    from medops.export import export_onnx

    evaluation = _read_json(evaluation_path)
    model, config = serving_model(
        task,
        preset,
        weights_path,
        overrides=overrides,
        temperature=float(evaluation.get("temperature", 1.0)),
    )
    found = _task(task)
    if found.spec is not None:
        classes = list(found.spec.label.classes)
    else:
        classes = ["tumour"] if found.segmenter else list(evaluation["classes"])
    result = export_onnx(
        model,
        onnx_out,
        task="segmentation" if found.segmenter else "classification",
        input_size=config.image_size,
        classes=classes,
        threshold=float(evaluation["threshold"]),
        dataset_version=str(evaluation["dataset_version"]),
        gate_threshold=evaluation.get("gate_threshold"),
        min_component_px=int(evaluation.get("min_component_px", 0)),
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
    crossval_path: str = "",
) -> str:
    """Log the run and register the ONNX model as a new version (alias ``challenger``).

    ``crossval_path``: the recipe's cross-validation (``pipelines.crossval``) run before this
    pipeline; its ``cv_*`` figures are logged too and the version says it was cross-validated.
    """
    from medops.registry import TAG_HEADLINE, Registry, render_model_card
    from medops.registry.card import intervals_from_metrics

    found = _task(task)
    name = found.model
    evaluation = _read_json(evaluation_path)
    training = _read_json(training_path)
    metrics = {f"test_{k}": v for k, v in evaluation["headline"].items()}
    metrics |= {
        "best_epoch": float(training["best_epoch"]),
        f"best_{training['metric_name']}": float(training["best_metric"]),
        "train_seconds": float(training["train_seconds"]),
        "epochs_run": float(training["epochs_run"]),
        "chosen_candidate": float(training.get("chosen_candidate", 1)),
        "onnx_max_abs_diff": float(max_abs_diff),
    }
    kind = evaluation.get("evaluation", "single-split")
    if crossval_path:
        metrics |= _read_json(crossval_path)["metrics"]
        kind = "cross-validated"
    params = {**training["config"], "pipeline_preset": preset, "hpo_trials": int(hpo_trials)}
    headline = evaluation["headline"]
    card = render_model_card(
        name,
        intended_use=found.intended_use,
        limits=found.limits,
        dataset_version=evaluation["dataset_version"],
        metrics={k: v for k, v in headline.items() if not k.endswith(("_ci_low", "_ci_high"))},
        subgroups=evaluation["subgroups"],
        params=params,
        evaluation=kind,
        intervals=intervals_from_metrics(headline),
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
        tags={
            "pipeline_preset": preset,
            "evaluation": kind,
            **({TAG_HEADLINE: ",".join(found.spec.metrics)} if found.spec is not None else {}),
        },
        run_name=f"{found.label}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    return registered.version


def gate(
    task: str,
    preset: str,
    tracking_uri: str,
    version: str,
    evaluation_path: str,
    *,
    floors: Mapping[str, Mapping[str, float]] | None = None,
    promote: bool | None = None,
) -> bool:
    """Apply the promotion gate to a new version and record the decision (and promotion).

    ``floors``: this run's floors per task (``--floor``), over the preset's ``minimums``; the
    recorded evidence holds the floors used (``minimums``) and which were overridden.
    ``promote``: whether a pass moves ``champion`` (None: as the preset says)."""
    from medops.registry import Registry, promotion_gate

    chosen = get_preset(preset)
    found, key = _task(task), floor_key(task)
    mine = {key: floors[key]} if floors and key in floors else {}
    overridden = check_floors(mine, tasks=(key,)).get(key, {})
    if found.spec is None:
        minimums = gate_minimums(chosen, found.role, floors)
        tolerance = chosen.tolerance.get(found.role, 0.0)
    else:
        declared = found.spec.presets.get(preset)  # type: ignore[call-overload]
        minimums = {**(declared.floors if declared else {}), **overridden}
        tolerance = dict(declared.tolerance) if declared else {}
    evaluation = _read_json(evaluation_path)
    champion = evaluation.get("champion")
    decision = promotion_gate(
        evaluation["headline"],
        champion["headline"] if champion else None,
        minimums=minimums,
        tolerance=tolerance,
    )
    decision.evidence["floor_overrides"] = overridden
    decision.evidence["champion_version"] = champion["version"] if champion else None
    decision.evidence["challenger_version"] = str(version)
    decision.evidence["same_test_patients"] = True
    # a preset may leave promotion to a live canary, unless there is no champion to serve
    move = (chosen.promote if promote is None else promote) or champion is None
    decision.evidence["promoted_by"] = "gate" if move else "live canary"
    return Registry(tracking_uri).record_gate(
        found.model, str(version), decision, move_champion=move
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
    names = registry.model_names()
    for name in names:
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
    # the gateway can serve any aliased version from the registry (a canary of a challenger
    # the gate refused, or one of another input size Triton does not get): each gets its
    # reference, whatever was published
    home = Path(out_dir).resolve().parent
    for name in names:
        for version in dict.fromkeys(
            str(v) for alias in (CHAMPION, CHALLENGER) if (v := registry.get_alias(name, alias))
        ):
            build_drift_reference(registry, name, version, home)
    if not models:
        # the gate may rightly keep every challenger out: nothing to serve is not a failure
        log.warning("no registered model has a champion yet: nothing published to %s", out_dir)
        return []
    write_triton_repository(models, Path(out_dir))
    return published


def build_drift_reference(registry: Any, name: str, version: str, home: Path) -> None:
    """Store the monitor's reference for a servable version under ``<home>/monitoring``.

    The reference is the model's own training patients seen as serving sees them (features,
    embedding, outputs, the decoded image size); its alarm is calibrated on the validation
    patients, never the test ones. The segmenter serves the slices the classifier flags, so
    both of its sets are the slices the champion classifier flags under the segmenter's gate
    (the tumour-labelled slices while no classifier has a champion)."""
    import numpy as np
    import onnxruntime as ort

    from medops.data import load_manifest, source_shapes
    from medops.monitoring.drift import CalibrationSet, build_reference, reference_dir

    if (reference_dir(name, version, home=home) / "meta.json").is_file():
        return
    dataset_version = registry.version_tags(name, version).get("dataset_version", "")
    found = sorted(home.glob(f"datasets/*/{dataset_version}/manifest.json"))
    if not dataset_version or not found:
        log.warning(
            "no local dataset %r for %s v%s: no drift reference", dataset_version, name, version
        )
        return
    from mlflow.tracking import MlflowClient

    resolved = registry.resolve(name, version)
    params = MlflowClient(registry.tracking_uri).get_run(resolved.run_id).data.params
    preset = get_preset(params.get("pipeline_preset", "fast"))
    info = resolved.info
    manifest = load_manifest(found[0])
    with tempfile.TemporaryDirectory(prefix="medops-reference-") as tmp:
        splits_path = str(Path(tmp) / "splits.json")
        # the very patients this version trained on: the run's seed and the preset's cap
        split_data(
            str(found[0]),
            splits_path,
            seed=int(params.get("seed", 0)),
            max_patients=preset.max_patients,
        )
        sets = {
            split: load_split(
                str(found[0]), splits_path, split, size=info.input_size, home=str(home)
            )
            for split in ("train", "val")
        }
        flagger = _segmenter_population(registry, info, found[0], splits_path, home)
    chosen = {}
    for split, arrays in sets.items():
        keep: Any = np.arange(len(arrays))
        if info.task == "segmentation":
            keep = flagger(split, arrays) if flagger is not None else np.flatnonzero(arrays.labels)
        chosen[split] = (
            arrays.images[keep],
            [arrays.patient_ids[i] for i in keep],
            source_shapes(manifest, [arrays.sample_ids[i] for i in keep]),
        )
    images, patients, shapes = chosen["train"]
    if len(images) < 8 or len(chosen["val"][0]) < 2:
        log.warning(
            "%s v%s: %d training and %d validation slices, too few for a drift reference",
            name,
            version,
            len(images),
            len(chosen["val"][0]),
        )
        return
    session = ort.InferenceSession(str(resolved.onnx_path), providers=["CPUExecutionProvider"])

    def outputs(batch: np.ndarray) -> list[dict[str, float]] | None:
        if info.task != "classification":
            return None
        probs = _run_onnx(session, batch)
        # as the gateway logs them: the answered class's probability is the confidence
        answered = [
            len(row) - 1 if row[-1] >= info.threshold else int(row[:-1].argmax()) for row in probs
        ]
        return [
            {f"prob_{c}": float(p) for c, p in zip(info.classes, row, strict=True)}
            | {"confidence": float(row[k])}
            for row, k in zip(probs, answered, strict=True)
        ]

    val_images, val_patients, val_shapes = chosen["val"]
    build_reference(
        list(images),
        model=name,
        model_version=version,
        home=home,
        outputs=outputs(images),
        groups=patients,
        original_shapes=shapes,
        calibration=CalibrationSet(
            list(val_images),
            groups=val_patients,
            outputs=outputs(val_images),
            original_shapes=val_shapes,
        ),
    )


def _run_onnx(session: Any, images: Any) -> Any:
    import numpy as np

    return np.concatenate(
        [session.run(None, {INPUT_NAME: images[i : i + 64]})[0] for i in range(0, len(images), 64)]
    )


def _segmenter_population(
    registry: Any, info: Any, manifest_path: Path, splits_path: str, home: Path
) -> Any:
    """For a segmenter chained behind the classifier (its version stores a gate threshold):
    ``(split, arrays) -> indices`` of the slices the champion classifier flags under that
    gate, as serving picks them; None for a segmenter served alone or without a champion."""
    import numpy as np
    import onnxruntime as ort

    from pipelines.brain import CLASSIFIER

    chained = info.gate_threshold is not None
    if (
        info.task != "segmentation"
        or not chained
        or registry.get_alias(CLASSIFIER, CHAMPION) is None
    ):
        return None
    classifier = registry.resolve(CLASSIFIER, CHAMPION)
    gate = classifier.info.threshold if info.gate_threshold is None else float(info.gate_threshold)
    session = ort.InferenceSession(str(classifier.onnx_path), providers=["CPUExecutionProvider"])
    size = classifier.info.input_size
    flagged = {}
    for split in ("train", "val"):
        inputs = load_split(str(manifest_path), splits_path, split, size=size, home=str(home))
        tumour = _run_onnx(session, inputs.images)[:, -1]
        flagged[split] = dict(zip(inputs.sample_ids, tumour >= gate, strict=True))

    def pick(split: str, arrays: Any) -> Any:
        return np.flatnonzero([flagged[split][i] for i in arrays.sample_ids])

    return pick
