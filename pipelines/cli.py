"""``medops pipeline``: run the training pipeline locally, or compile it for a cluster."""

from __future__ import annotations

import math
from pathlib import Path

import click

from medops.settings import MedopsSettings
from pipelines.presets import PRESETS

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


@click.group("pipeline")
def pipeline() -> None:
    """Train, evaluate, register and promote the models (Kubeflow Pipelines)."""


@pipeline.command("run")
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="fast",
    show_default=True,
    help="tiny: seconds (tests); fast: about 15 min on 2 CPU cores; refresh: 3 epochs on "
    "top of --warm-start; full: quality.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder holding lgg-mri-segmentation/ (default: MEDOPS_DATA_DIR).",
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
) -> None:
    """Run the pipeline here with kfp.local; registers and promotes into MEDOPS_TRACKING_URI."""
    from pipelines.local import LGG_DIR, run_local

    settings = _settings(ctx)
    settings.ensure_home()
    crossval = None
    if folds:
        from pipelines.crossval import cross_validate

        if folds < 3:
            raise click.BadParameter(f"need at least 3 folds, got {folds}", param_hint="--folds")
        work = settings.home / "crossval" / f"{preset}-k{folds}-seed{seed}"
        result_cv = cross_validate(
            preset,
            (data_dir or settings.data_dir) / LGG_DIR,
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
