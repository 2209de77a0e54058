"""Fixtures for training, evaluation and export tests: one torch thread, synthetic slices."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from synthetic_arrays import Arrays, make_arrays

TESTS_ROOT = Path(__file__).resolve().parents[1]


def _without_tests_root(paths: list[str]) -> list[str]:
    # pytest puts tests/ on sys.path; a folder there named like a package torch probes for
    # (tests/triton) would shadow it when torch imports its compiler stack
    return [p for p in paths if not p or Path(p).resolve() != TESTS_ROOT]


@pytest.fixture(autouse=True, scope="module")
def _clean_sys_path() -> Iterator[None]:
    saved = list(sys.path)
    sys.path[:] = _without_tests_root(saved)
    yield
    sys.path[:] = saved


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def arrays() -> Arrays:
    return make_arrays()
