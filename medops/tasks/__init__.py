"""Imaging tasks declared as data: one YAML file per task (``tasks/`` holds the shipped ones).

A task file names its registered models, modality, data and layout, labels, how samples are
grouped for splitting, preprocessing, model family, preset overrides, metrics, gate floors and
the decision rule; a chain file names the tasks of a multi-stage analysis. See ``docs/tasks.md``.
"""

from medops.tasks.catalog import (
    Catalog,
    TaskFile,
    TaskFileError,
    data_problems,
    ingest_task,
    load_catalog,
    read_spec,
    read_task,
    task_files,
)
from medops.tasks.schema import ChainSpec, Problem, TaskSpec, TrainOverrides

__all__ = [
    "Catalog",
    "ChainSpec",
    "Problem",
    "TaskFile",
    "TaskFileError",
    "TaskSpec",
    "TrainOverrides",
    "data_problems",
    "ingest_task",
    "load_catalog",
    "read_spec",
    "read_task",
    "task_files",
]
