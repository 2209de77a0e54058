"""What a pipeline step's ``task`` parameter names: one of the brain pipeline's three models
(``classifier``, ``segmenter``, ``type-classifier``), or a whole task file's document.

A task travels through kfp as a string parameter, so the compiled pipeline carries the task
itself (validated JSON), not a path that a cluster's pods would have to see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from medops.errors import InvalidInputError
from medops.tasks import TaskSpec
from pipelines.brain import CLASSIFIER, INTENDED_USE, KNOWN_LIMITS, SEGMENTER, TYPE_CLASSIFIER

Role = Literal["classifier", "segmenter", "type-classifier"]
"""How a model trains and evaluates (``medops.training.TrainConfig.task``): a binary slice
classifier (calibrated, operating point on validation), a segmenter, or a multi-class one."""

BRAIN: dict[str, str] = {
    "classifier": CLASSIFIER,
    "segmenter": SEGMENTER,
    "type-classifier": TYPE_CLASSIFIER,
}
"""The brain pipeline's models by role."""


@dataclass(frozen=True)
class PipelineTask:
    role: Role
    model: str
    """The registered model name."""
    spec: TaskSpec | None = None
    """The task file's declarations; None for the brain pipeline's own three models."""

    @property
    def label(self) -> str:
        """How progress lines and step names call it."""
        return self.model if self.spec is not None else self.role

    @property
    def segmenter(self) -> bool:
        return self.role == "segmenter"

    @property
    def intended_use(self) -> str:
        """What its model cards say it is for."""
        return self.spec.intended_use if self.spec is not None else INTENDED_USE[self.model]

    @property
    def limits(self) -> tuple[str, ...]:
        """Its model cards' own known limits."""
        return tuple(self.spec.limits) if self.spec is not None else KNOWN_LIMITS


def _role(spec: TaskSpec) -> Role:
    if spec.is_segmentation:
        return "segmenter"
    return "classifier" if spec.kind == "binary-classification" else "type-classifier"


def encode(spec: TaskSpec) -> str:
    """The ``task`` parameter that carries ``spec`` through a pipeline."""
    return spec.model_dump_json(exclude_defaults=True)


@lru_cache(maxsize=32)
def resolve(task: str) -> PipelineTask:
    """The task a step's ``task`` parameter names; :class:`InvalidInputError` otherwise."""
    if task in BRAIN:
        return PipelineTask(role=task, model=BRAIN[task])  # type: ignore[arg-type]
    if task.lstrip().startswith("{"):
        try:
            spec = TaskSpec.model_validate(json.loads(task))
        except ValueError as exc:
            raise InvalidInputError(f"task: not a valid task document ({exc})") from None
        return PipelineTask(role=_role(spec), model=spec.models[0], spec=spec)
    raise InvalidInputError(
        f"task: {task[:40]!r} is neither one of {', '.join(BRAIN)} nor a task document"
    )


def floor_key(task: str) -> str:
    """The key of ``--floor TASK.METRIC=VALUE`` for this task: the brain role, or the task
    file's name."""
    found = resolve(task)
    return found.spec.name if found.spec is not None else found.role
