"""Bad input stops the pipeline early with a clear, typed error and registers nothing."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from medops.errors import DatasetError, RegistryUnavailableError
from medops.registry import Registry
from medops.settings import MedopsSettings
from pipelines.cli import pipeline
from pipelines.local import run_local
from pipelines.steps import train_config


def test_an_unreachable_registry_stops_the_run_before_any_training(
    data_dir: Path, medops_home: Path
) -> None:
    from mlflow_helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        run_local("tiny", data_dir=data_dir, home=medops_home, tracking_uri=url)
    assert time.monotonic() - started < 30
    assert not (medops_home / "pipeline-runs").exists()
    assert not (medops_home / "datasets").exists()


def test_the_cli_reports_an_unreachable_registry_as_an_error(
    data_dir: Path, medops_home: Path
) -> None:
    from mlflow_helpers import free_port

    settings = MedopsSettings(
        home=medops_home, data_dir=data_dir, tracking_uri=f"http://127.0.0.1:{free_port()}"
    )
    result = CliRunner().invoke(pipeline, ["run", "--preset", "tiny"], obj=settings)
    assert result.exit_code != 0
    assert isinstance(result.exception, RegistryUnavailableError)


def test_an_empty_dataset_folder_is_refused_with_its_path(tmp_path: Path) -> None:
    empty = tmp_path / "data" / "lgg-mri-segmentation"
    empty.mkdir(parents=True)
    home = tmp_path / "home"
    with pytest.raises(DatasetError, match="lgg-mri-segmentation"):
        run_local(
            "tiny",
            data_dir=tmp_path / "data",
            home=home,
            tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        )
    assert Registry(f"sqlite:///{home / 'mlflow.db'}").list_models() == []


def test_a_single_class_dataset_is_refused_before_training(lgg_dir: Path, tmp_path: Path) -> None:
    # three real patients, keeping only their slices without tumour
    data = tmp_path / "data" / "lgg-mri-segmentation"
    import numpy as np
    from PIL import Image

    patients = sorted(p for p in lgg_dir.iterdir() if p.is_dir())[:3]
    for patient in patients:
        target = data / patient.name
        target.mkdir(parents=True)
        for mask in sorted(patient.glob("*_mask.tif")):
            if not np.asarray(Image.open(mask)).any():
                image = mask.with_name(mask.name.replace("_mask", ""))
                shutil.copyfile(mask, target / mask.name)
                shutil.copyfile(image, target / image.name)
    home = tmp_path / "home"
    with pytest.raises(DatasetError, match="single-class"):
        run_local(
            "tiny",
            data_dir=tmp_path / "data",
            home=home,
            tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        )
    assert not (home / "pipeline-runs").exists()
    assert Registry(f"sqlite:///{home / 'mlflow.db'}").list_models() == []


def test_unknown_presets_and_training_overrides_are_named_in_the_error() -> None:
    from medops.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="preset"):
        train_config("classifier", "huge")
    with pytest.raises(InvalidInputError, match="learning_rate"):
        train_config("classifier", "tiny", {"learning_rate": 0.1})
    # ints that went through JSON as floats come back as ints
    assert train_config("classifier", "tiny", '{"batch_size": 16.0}').batch_size == 16
