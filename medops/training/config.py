"""Training configuration and its presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from medops.errors import InvalidInputError

Task = Literal["classifier", "segmenter", "type-classifier"]
Preset = Literal["tiny", "fast", "full"]
TASKS: tuple[str, ...] = ("classifier", "segmenter", "type-classifier")
PRESETS: tuple[str, ...] = ("tiny", "fast", "full")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run: equal configs and data give identical weights."""

    task: Task
    """classifier (tumour yes/no), type-classifier (tumour type) or segmenter (tumour mask)."""
    image_size: int = 128
    """Side of the square input slices; the arrays must already have this size."""
    epochs: int = 10
    batch_size: int = 16
    """Global batch: train_distributed splits it evenly over the processes."""
    lr: float = 1e-3
    """Peak learning rate of the one-cycle schedule (AdamW)."""
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 4
    """Stop after this many epochs without a better validation metric; 0 disables early stopping."""
    num_classes: int = 2
    arch: str = "resnet18"
    """Classifier: resnet10, resnet18 or resnet34."""
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    """Classifier stage widths."""
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    """Segmenter (ResUNet) level widths."""
    num_res_units: int = 2
    augment: bool = True
    """MONAI flips, small affine, intensity scale/shift, gaussian noise (image and mask alike)."""
    loss: Literal["dice_bce", "dice_focal"] = "dice_bce"
    """Segmenter loss; classifiers use cross-entropy."""
    test_time_flip: bool = False
    """Evaluate and serve the average of the image's and its mirror image's logits."""
    warm_start: str | None = None
    """A local state_dict file to start from; tensors of another shape (a new head) stay fresh."""
    freeze_epochs: int = 0
    """After a warm start, train only the head (classifier fc / segmenter decoder) for this many
    epochs, then unfreeze everything. Ignored without a warm start."""
    candidates: int = 1
    """Train this many networks (seeds seed, seed + 1, ...) and keep the one with the best
    validation metric: a run that settles in a poor solution shows it on validation, and
    picking among a few makes the kept model depend far less on the seed and the CPU."""
    output_prior: bool = False
    """Segmenter: start the output at the training masks' foreground share (log-odds), so the
    first epochs learn the tumour instead of the background (see ``start_at_prior``): a
    shorter schedule for a tight budget. The presets keep it off: cross-validated, 20 and 30
    epochs with it gave 0.755 and 0.762 served Dice against 0.767 for the fast preset's 30
    without (README)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training arithmetic: fp32, or bf16 mixed precision (the forward pass autocast to bf16;
    weights, optimiser and loss in fp32), fast on GPUs and CPUs with bf16 matrix units (AMX).
    Validation, export and serving are fp32 either way. The presets keep fp32: cross-validated
    on an AMX CPU, bf16 steps took 0.6 of the time for 0.05 less served Dice (README)."""
    num_threads: int = 2
    max_steps_per_epoch: int | None = None
    """Cap on optimiser steps per epoch (tiny test runs)."""
    device: str = "cpu"
    """cpu, cuda, or auto (cuda when available)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.task not in TASKS:
            problems.append(f"task: {self.task!r} is not one of {list(TASKS)}")
        for field in ("image_size", "epochs", "batch_size", "num_threads", "candidates"):
            if getattr(self, field) < 1:
                problems.append(f"{field}: must be at least 1, got {getattr(self, field)}")
        if not (self.lr > 0) or math.isnan(self.lr):
            problems.append(f"lr: must be positive, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.patience < 0 or self.freeze_epochs < 0:
            problems.append("patience and freeze_epochs must be >= 0")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            problems.append(f"max_steps_per_epoch: must be >= 1, got {self.max_steps_per_epoch}")
        if self.loss not in ("dice_bce", "dice_focal"):
            problems.append(f"loss: {self.loss!r} is not dice_bce or dice_focal")
        if self.precision not in ("fp32", "bf16"):
            problems.append(f"precision: {self.precision!r} is not fp32 or bf16")
        if self.device not in ("cpu", "cuda", "auto"):
            problems.append(f"device: {self.device!r} is not cpu, cuda or auto")
        if self.task == "segmenter":
            multiple = 2 ** (len(self.channels) - 1)
            if self.image_size % multiple:
                problems.append(
                    f"image_size: {self.image_size} is not a multiple of {multiple} "
                    f"(needed by {len(self.channels)} segmenter levels)"
                )
        elif self.num_classes < 2:
            problems.append(f"num_classes: need at least 2, got {self.num_classes}")
        if problems:
            raise InvalidInputError("invalid training config: " + "; ".join(problems))

    @property
    def is_segmenter(self) -> bool:
        return self.task == "segmenter"

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_params(self) -> dict[str, str | int | float | bool]:
        """Flat parameters for experiment tracking (tuples joined with '-')."""
        out: dict[str, str | int | float | bool] = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, tuple | list):
                value = "-".join(str(v) for v in value)
            out[key] = "" if value is None else value
        return out

    @classmethod
    def preset(cls, task: Task, name: Preset = "fast", **overrides: Any) -> TrainConfig:
        """A named preset for ``task``.

        tiny: seconds, for tests. fast: the whole fast pipeline (pretraining, both models,
        evaluation, export, 40 LGG patients) in about 10 minutes on 2 CPU cores: 128 px slices,
        a ResNet18 with half widths, a 16-256 ResUNet, both served with left-right flip
        averaging. full: the data's native 256 px and longer schedules.
        """
        if task not in TASKS:
            raise InvalidInputError(f"task: {task!r} is not one of {list(TASKS)}")
        if name not in PRESETS:
            raise InvalidInputError(f"preset: {name!r} is not one of {list(PRESETS)}")
        num_classes = 4 if task == "type-classifier" else 2
        base: dict[str, Any] = {"task": task, "num_classes": num_classes}
        if name == "tiny":
            base |= dict(
                image_size=32,
                epochs=2,
                batch_size=8,
                lr=3e-3,
                patience=0,
                arch="resnet10",
                widths=(8, 16, 32, 64),
                channels=(8, 16, 32),
                num_res_units=1,
                num_threads=1,
                max_steps_per_epoch=4,
            )
        else:
            # fast: 128 px, the whole fast pipeline in about 10 minutes on 2 cores;
            # full: the data's native 256 px and longer schedules
            full = name == "full"
            base |= dict(image_size=256 if full else 128, test_time_flip=True)
            if task == "segmenter":
                # long patience: validation Dice is noisy in the middle of the one-cycle schedule
                base |= dict(
                    epochs=40 if full else 30,
                    batch_size=16,
                    lr=3e-3,
                    patience=12 if full else 10,
                )
            else:
                base |= dict(
                    epochs=25 if full else 12,
                    batch_size=32,
                    lr=2e-3,
                    patience=8 if full else 5,
                    arch="resnet18",
                    widths=(32, 64, 128, 256),
                    freeze_epochs=1,  # after a pretrained start: the new head first
                )
                if task == "classifier":
                    # one seed in five landed far below the rest on held-out patients
                    base |= dict(candidates=2)
        return cls(**(base | overrides))
