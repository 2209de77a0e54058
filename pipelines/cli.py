"""``medops pipeline``: run the training pipeline locally, or compile it for a cluster."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from medops.errors import InvalidInputError
from medops.settings import MedopsSettings
from pipelines.presets import (
    PRESETS,
    TASKS,
    Floors,
    check_floors,
    describe_floors,
    get_preset,
    parse_floors,
)

if TYPE_CHECKING:
    from pipelines.local import LocalRun
    from pipelines.quantizing import Quantized

SHOWN = (
    "test_auc",
    "test_sensitivity",
    "test_specificity",
    "test_ece",
    "test_dice_patient_mean",
    "test_accuracy",
    "train_seconds",
)


def _settings(ctx: click.Context) -> MedopsSettings:
    return ctx.find_object(MedopsSettings) or MedopsSettings()


def floor_option(
    func: Callable[..., Any] | None = None, *, task_files: bool = False
) -> Callable[..., Any]:
    """``--floor TASK.METRIC=VALUE`` (repeatable), parsed to :data:`Floors` before the command
    runs, so a bad one stops it before anything trains. ``task_files``: a command that also
    takes ``--task`` FILEs, whose names a floor may name (checked once they are read)."""

    def parse(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> Floors:
        try:
            return parse_floors(items, tasks=None if task_files else TASKS)
        except InvalidInputError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    names = f"{', '.join(TASKS)}" + (", or a --task file's name" if task_files else "")
    option = click.option(
        "--floor",
        "floors",
        multiple=True,
        metavar="TASK.METRIC=VALUE",
        callback=parse,
        help="The promotion gate's floor (a ceiling for ece) for this run, over the preset's; "
        f"repeatable. TASK: {names}. E.g. segmenter.dice_patient_mean=0.99.",
    )
    return option if func is None else option(func)


def echo_floors(preset: str, floors: Floors) -> None:
    """Say which gate floors this run overrides."""
    for line in describe_floors(get_preset(preset), floors):
        click.echo(f"gate floor for this run: {line}")


TASK_OPTION = click.option(
    "--task",
    "task_paths",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A task file (tasks/*.yaml) to train instead of the brain models; repeatable.",
)


@click.group("pipeline")
def pipeline() -> None:
    """Train, evaluate, register and promote the models (Kubeflow Pipelines)."""


@pipeline.command("run")
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="fast",
    show_default=True,
    help="tiny: seconds (tests); fast: about 10 min on 2 CPU cores; refresh: 3 epochs on "
    "top of --warm-start; full: quality.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder holding lgg-mri-segmentation/ (and brain-tumor-mri-4class/Training/ for the "
    "type classifier; default: MEDOPS_DATA_DIR).",
)
@click.option(
    "--hpo",
    "hpo_trials",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Optuna trials per model before training (0: no search).",
)
@click.option(
    "--type-classifier/--no-type-classifier",
    default=None,
    help="Also train the 4-class tumour-type classifier (default: per preset).",
)
@click.option(
    "--warm-start",
    default="",
    help="Start from this alias/version of each model "
    "in the registry (e.g. champion), or a local weights file.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--folds",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="First judge the recipe by K-fold patient-level cross-validation (K >= 3); the "
    "registered versions then carry its figures. 0: the held-out split only.",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Then export each model this run made champion at int8 (as `medops export "
    "--precision int8` does): a new version, gated against it, challenger for a canary.",
)
@TASK_OPTION
@floor_option(task_files=True)
@click.pass_context
def run(
    ctx: click.Context,
    preset: str,
    data_dir: Path | None,
    hpo_trials: int,
    type_classifier: bool | None,
    warm_start: str,
    seed: int,
    folds: int,
    int8: bool,
    task_paths: tuple[Path, ...],
    floors: Floors,
) -> None:
    """Run the pipeline here with kfp.local; registers and promotes into MEDOPS_TRACKING_URI.

    Without --task: the brain MRI models; with --task FILE (repeatable): the tasks those files
    declare (data under the data dir, as each file's data.path says)."""
    from pipelines.local import check_data, run_local, run_tasks_local
    from pipelines.steps import check_registry

    settings = _settings(ctx)
    started_ms = int(time.time() * 1000)
    if not task_paths:
        try:  # the brain pipeline's floors name its own models
            check_floors(floors)
        except InvalidInputError as exc:
            raise click.BadParameter(str(exc), param_hint="'--floor'") from None
    if task_paths:
        brain_only = {"--hpo": hpo_trials, "--type-classifier": type_classifier, "--folds": folds}
        given = [name for name, value in brain_only.items() if value]
        if given:
            raise click.UsageError(f"{', '.join(given)}: for the brain pipeline, not with --task")
        settings.ensure_home()
        echo_floors(preset, floors)
        result = run_tasks_local(
            list(task_paths),
            preset,
            data_dir=data_dir or settings.data_dir,
            home=settings.home,
            tracking_uri=settings.mlflow_uri,
            seed=seed,
            warm_start=warm_start,
            floors=floors,
        )
        _echo_run(result, settings.mlflow_uri)
        if int8:
            _export_int8_champions(result, started_ms, settings, preset, seed, data_dir, task_paths)
        return
    if folds and folds < 3:
        raise click.BadParameter(f"need at least 3 folds, got {folds}", param_hint="--folds")
    # the data the preset asks for is there before anything (cross-validation included) trains
    data = check_data(preset, data_dir or settings.data_dir, type_classifier=type_classifier)
    settings.ensure_home()
    echo_floors(preset, floors)
    crossval = None
    if folds:
        from pipelines.crossval import cross_validate

        check_registry(settings.mlflow_uri)
        work = settings.home / "crossval" / f"{preset}-k{folds}-seed{seed}"
        result_cv = cross_validate(
            preset,
            data.lgg,
            settings.home,
            folds=folds,
            seed=seed,
            work=work,
            on_fold=lambda fold: click.echo(f"cross-validation: fold {fold.fold}/{folds} done"),
        )
        click.echo(result_cv.to_text())
        crossval = result_cv.save(work / "crossval.json")
    result = run_local(
        preset,
        data_dir=data_dir or settings.data_dir,
        home=settings.home,
        tracking_uri=settings.mlflow_uri,
        hpo_trials=hpo_trials,
        type_classifier=type_classifier,
        seed=seed,
        warm_start=warm_start,
        crossval=crossval,
        floors=floors,
    )
    _echo_run(result, settings.mlflow_uri)
    if int8:
        _export_int8_champions(result, started_ms, settings, preset, seed, data_dir, task_paths)


def _echo_run(result: LocalRun, tracking_uri: str) -> None:
    click.echo(
        f"pipeline {result.preset} finished in {result.seconds:.0f} s; registry {tracking_uri}"
    )
    for model in result.models:
        aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(model.aliases.items()))
        click.echo(f"{model.name}  ({aliases})")
        if model.versions:
            latest = model.versions[0]
            shown = "  ".join(
                f"{k.removeprefix('test_')}={latest.metrics[k]:.3f}"
                for k in SHOWN
                if k in latest.metrics and math.isfinite(latest.metrics[k])
            )
            click.echo(f"  new version v{latest.version}: {shown}")
    click.echo(f"Triton model repository: {result.triton_repo}")
    click.echo(f"step logs: {result.log_path}")


def _export_int8_champions(
    result: LocalRun,
    started_ms: int,
    settings: MedopsSettings,
    preset: str,
    seed: int,
    data_dir: Path | None,
    task_paths: tuple[Path, ...],
) -> None:
    """An int8 version of every version this run registered and made champion; a version the
    gate kept out, or left to a canary, is named and skipped."""
    from medops.modelspec import CHAMPION
    from medops.tasks import read_task
    from pipelines.quantizing import export_int8

    task_of = {name: str(path) for path in task_paths for name in read_task(path).models}
    for model in result.models:
        if not model.versions or model.versions[0].created_at_ms < started_ms:
            continue  # not trained by this run
        latest = model.versions[0]
        if CHAMPION not in latest.aliases:
            click.echo(f"{model.name} v{latest.version}: not champion, so no int8 variant")
            continue
        _echo_quantized(
            export_int8(
                model.name,
                latest.version,
                data_dir=data_dir or settings.data_dir,
                home=settings.home,
                tracking_uri=settings.mlflow_uri,
                task=task_of.get(model.name),
                preset=preset,
                seed=seed,
            )
        )


def _echo_quantized(result: Quantized) -> None:
    shown = "  ".join(
        f"{k} {result.headline[k]:.4f} (float32 {result.source_headline.get(k, math.nan):.4f})"
        for k in ("auc", "dice_patient_mean", "accuracy")
        if k in result.headline
    )
    click.echo(
        f"{result.name} v{result.version} registered (int8, from v{result.source_version}, "
        f"calibrated on {result.calibration_slices} training slices): {shown}"
    )
    for reason in result.reasons:
        click.echo(f"  {reason}")
    verdict = "passed" if result.passed else "failed"
    click.echo(f"  gate {verdict}; now: challenger (a canary or `medops models promote` decides)")


@pipeline.command("compile")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--image", default=None, help="Pipeline image (default ghcr.io/medops/pipeline).")
@click.option("--data-pvc", default="medops-data", show_default=True)
@click.option("--mlflow-secret", default="medops-mlflow", show_default=True)
@click.option("--gpus", type=click.IntRange(min=0), default=1, show_default=True)
@TASK_OPTION
def compile_(
    output: Path,
    image: str | None,
    data_pvc: str,
    mlflow_secret: str,
    gpus: int,
    task_paths: tuple[Path, ...],
) -> None:
    """Compile the pipeline with its Kubernetes settings to a YAML file for a KFP cluster
    (with --task: the pipeline of those tasks, their documents inside the YAML)."""
    from medops.tasks import TaskFileError, read_task
    from pipelines.components import DEFAULT_IMAGE
    from pipelines.pipeline import ClusterSettings, compile_pipeline

    problems, tasks = [], []
    for found in task_paths:
        try:
            tasks.append(read_task(found))
        except TaskFileError as exc:
            problems += exc.problems
    if problems:
        raise TaskFileError(problems)
    cluster = ClusterSettings(data_pvc=data_pvc, mlflow_secret=mlflow_secret, gpus=gpus)
    path = compile_pipeline(output, image=image or DEFAULT_IMAGE, cluster=cluster, tasks=tasks)
    click.echo(f"wrote {path}")


@click.command("import")
@click.argument("name")
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The model, meeting the serving contract (input image, output probabilities).",
)
@click.option(
    "--task",
    "task_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The task file NAME belongs to (tasks/*.yaml): its data, split, rule and gate.",
)
@click.option("--preset", type=click.Choice(list(PRESETS)), default="fast", show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="The pipeline's split seed.")
@click.pass_context
def import_model_command(
    ctx: click.Context,
    name: str,
    onnx_path: Path,
    task_path: Path,
    preset: str,
    data_dir: Path | None,
    seed: int,
) -> None:
    """Register an ONNX model trained elsewhere as a new version of NAME: the contract is
    checked, the model judged on the task's test split like a trained one, its card written,
    and the gate applied (champion only if there is none; otherwise it waits as challenger)."""
    from pipelines.importing import import_model

    settings = _settings(ctx)
    settings.ensure_home()
    result = import_model(
        name,
        onnx_path,
        task_path,
        data_dir=data_dir or settings.data_dir,
        home=settings.home,
        tracking_uri=settings.mlflow_uri,
        preset=preset,
        seed=seed,
    )
    shown = "  ".join(
        f"{k}={v:.3f}"
        for k, v in result.headline.items()
        if k in ("dice_patient_mean", "dice_slice_mean", "iou_slice_mean")
    )
    click.echo(f"{result.name} v{result.version} registered (imported): {shown}")
    if result.champion is not None:
        theirs = result.champion["headline"]
        other = "  ".join(
            f"{k}={theirs[k]:.3f}" for k in ("dice_patient_mean", "dice_slice_mean") if k in theirs
        )
        click.echo(f"  champion v{result.champion['version']} on the same samples: {other}")
    verdict = (
        "champion"
        if result.promoted
        else "challenger (gate verdict recorded; a canary or `medops models promote` decides)"
    )
    click.echo(f"  now: {verdict}")


@click.command("export")
@click.argument("name")
@click.argument("version")
@click.option(
    "--precision",
    type=click.Choice(["int8"]),
    required=True,
    help="int8: ONNX Runtime static quantization (QDQ), calibrated on training slices.",
)
@click.option(
    "--task",
    "task_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The task file of NAME, for a task's model (the brain models need none).",
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="fast",
    show_default=True,
    help="The preset VERSION was trained under: its split and floors.",
)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="The pipeline's split seed.")
@click.pass_context
def export_command(
    ctx: click.Context,
    name: str,
    version: str,
    precision: str,
    task_path: Path | None,
    preset: str,
    data_dir: Path | None,
    seed: int,
) -> None:
    """Export VERSION of NAME (a number or an alias) at another precision as a new version:
    quantized, judged on the same test split as VERSION and gated against it (AUC, Dice or
    accuracy within 0.01), registered tagged precision=int8 as challenger, for a canary."""
    from pipelines.quantizing import export_int8

    settings = _settings(ctx)
    settings.ensure_home()
    result = export_int8(
        name,
        version,
        data_dir=data_dir or settings.data_dir,
        home=settings.home,
        tracking_uri=settings.mlflow_uri,
        task=str(task_path) if task_path else None,
        preset=preset,
        seed=seed,
    )
    _echo_quantized(result)
