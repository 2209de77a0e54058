"""The pipeline's ``task`` parameter: brain roles or a task document; what the steps read from
a task file (training settings, gate floors, validation), and every problem before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medops.errors import InvalidInputError
from medops.evaluation import segmentation_metrics
from medops.evaluation.stats import segmenter_intervals
from medops.tasks import TaskFileError, read_task
from pipelines.cli import pipeline
from pipelines.local import read_tasks
from pipelines.presets import check_floors, parse_floors
from pipelines.steps import train_config
from pipelines.tasks import encode, floor_key, resolve

ROOT = Path(__file__).resolve().parents[2]
KVASIR = ROOT / "tasks" / "kvasir-polyp-segmenter.yaml"


def test_a_task_document_round_trips_and_names_its_role_model_and_floor_key() -> None:
    spec = read_task(KVASIR)
    found = resolve(encode(spec))
    assert found.spec == spec and found.role == "segmenter" and found.segmenter
    assert found.model == "kvasir-polyp-segmenter" == found.label == floor_key(encode(spec))
    brain = resolve("classifier")
    assert brain.spec is None and brain.model == "brain-tumor-classifier"
    assert floor_key("classifier") == "classifier"


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("segmentr", "neither one of classifier, segmenter, type-classifier"),
        ('{"name": "x"}', "not a valid task document"),
        ("{not json", "not a valid task document"),
    ],
)
def test_a_bad_task_parameter_is_refused_with_what_it_was(task: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        resolve(task)


def test_training_settings_come_from_the_task_file_per_preset() -> None:
    task = encode(read_task(KVASIR))
    fast, full = train_config(task, "fast"), train_config(task, "full")
    assert (fast.task, fast.image_size, full.image_size) == ("segmenter", 128, 256)
    assert fast.channels == (16, 32, 64, 128, 256) and fast.num_res_units == 2
    assert train_config(task, "fast", {"epochs": 3}).epochs == 3
    with pytest.raises(InvalidInputError, match="unknown training settings"):
        train_config(task, "fast", {"epoch": 3})


def test_floors_name_task_files_once_the_run_knows_them() -> None:
    floors = parse_floors(["kvasir-polyp-segmenter.dice_slice_mean=0.9"], tasks=None)
    assert check_floors(floors, tasks=["kvasir-polyp-segmenter"]) == floors
    with pytest.raises(InvalidInputError, match="is not one of kvasir-polyp-segmenter"):
        check_floors({"kvasir-polyps": {"dice": 0.9}}, tasks=["kvasir-polyp-segmenter"])
    with pytest.raises(InvalidInputError, match="not a task name"):
        parse_floors(["Kvasir_Polyps.dice=0.9"], tasks=None)
    with pytest.raises(InvalidInputError, match="is not one of classifier"):
        parse_floors(["kvasir-polyp-segmenter.dice=0.9"])  # the brain pipeline's own names


def test_every_problem_of_the_task_files_and_their_data_comes_before_training(
    tmp_path: Path,
) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(KVASIR.read_text().replace("kvasir-polyp-segmenter", "typo", 2))
    typo.write_text(typo.read_text().replace("modality: ES", "modality: ES\nmodalty: ES"))
    missing = tmp_path / "missing.yaml"
    missing.write_text(KVASIR.read_text().replace("kvasir-polyp-segmenter", "missing", 2))
    missing.write_text(missing.read_text().replace("path: kvasir-seg", "path: nowhere"))
    with pytest.raises(TaskFileError) as raised:
        read_tasks([typo, missing], tmp_path / "data", "refresh")
    found = {(p.file, p.field) for p in raised.value.problems}
    # and the refresh preset, which the Kvasir-SEG file leaves out, has nothing to gate on
    assert found == {
        ("typo.yaml", "modalty"),
        ("missing.yaml", "data.path"),
        ("missing.yaml", "presets.refresh"),
    }


def test_brain_only_options_are_refused_with_a_task() -> None:
    result = CliRunner().invoke(pipeline, ["run", "--task", str(KVASIR), "--hpo", "2"])
    assert result.exit_code == 2 and "--hpo: for the brain pipeline" in result.output


def test_segmenter_intervals_bound_per_group_and_per_slice_means() -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((40, 16, 16), bool)
    truth[:, 4:12, 4:12] = True
    pred = truth.copy()
    pred[rng.random((40, 16, 16)) < 0.3] ^= True
    groups = [f"g{i // 2}" for i in range(40)]
    ev = segmentation_metrics(pred, truth, groups)
    names = ["dice_patient_mean", "iou_patient_mean", "dice_slice_mean", "iou_slice_mean"]
    out = segmenter_intervals(ev, names)
    headline = ev.headline()
    for name in names:
        assert out[f"{name}_ci_low"] < headline[name] < out[f"{name}_ci_high"], name
    with pytest.raises(InvalidInputError, match="a segmenter bounds"):
        segmenter_intervals(ev, ["hd95_mean"])
