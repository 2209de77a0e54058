"""Run the training pipeline on this machine with ``kfp.local`` (no cluster, no GPU)."""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medops.errors import MedopsError, TrainingError
from pipelines import steps
from pipelines.presets import get_preset
from pipelines.progress import plain, quiet_console

LGG_DIR = "lgg-mri-segmentation"
FOURCLASS_DIR = "brain-tumor-mri-4class/Training"


@dataclass
class LocalRun:
    """What a local pipeline run left in the registry."""

    preset: str
    seconds: float
    published: list[dict[str, Any]]
    models: list[Any] = field(default_factory=list)
    """``medops.registry.ModelSummary`` of every registered model after the run."""
    triton_repo: Path | None = None
    log_path: Path | None = None
    """Where the steps' output (kfp's executor logs) went."""


def preflight(
    lgg_path: Path, home: Path, tracking_uri: str, *, seed: int, max_patients: dict[str, int]
) -> None:
    """Check the registry and the data in-process, so bad input fails with its own message
    before the pipeline starts (the pipeline runs the same checks again as components)."""
    steps.check_registry(tracking_uri)
    ingested = steps.ingest_data(str(lgg_path), str(home))
    with tempfile.TemporaryDirectory(prefix="medops-preflight-") as tmp:
        splits = str(Path(tmp) / "splits.json")
        steps.split_data(ingested["manifest"], splits, seed=seed, max_patients=max_patients or None)
        steps.validate_data(ingested["manifest"], splits, str(Path(tmp) / "report.txt"))


def run_local(
    preset: str,
    *,
    data_dir: Path,
    home: Path,
    tracking_uri: str,
    hpo_trials: int = 0,
    type_classifier: bool | None = None,
    seed: int = 0,
    warm_start: str = "",
    lgg_path: Path | None = None,
    log_path: Path | None = None,
    crossval: Path | None = None,
) -> LocalRun:
    """Run the whole pipeline through ``kfp.local.SubprocessRunner`` in this environment.

    ``lgg_path`` overrides ``data_dir / lgg-mri-segmentation``. The registry at
    ``tracking_uri`` and the data are checked before anything trains. Step outputs live under
    ``<home>/pipeline-runs``; cached steps are reused across runs. ``crossval``: the recipe's
    cross-validation file, whose figures the registered versions then carry. What the steps
    print goes to ``log_path`` (default ``<home>/logs/pipeline.log``); the console shows one
    progress bar per training run (:mod:`pipelines.progress`).
    """
    from kfp import local

    from medops.registry import Registry
    from pipelines.pipeline import build_pipeline

    chosen = get_preset(preset)
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    lgg = Path(lgg_path or Path(data_dir) / LGG_DIR).resolve()
    fourclass = (Path(data_dir) / FOURCLASS_DIR).resolve()
    with_type = chosen.type_classifier if type_classifier is None else type_classifier
    max_patients = chosen.max_patients or {}
    preflight(lgg, home, tracking_uri, seed=seed, max_patients=max_patients)

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(home / "pipeline-runs"),
        raise_on_error=True,
    )
    log_path = log_path or home / "logs" / "pipeline.log"
    started = time.perf_counter()
    with warnings.catch_warnings(), quiet_console(log_path) as console:
        # the components name a cluster image; locally they run in this environment
        warnings.filterwarnings("ignore", message=".*base image.*")
        try:
            task = build_pipeline()(
                lgg_path=str(lgg),
                fourclass_path=str(fourclass),
                home=str(home),
                tracking_uri=tracking_uri,
                preset=preset,
                seed=seed,
                hpo_trials=hpo_trials,
                warm_start=warm_start,
                type_classifier=with_type,
                max_patients=max_patients,
                type_max_patients=chosen.type_max_patients or {},
                crossval=str(crossval or ""),
            )
        except RuntimeError as exc:
            tail = "\n".join(f"  | {line}" for line in console.tail)
            raise TrainingError(
                f"pipeline failed: {plain(str(exc))}; the step's last lines:\n{tail}\n"
                f"full log: {log_path}"
            ) from exc
    seconds = time.perf_counter() - started
    published = json.loads(task.output) if isinstance(task.output, str) else []
    try:
        models = Registry(tracking_uri).list_models()
    except MedopsError:
        models = []
    return LocalRun(
        preset=preset,
        seconds=seconds,
        published=published,
        models=models,
        triton_repo=home / "triton-repo",
        log_path=log_path,
    )
