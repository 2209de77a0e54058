"""Kubeflow Pipelines (kfp 2) lightweight components: thin wrappers over :mod:`pipelines.steps`.

The functions below are serialised into the pipeline spec and run inside the pipeline image
(which has ``medops`` and ``pipelines`` installed), so each one imports what it needs inside
its body. :func:`make_components` binds them to an image.
"""

from dataclasses import dataclass
from typing import Any

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

DEFAULT_IMAGE = "ghcr.io/medops/pipeline:0.1.0"


def check_registry(tracking_uri: str) -> str:
    """Fail before any training when the model registry is unreachable."""
    from pipelines import steps

    return steps.check_registry(tracking_uri)


def ingest(data_path: str, home: str, task: str = "") -> str:
    """Ingest a dataset folder into a versioned manifest under ``home`` (as ``task``, a task
    document, declares it; "": by the folder's own layout); returns its path."""
    from pipelines import steps

    return str(steps.ingest_data(data_path, home, task)["manifest"])


def split(manifest: str, seed: int, max_patients: dict, splits: Output[Artifact]) -> str:
    """Split by patient; the split file is the output artifact."""
    import json

    from pipelines import steps

    caps = {k: int(v) for k, v in (max_patients or {}).items()}
    counts = steps.split_data(manifest, splits.path, seed=int(seed), max_patients=caps or None)
    splits.metadata.update(counts)
    return json.dumps(counts)


def validate(
    manifest: str, splits: Input[Artifact], report: Output[Artifact], task: str = ""
) -> bool:
    """Validate the dataset and the split; fail the run with a readable report if bad."""
    from pipelines import steps

    return bool(steps.validate_data(manifest, splits.path, report.path, task)["ok"])


def tune(
    task: str,
    preset: str,
    manifest: str,
    home: str,
    splits: Input[Artifact],
    n_trials: int,
    seed: int,
) -> str:
    """Optuna search on the train/validation split; returns the best overrides (JSON)."""
    import json

    from pipelines import hpo

    best = hpo.search(
        task, preset, manifest, splits.path, home, n_trials=int(n_trials), seed=int(seed)
    )
    best.pop("_search", None)
    return json.dumps(best)


def no_tuning() -> str:
    """The untuned branch: no overrides."""
    return "{}"


def pretrain(preset: str, fourclass_path: str, home: str) -> str:
    """The classifier's network trained on tumour types (transfer learning); "" if the preset
    does not pretrain. Cached under ``home``."""
    from pipelines import steps
    from pipelines.progress import epoch_reporter

    epochs = steps.train_config("type-classifier", preset).epochs
    return steps.pretrain(
        preset, fourclass_path, home, on_epoch=epoch_reporter("classifier on tumour types", epochs)
    )


def train(
    task: str,
    preset: str,
    manifest: str,
    home: str,
    splits: Input[Artifact],
    overrides: str,
    warm_start: str,
    pretrained: str,
    tracking_uri: str,
    model: Output[Model],
    training: Output[Artifact],
    metrics: Output[Metrics],
) -> None:
    """Train one model (early stopping on validation); weights and history are outputs."""
    import json

    from pipelines import steps
    from pipelines.progress import epoch_reporter
    from pipelines.tasks import resolve

    summary = steps.train(
        task,
        preset,
        manifest,
        splits.path,
        home,
        model.path,
        overrides=overrides,
        warm_start=warm_start,
        pretrained=pretrained,
        tracking_uri=tracking_uri,
        on_epoch=epoch_reporter(
            resolve(task).label, steps.train_config(task, preset, overrides).epochs
        ),
    )
    with open(training.path, "w") as fh:
        json.dump(summary, fh)
    model.metadata.update({"task": resolve(task).label, "best_epoch": summary["best_epoch"]})
    metrics.log_metric(summary["metric_name"], float(summary["best_metric"]))
    metrics.log_metric("train_seconds", float(summary["train_seconds"]))
    metrics.log_metric("best_epoch", float(summary["best_epoch"]))


def evaluate(
    task: str,
    preset: str,
    manifest: str,
    home: str,
    splits: Input[Artifact],
    model: Input[Model],
    overrides: str,
    tracking_uri: str,
    report: Output[HTML],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
) -> None:
    """Evaluate on the test patients, build the report, re-evaluate the champion there too."""
    import math

    from pipelines import steps

    headline = steps.evaluate(
        task,
        preset,
        manifest,
        splits.path,
        home,
        model.path,
        report.path,
        evaluation.path,
        overrides=overrides,
        tracking_uri=tracking_uri,
    )
    for key, value in headline.items():
        if math.isfinite(value):
            metrics.log_metric(key, value)


def evaluate_segmenter(
    preset: str,
    manifest: str,
    home: str,
    splits: Input[Artifact],
    model: Input[Model],
    overrides: str,
    tracking_uri: str,
    classifier: Input[Model],
    classifier_evaluation: Input[Artifact],
    classifier_training: Input[Artifact],
    report: Output[HTML],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
) -> None:
    """The segmenter as it serves, gated by this run's calibrated classifier, on the test
    patients (the rule chosen on validation); the champion re-evaluated there too."""
    import json
    import math

    from pipelines import steps

    with open(classifier_training.path) as fh:
        classifier_overrides = json.load(fh)["overrides"]
    headline = steps.evaluate(
        "segmenter",
        preset,
        manifest,
        splits.path,
        home,
        model.path,
        report.path,
        evaluation.path,
        overrides=overrides,
        tracking_uri=tracking_uri,
        classifier_weights=classifier.path,
        classifier_evaluation=classifier_evaluation.path,
        classifier_overrides=classifier_overrides,
    )
    for key, value in headline.items():
        if math.isfinite(value):
            metrics.log_metric(key, value)


def export(
    task: str,
    preset: str,
    model: Input[Model],
    evaluation: Input[Artifact],
    overrides: str,
    onnx: Output[Model],
) -> float:
    """Export to one ONNX file with a parity check; returns the max abs difference."""
    from pipelines import steps

    diff = steps.export(task, preset, model.path, evaluation.path, onnx.path, overrides=overrides)
    onnx.metadata.update({"max_abs_diff": diff, "format": "onnx"})
    return diff


def register(
    task: str,
    preset: str,
    tracking_uri: str,
    onnx: Input[Model],
    model: Input[Model],
    report: Input[HTML],
    evaluation: Input[Artifact],
    training: Input[Artifact],
    max_abs_diff: float,
    hpo_trials: int,
    crossval: str,
) -> str:
    """Log the run to MLflow and register a new version (alias challenger); ``crossval`` is
    the recipe's cross-validation file ("" when none ran)."""
    from pipelines import steps

    return steps.register(
        task,
        preset,
        tracking_uri,
        onnx.path,
        model.path,
        report.path,
        evaluation.path,
        training.path,
        max_abs_diff=float(max_abs_diff),
        hpo_trials=int(hpo_trials),
        crossval_path=crossval,
    )


def gate(
    task: str,
    preset: str,
    tracking_uri: str,
    version: str,
    evaluation: Input[Artifact],
    floors: dict,
) -> bool:
    """The promotion gate: record the decision; move champion when it passes. ``floors``:
    this run's floors per task over the preset's (``{}``: the preset's alone)."""
    from pipelines import steps

    return steps.gate(task, preset, tracking_uri, version, evaluation.path, floors=floors)


def skipped() -> bool:
    """Stands in for a branch that did not run."""
    return False


def publish(tracking_uri: str, home: str, type_classifier_promoted: bool) -> str:
    """Write the Triton model repository from the registry's champions to <home>/triton-repo."""
    import json
    import os

    from pipelines import steps

    del type_classifier_promoted  # an input only to order this step after that branch
    return json.dumps(steps.publish(tracking_uri, os.path.join(home, "triton-repo")))


@dataclass(frozen=True)
class Components:
    """The pipeline's components bound to one base image."""

    check_registry: Any
    ingest: Any
    split: Any
    validate: Any
    tune: Any
    no_tuning: Any
    pretrain: Any
    train: Any
    evaluate: Any
    evaluate_segmenter: Any
    export: Any
    register: Any
    gate: Any
    skipped: Any
    publish: Any


def make_components(image: str = DEFAULT_IMAGE) -> Components:
    """Wrap every step as a kfp component running in ``image`` (which has medops installed)."""

    def wrap(func: Any) -> Any:
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return Components(
        check_registry=wrap(check_registry),
        ingest=wrap(ingest),
        split=wrap(split),
        validate=wrap(validate),
        tune=wrap(tune),
        pretrain=wrap(pretrain),
        no_tuning=wrap(no_tuning),
        train=wrap(train),
        evaluate=wrap(evaluate),
        evaluate_segmenter=wrap(evaluate_segmenter),
        export=wrap(export),
        register=wrap(register),
        gate=wrap(gate),
        skipped=wrap(skipped),
        publish=wrap(publish),
    )
