"""Shared fixtures: the real data beside the project, and a private MEDOPS_HOME per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEDOPS_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets; their absence is a failure, never a skip."""
    lgg = DATA_DIR / "lgg-mri-segmentation"
    assert lgg.is_dir(), f"real data not found at {DATA_DIR} (set MEDOPS_DATA_DIR)"
    return DATA_DIR


@pytest.fixture(scope="session")
def lgg_dir(data_dir: Path) -> Path:
    return data_dir / "lgg-mri-segmentation"


@pytest.fixture(scope="session")
def fourclass_dir(data_dir: Path) -> Path:
    return data_dir / "brain-tumor-mri-4class" / "Training"


@pytest.fixture
def medops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "medops-home"
    monkeypatch.setenv("MEDOPS_HOME", str(home))
    return home
