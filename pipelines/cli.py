"""``medops pipeline``: run the training pipeline locally, or compile it for a cluster."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from medops.errors import InvalidInputError
from medops.settings import MedopsSettings
from pipelines.presets import PRESETS, TASKS, Floors, describe_floors, get_preset, parse_floors

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


def _parse_floors(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> Floors:
    try:
        return parse_floors(items)
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def floor_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--floor TASK.METRIC=VALUE`` (repeatable), parsed to :data:`Floors` before the command
    runs, so a bad one stops it before anything trains."""
    return click.option(
        "--floor",
        "floors",
        multiple=True,
        metavar="TASK.METRIC=VALUE",
        callback=_parse_floors,
        help="The promotion gate's floor (a ceiling for ece) for this run, over the preset's; "
        f"repeatable. TASK: {', '.join(TASKS)}. E.g. segmenter.dice_patient_mean=0.99.",
    )(func)


def echo_floors(preset: str, floors: Floors) -> None:
    """Say which gate floors this run overrides."""
    for line in describe_floors(get_preset(preset), floors):
        click.echo(f"gate floor for this run: {line}")


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
@floor_option
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
    floors: Floors,
) -> None:
    """Run the pipeline here with kfp.local; registers and promotes into MEDOPS_TRACKING_URI."""
    from pipelines.local import check_data, run_local
    from pipelines.steps import check_registry

    settings = _settings(ctx)
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
    click.echo(
        f"pipeline {preset} finished in {result.seconds:.0f} s; registry {settings.mlflow_uri}"
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


@pipeline.command("compile")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--image", default=None, help="Pipeline image (default ghcr.io/medops/pipeline).")
@click.option("--data-pvc", default="medops-data", show_default=True)
@click.option("--mlflow-secret", default="medops-mlflow", show_default=True)
@click.option("--gpus", type=click.IntRange(min=0), default=1, show_default=True)
def compile_(output: Path, image: str | None, data_pvc: str, mlflow_secret: str, gpus: int) -> None:
    """Compile the pipeline with its Kubernetes settings to a YAML file for a KFP cluster."""
    from pipelines.components import DEFAULT_IMAGE
    from pipelines.pipeline import ClusterSettings, compile_pipeline

    cluster = ClusterSettings(data_pvc=data_pvc, mlflow_secret=mlflow_secret, gpus=gpus)
    path = compile_pipeline(output, image=image or DEFAULT_IMAGE, cluster=cluster)
    click.echo(f"wrote {path}")
