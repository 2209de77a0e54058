"""Hyperparameter search: Optuna locally, the same space as a Katib Experiment on clusters.

The search space lives here once; ``k8s/katib/experiment.yaml`` repeats it (a test keeps the
two equal). A Katib trial runs ``python -m pipelines.hpo ...`` and prints
``val_metric=<value>`` lines, which Katib's stdout metrics collector reads.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Mapping
from typing import Any

from medops.errors import InvalidInputError

SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "double", "min": 3e-4, "max": 1e-2, "log": True},
    "weight_decay": {"type": "double", "min": 1e-5, "max": 1e-3, "log": True},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
}
"""Parameter -> kind and range (double: log-uniform when ``log``)."""

OBJECTIVE = "val_metric"
"""Maximised: validation AUC (classifier), accuracy (type classifier) or Dice (segmenter)."""


def suggest(trial: Any) -> dict[str, Any]:
    """Draw one point of :data:`SEARCH_SPACE` from an Optuna trial."""
    params: dict[str, Any] = {}
    for name, spec in SEARCH_SPACE.items():
        if spec["type"] == "double":
            params[name] = trial.suggest_float(name, spec["min"], spec["max"], log=spec["log"])
        else:
            params[name] = trial.suggest_categorical(name, spec["choices"])
    return params


def search(
    task: str,
    preset: str,
    manifest_path: str,
    splits_path: str,
    home: str,
    *,
    n_trials: int,
    seed: int = 0,
    base_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``n_trials`` Optuna trials (TPE, median pruning) on the train/validation split.

    Each trial trains with the preset's settings plus a point of the search space and is scored
    by its best validation metric; the test split is never looked at. Returns the best
    parameters merged over ``base_overrides`` plus ``best_value`` and ``trials`` under
    ``_search``.
    """
    import optuna

    from pipelines import steps

    if n_trials < 1:
        raise InvalidInputError(f"hpo trials: need at least 1, got {n_trials}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = dict(base_overrides or {})
    config = steps.train_config(task, preset, base)
    size = config.image_size
    train_set = steps.load_split(manifest_path, splits_path, "train", size=size, home=home)
    val_set = steps.load_split(manifest_path, splits_path, "val", size=size, home=home)

    def objective(trial: optuna.Trial) -> float:
        from medops.training import train_model

        point = suggest(trial)
        trial_config = config.replace(**point)

        def report(epoch: int, record: dict[str, float]) -> None:
            trial.report(record["val_metric"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = train_model(trial_config, train_set, val_set, on_epoch=report)
        return float(result.best_metric) if math.isfinite(result.best_metric) else 0.0

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    study.optimize(objective, n_trials=n_trials)
    best = {**base, **study.best_params}
    best["_search"] = {"best_value": study.best_value, "trials": len(study.trials)}
    return best


def prepare_data(data: str, home: str, *, seed: int = 0) -> tuple[str, str]:
    """Ingest ``data`` (idempotent) and split it by patient; return (manifest, splits) paths.

    Cluster jobs start from the dataset folder: the same seed gives the pipeline's split.
    """
    from pathlib import Path

    from pipelines import steps

    manifest = steps.ingest_data(data, home)["manifest"]
    splits = str(Path(home) / "splits" / f"{Path(manifest).parent.name}-seed{seed}.json")
    steps.split_data(manifest, splits, seed=seed)
    return manifest, splits


def build_parser() -> argparse.ArgumentParser:
    """The command line of one trial (``python -m pipelines.hpo``)."""
    parser = argparse.ArgumentParser(description="one hyperparameter trial (Katib)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--data", required=True, help="dataset folder (lgg-mri-segmentation)")
    parser.add_argument("--home", required=True)
    parser.add_argument("--seed", type=int, default=0)
    for name, spec in SEARCH_SPACE.items():
        kind = float if spec["type"] == "double" else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    """One Katib trial: train with the given point, print the objective for the collector."""
    args = build_parser().parse_args(argv)
    from pipelines import steps

    manifest, splits = prepare_data(args.data, args.home, seed=args.seed)
    point = {name: getattr(args, name) for name in SEARCH_SPACE}

    def report(epoch: int, record: dict[str, float]) -> None:
        print(f"epoch={epoch} {OBJECTIVE}={record['val_metric']:.6f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="medops-trial-") as tmp:
        summary = steps.train(
            args.task,
            args.preset,
            manifest,
            splits,
            args.home,
            f"{tmp}/weights.pt",
            overrides=point,
            on_epoch=report,
        )
    print(f"{OBJECTIVE}={summary['best_metric']:.6f}", flush=True)
    print(json.dumps({"params": point, "best_epoch": summary["best_epoch"]}), flush=True)


if __name__ == "__main__":
    main()
