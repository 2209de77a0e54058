"""Small seeded synthetic slices: a bright square marks the tumour (label 1) and its mask."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Arrays:
    images: np.ndarray
    masks: np.ndarray | None
    labels: np.ndarray
    sample_ids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)


def make_arrays(n: int = 32, size: int = 32, *, seed: int = 0, patients: int = 4) -> Arrays:
    """Noise slices; every other slice holds a bright square (label 1, mask = the square)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, size=(n, 3, size, size)).astype(np.float32)
    masks = np.zeros((n, 1, size, size), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        if i % 2 == 0:
            side = int(rng.integers(size // 5, size // 3))
            y, x = rng.integers(2, size - side - 2, size=2)
            images[i, :, y : y + side, x : x + side] += 0.6
            masks[i, 0, y : y + side, x : x + side] = 1
            labels[i] = 1
    return Arrays(
        images=np.clip(images, 0, 1),
        masks=masks,
        labels=labels,
        sample_ids=[f"case{i % patients}_{i}" for i in range(n)],
        patient_ids=[f"case{i % patients}" for i in range(n)],
    )
