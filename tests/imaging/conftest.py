"""Fixtures for imaging tests: pydicom's bundled DICOM files and one real LGG patient."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medops.imaging import Image, lgg_patient_volume


def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not installed"
    return Path(path)


@pytest.fixture(scope="session")
def dicom_testfile() -> Callable[[str], Path]:
    """Finds a DICOM file shipped with pydicom or pydicom-data (never downloaded)."""
    return _testfile


@pytest.fixture(scope="session")
def lgg_patient_dir(lgg_dir: Path) -> Path:
    """The first LGG patient folder (sorted by name)."""
    folders = sorted(p for p in lgg_dir.iterdir() if p.is_dir())
    assert folders, f"no patient folders in {lgg_dir}"
    return folders[0]


@pytest.fixture(scope="session")
def lgg_volume(lgg_patient_dir: Path) -> Image:
    return lgg_patient_volume(lgg_patient_dir)
