"""Training: configs and presets, the (DDP-capable) loop, weights files.

>>> config = TrainConfig.preset("segmenter", "fast")
>>> result = train_model(config, train_arrays, val_arrays)      # doctest: +SKIP
>>> save_weights(result.model, "segmenter.pt")                  # doctest: +SKIP
"""

from __future__ import annotations

from medops.training.arrays import SliceArrays, check_arrays
from medops.training.config import PRESETS, TASKS, TrainConfig
from medops.training.distributed import train_distributed
from medops.training.loop import TrainResult, build_model, train_model
from medops.training.weights import load_weights, save_weights

__all__ = [
    "PRESETS",
    "TASKS",
    "SliceArrays",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "check_arrays",
    "load_weights",
    "save_weights",
    "train_distributed",
    "train_model",
]
