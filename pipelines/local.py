"""Run the training pipeline on this machine with ``kfp.local`` (no cluster, no GPU)."""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medops.errors import DatasetError, MedopsError, TrainingError
from medops.tasks import Problem, TaskSpec
from pipelines import steps
from pipelines.presets import check_floors, get_preset
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


@dataclass(frozen=True)
class DataPaths:
    """The dataset folders one run reads, checked to exist."""

    lgg: Path
    fourclass: Path
    type_classifier: bool
    """Whether the run trains the type classifier (and so reads ``fourclass``)."""


def _missing(path: Path) -> str | None:
    if not path.exists():
        return "not found"
    return None if path.is_dir() else "not a folder"


def check_data(
    preset: str,
    data_dir: Path,
    *,
    lgg_path: Path | None = None,
    type_classifier: bool | None = None,
) -> DataPaths:
    """The folders the preset (and ``type_classifier``) asks for; a :class:`DatasetError`
    naming the setting and the path when one is missing, before anything is read or trained."""
    chosen = get_preset(preset)
    lgg = Path(lgg_path or Path(data_dir) / LGG_DIR).resolve()
    fourclass = (Path(data_dir) / FOURCLASS_DIR).resolve()
    with_type = chosen.type_classifier if type_classifier is None else type_classifier
    needs_fourclass = with_type or chosen.pretrain
    problem = _missing(lgg)
    if problem:
        setting = "lgg_path" if lgg_path else "data dir (MEDOPS_DATA_DIR or --data-dir)"
        raise DatasetError(
            f"{setting}: {lgg} {problem}; every preset needs the LGG data ({LGG_DIR}/)"
        )
    problem = _missing(fourclass) if needs_fourclass else None
    if problem:
        if with_type:
            setting = "--type-classifier" if type_classifier else f"preset {chosen.name}"
            other = "or run without the type classifier (--no-type-classifier)"
        else:
            setting = f"preset {chosen.name} (its classifier is pretrained on tumour types)"
            other = "or use the tiny preset"
        raise DatasetError(
            f"{setting} needs the 4-class data: {fourclass} {problem}; put {FOURCLASS_DIR}/ "
            f"under the data dir (MEDOPS_DATA_DIR or --data-dir), {other}"
        )
    return DataPaths(lgg=lgg, fourclass=fourclass, type_classifier=with_type)


def preflight(
    lgg_path: Path,
    home: Path,
    tracking_uri: str,
    *,
    seed: int,
    max_patients: dict[str, int],
    fourclass_path: Path | None = None,
    type_max_patients: dict[str, int] | None = None,
) -> None:
    """Check the registry and the data in-process, so bad input fails with its own message
    before the pipeline starts (the pipeline runs the same checks again as components).
    ``fourclass_path``: the 4-class data too, when the run trains the type classifier."""
    steps.check_registry(tracking_uri)
    datasets = [(lgg_path, max_patients)]
    if fourclass_path is not None:
        datasets.append((fourclass_path, type_max_patients or {}))
    for path, caps in datasets:
        ingested = steps.ingest_data(str(path), str(home))
        with tempfile.TemporaryDirectory(prefix="medops-preflight-") as tmp:
            splits = str(Path(tmp) / "splits.json")
            steps.split_data(ingested["manifest"], splits, seed=seed, max_patients=caps or None)
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
    floors: Mapping[str, Mapping[str, float]] | None = None,
) -> LocalRun:
    """Run the whole pipeline through ``kfp.local.SubprocessRunner`` in this environment.

    ``lgg_path`` overrides ``data_dir / lgg-mri-segmentation``. The registry at
    ``tracking_uri`` and the data are checked before anything trains. Step outputs live under
    ``<home>/pipeline-runs``; cached steps are reused across runs. ``crossval``: the recipe's
    cross-validation file, whose figures the registered versions then carry. ``floors``: this
    run's gate floors per task over the preset's ``minimums`` (``--floor``). What the steps
    print goes to ``log_path`` (default ``<home>/logs/pipeline.log``); the console shows one
    progress bar per training run (:mod:`pipelines.progress`).
    """
    from pipelines.pipeline import build_pipeline

    chosen = get_preset(preset)
    gate_floors = check_floors(floors)
    data = check_data(preset, data_dir, lgg_path=lgg_path, type_classifier=type_classifier)
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    max_patients = chosen.max_patients or {}
    preflight(
        data.lgg,
        home,
        tracking_uri,
        seed=seed,
        max_patients=max_patients,
        fourclass_path=data.fourclass if data.type_classifier else None,
        type_max_patients=chosen.type_max_patients,
    )

    return _run_kfp(
        build_pipeline(),
        dict(
            lgg_path=str(data.lgg),
            fourclass_path=str(data.fourclass),
            home=str(home),
            tracking_uri=tracking_uri,
            preset=preset,
            seed=seed,
            hpo_trials=hpo_trials,
            warm_start=warm_start,
            type_classifier=data.type_classifier,
            max_patients=max_patients,
            type_max_patients=chosen.type_max_patients or {},
            crossval=str(crossval or ""),
            floors=gate_floors,
        ),
        preset=preset,
        home=home,
        tracking_uri=tracking_uri,
        log_path=log_path,
    )


def _run_kfp(
    pipeline: Any,
    arguments: Mapping[str, Any],
    *,
    preset: str,
    home: Path,
    tracking_uri: str,
    log_path: Path | None,
) -> LocalRun:
    """Run ``pipeline`` through ``kfp.local.SubprocessRunner``; the steps' output goes to
    ``log_path`` (default ``<home>/logs/pipeline.log``), the console shows progress bars."""
    from kfp import local

    from medops.registry import Registry

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
        # display names and resources matter on a cluster only
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        try:
            task = pipeline(**arguments)
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


def read_tasks(paths: Sequence[Path], data_dir: Path, preset: str | None = None) -> list[TaskSpec]:
    """The tasks of ``paths`` with every rule across them and their data on disk checked (and,
    given ``preset``, that each declares the gate's floors or tolerance for it); one
    :class:`TaskFileError` listing every problem otherwise, before anything trains."""
    from medops.tasks import TaskFileError, data_problems, load_catalog

    catalog, problems = load_catalog(paths)
    chosen = []
    for path in paths:
        found = next((f for f in catalog.files.values() if f.path == Path(path)), None)
        if found is None:
            continue
        if not isinstance(found.spec, TaskSpec):
            problems.append(
                Problem(file=Path(path).name, field="chain", message="a chain, not a task")
            )
            continue
        if not found.spec.trainable:
            message = f"layout {found.spec.data.layout}: medops does not read it yet"
            problems.append(Problem(file=Path(path).name, field="data.layout", message=message))
            continue
        problems += data_problems(found.spec, Path(path).name, data_dir)
        declared = found.spec.presets.get(preset) if preset else None  # type: ignore[call-overload]
        if preset and not (declared and (declared.floors or declared.tolerance)):
            message = f"no floors or tolerance for preset {preset}: the gate could judge nothing"
            problems.append(
                Problem(file=Path(path).name, field=f"presets.{preset}", message=message)
            )
        chosen.append(found.spec)
    if problems:
        raise TaskFileError(problems)
    return chosen


def run_tasks_local(
    task_paths: Sequence[Path],
    preset: str,
    *,
    data_dir: Path,
    home: Path,
    tracking_uri: str,
    seed: int = 0,
    warm_start: str = "",
    log_path: Path | None = None,
    floors: Mapping[str, Mapping[str, float]] | None = None,
) -> LocalRun:
    """Run the pipeline of the tasks in ``task_paths`` (:func:`pipelines.pipeline.
    build_task_pipeline`) here. The task files, their data, every split and the registry are
    checked first; ``floors``: this run's gate floors per task name."""
    from pipelines.pipeline import build_task_pipeline
    from pipelines.tasks import encode

    chosen = get_preset(preset)
    tasks = read_tasks(task_paths, data_dir, preset)
    gate_floors = check_floors(floors, tasks=[t.name for t in tasks])
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    steps.check_registry(tracking_uri)
    max_patients = chosen.max_patients or {}
    for spec in tasks:
        task = encode(spec)
        ingested = steps.ingest_data(str(Path(data_dir) / spec.data.path), str(home), task)
        with tempfile.TemporaryDirectory(prefix="medops-preflight-") as tmp:
            splits = str(Path(tmp) / "splits.json")
            steps.split_data(ingested["manifest"], splits, seed=seed, max_patients=max_patients)
            steps.validate_data(ingested["manifest"], splits, str(Path(tmp) / "report.txt"), task)
    return _run_kfp(
        build_task_pipeline(tasks),
        dict(
            data_root=str(Path(data_dir).resolve()),
            home=str(home),
            tracking_uri=tracking_uri,
            preset=preset,
            seed=seed,
            warm_start=warm_start,
            max_patients=max_patients,
            floors=gate_floors,
        ),
        preset=preset,
        home=home,
        tracking_uri=tracking_uri,
        log_path=log_path,
    )
