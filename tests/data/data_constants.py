"""Constants and builders shared by the dataset tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

LGG_PATIENTS = 40
LGG_SLICES = 1288

LggCopy = Callable[..., Path]
"""``lgg_copy(patients=2, slices=[...])`` -> the root of a small LGG copy."""
