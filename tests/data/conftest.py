"""Fixtures for the dataset tests: the real LGG and 4-class data, and small copies to break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from data_constants import LggCopy

from medops.data import Manifest, ingest


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MEDOPS_HOME shared by the tests that only read the full datasets."""
    return tmp_path_factory.mktemp("data-home")


@pytest.fixture(scope="session")
def lgg_manifest(lgg_dir: Path, data_home: Path) -> Manifest:
    return ingest(lgg_dir, data_home)


@pytest.fixture(scope="session")
def fourclass_manifest(fourclass_dir: Path, data_home: Path) -> Manifest:
    return ingest(fourclass_dir, data_home)


def _copy_lgg(lgg_dir: Path, dst: Path, patients: int, slices: list[int] | None) -> Path:
    dst.mkdir(parents=True)
    folders = sorted(d for d in lgg_dir.iterdir() if d.is_dir())[:patients]
    for folder in folders:
        (dst / folder.name).mkdir()
        for f in folder.iterdir():
            n = f.name.removesuffix("_mask.tif").removesuffix(".tif").rsplit("_", 1)[-1]
            if slices is None or int(n) in slices:
                shutil.copyfile(f, dst / folder.name / f.name)
    shutil.copyfile(lgg_dir / "data.csv", dst / "data.csv")
    return dst


@pytest.fixture
def lgg_copy(lgg_dir: Path, tmp_path: Path) -> LggCopy:
    """``lgg_copy(patients=2, slices=[...])``: a small LGG copy in tmp_path, safe to break."""
    counter = iter(range(100))

    def make(patients: int = 2, slices: list[int] | None = None) -> Path:
        return _copy_lgg(lgg_dir, tmp_path / f"lgg-copy-{next(counter)}", patients, slices)

    return make


@pytest.fixture
def fourclass_copy(fourclass_dir: Path, tmp_path: Path) -> Path:
    """Four class folders of 3 real pictures each."""
    dst = tmp_path / "fourclass" / "Training"
    for cls in sorted(d for d in fourclass_dir.iterdir() if d.is_dir()):
        (dst / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:3]:
            shutil.copyfile(f, dst / cls.name / f.name)
    return dst
