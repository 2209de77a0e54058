"""Fixtures for training, evaluation and export tests: one torch thread, synthetic slices."""

from __future__ import annotations

import pytest
import torch
from synthetic_arrays import Arrays, make_arrays


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def arrays() -> Arrays:
    return make_arrays()
