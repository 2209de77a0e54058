"""Pipeline presets: how much data, which training preset, and what the gate demands."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from medops.errors import InvalidInputError
from medops.modelspec import NAME_PATTERN


@dataclass(frozen=True)
class PipelinePreset:
    """Settings of one pipeline run on top of :meth:`medops.training.TrainConfig.preset`."""

    name: str
    train_preset: str
    """The ``TrainConfig.preset`` name used for every task."""
    max_patients: dict[str, int] | None = None
    """Cap on patients per split (train/val/test) after the patient-level split; None: all."""
    type_classifier: bool = False
    """Also train brain-tumor-type-classifier on the 4-class folder data."""
    type_max_patients: dict[str, int] | None = None
    minimums: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per task: the gate's absolute floors (ceilings for ece)."""
    tolerance: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per task: how much worse than the champion (same test patients) a challenger may be."""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per task: TrainConfig fields changed from the training preset."""
    pretrain: bool = False
    """Start the tumour classifier from its own network trained to tell tumour types apart on
    the 4-class data (transfer learning: nothing can be downloaded, so pretrain on data here)."""
    promote: bool = True
    """The gate moves ``champion`` when a challenger passes; False records the verdict and
    leaves the move to a live canary (progressive delivery in the gateway)."""


_TOLERANCE = {
    "classifier": {"auc": 0.01, "sensitivity": 0.03},
    "segmenter": {"dice_patient_mean": 0.01},
    "type-classifier": {"accuracy": 0.01},
}

TASKS = ("classifier", "segmenter", "type-classifier")
"""The tasks a preset configures (and a gate floor override may name)."""

PRESETS: dict[str, PipelinePreset] = {
    "tiny": PipelinePreset(
        name="tiny",
        train_preset="tiny",
        max_patients={"train": 3, "val": 2, "test": 2},
        type_max_patients={"train": 24, "val": 12, "test": 12},
        # a tiny model proves the plumbing, not quality: floors that any finite result meets
        minimums={
            "classifier": {"auc": 0.0},
            "segmenter": {"dice_patient_mean": 0.0},
            "type-classifier": {"accuracy": 0.0},
        },
        # judged on the ranking metric alone: tiny models have arbitrary operating points
        tolerance={
            "classifier": {"auc": 0.01},
            "segmenter": {"dice_patient_mean": 0.01},
            "type-classifier": {"accuracy": 0.01},
        },
        overrides={
            "classifier": {"epochs": 1},
            "segmenter": {"epochs": 1},
            "type-classifier": {"epochs": 1},
        },
    ),
    "fast": PipelinePreset(
        name="fast",
        train_preset="fast",
        pretrain=True,
        type_max_patients={"train": 400, "val": 100, "test": 200},
        # floors well below what cross-validation measured (README), so a sound run passes
        # on any CPU, and far above what a broken one reaches
        minimums={
            "classifier": {"auc": 0.85, "sensitivity": 0.65, "ece": 0.15},
            "segmenter": {"dice_patient_mean": 0.55, "two_stage_dice_patient_mean": 0.55},
            "type-classifier": {"accuracy": 0.6},
        },
        tolerance=_TOLERANCE,
    ),
    "full": PipelinePreset(
        name="full",
        train_preset="full",
        pretrain=True,
        type_classifier=True,
        minimums={
            "classifier": {"auc": 0.95, "sensitivity": 0.85, "ece": 0.1},
            "segmenter": {"dice_patient_mean": 0.8, "two_stage_dice_patient_mean": 0.8},
            "type-classifier": {"accuracy": 0.85},
        },
        tolerance=_TOLERANCE,
    ),
}


# a few epochs on top of a warm start (--warm-start champion): a cheap challenger that a
# live canary promotes, not the gate
PRESETS["refresh"] = replace(
    PRESETS["fast"],
    name="refresh",
    promote=False,
    overrides={
        task: {"epochs": 3, "freeze_epochs": 1, "patience": 0}
        for task in ("classifier", "segmenter", "type-classifier")
    },
)


def get_preset(name: str) -> PipelinePreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInputError(f"preset: {name!r} is not one of {', '.join(PRESETS)}") from None


# ------------------------------------------------------------------ per-run gate floors

Floors = dict[str, dict[str, float]]
"""Task -> metric -> floor (a ceiling for lower-is-better metrics such as ``ece``)."""


def _floor_value(where: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidInputError(f"{where}: {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{where}: {value!r} is not a finite number")
    return number


def _floor_key(task: str, metric: str, where: str, tasks: Collection[str] | None) -> None:
    if tasks is None:
        if not re.fullmatch(NAME_PATTERN, task):
            raise InvalidInputError(f"{where}: {task!r} is not a task name")
    elif task not in tasks:
        raise InvalidInputError(f"{where}: task {task!r} is not one of {', '.join(tasks)}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", metric):
        raise InvalidInputError(f"{where}: {metric!r} is not a metric name")


def parse_floors(items: Iterable[str], *, tasks: Collection[str] | None = TASKS) -> Floors:
    """``["segmenter.dice_patient_mean=0.99", ...]`` -> ``{"segmenter": {...: 0.99}}``.
    ``tasks``: the names a floor may be for (None: any task name, checked once the run's
    tasks are known).

    Raises :class:`InvalidInputError` naming the bad item (malformed, unknown task, not a
    finite number, or one metric given twice)."""
    floors: Floors = {}
    for item in items:
        key, eq, raw = item.partition("=")
        task, dot, metric = key.strip().partition(".")
        if not eq or not dot:
            raise InvalidInputError(f"{item!r}: expected TASK.METRIC=VALUE")
        metric = metric.strip()
        _floor_key(task, metric, repr(item), tasks)
        if metric in floors.get(task, {}):
            raise InvalidInputError(f"{item!r}: {task}.{metric} is given twice")
        floors.setdefault(task, {})[metric] = _floor_value(repr(item), raw.strip())
    return floors


def check_floors(floors: Mapping[str, Any] | None, *, tasks: Collection[str] = TASKS) -> Floors:
    """Validate floors as they arrive through the pipeline parameter; a clean copy."""
    checked: Floors = {}
    for task, metrics in (floors or {}).items():
        if not isinstance(metrics, Mapping):
            raise InvalidInputError(f"floors.{task}: expected a mapping of metric to floor")
        for metric, value in metrics.items():
            where = f"floors.{task}.{metric}"
            _floor_key(str(task), str(metric), where, tasks)
            checked.setdefault(str(task), {})[str(metric)] = _floor_value(where, value)
    return checked


def gate_minimums(
    preset: PipelinePreset, task: str, floors: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, float]:
    """The gate's floors for ``task``: the preset's ``minimums`` with this run's over them."""
    return {**preset.minimums.get(task, {}), **check_floors(floors).get(task, {})}


def describe_floors(preset: PipelinePreset, floors: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line per overridden floor: ``segmenter.dice_patient_mean 0.99 (preset tiny: 0)``."""
    lines = []
    for task, metrics in check_floors(floors).items():
        for metric, value in metrics.items():
            was = preset.minimums.get(task, {}).get(metric)
            before = f"{was:g}" if was is not None else "none"
            lines.append(f"{task}.{metric} {value:g} (preset {preset.name}: {before})")
    return lines
