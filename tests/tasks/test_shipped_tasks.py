"""The shipped task files say exactly what the code does today, so the code can switch to
reading them without changing behaviour: names, data folders, classes, training settings per
preset, gate floors and tolerances, intervals, preprocessing and the two-stage chain."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from medops.clinical import Chain
from medops.data.arrays import CHANNELS
from medops.data.layouts import LAYOUTS, SEGMENTATION_CLASSES, detect_layout, scan
from medops.errors import DatasetError
from medops.tasks import Catalog, TaskSpec, load_catalog, task_files
from medops.tasks.schema import Layout, PresetName, TrainOverrides
from medops.training import TrainConfig
from medops.transforms import preprocess_slice
from pipelines import local, steps
from pipelines.brain import BRAIN_MODELS, CLASSIFIER, SEGMENTER
from pipelines.presets import PRESETS, TASKS

ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = ROOT / "tasks"
CODE_TASK = {model: task for task, model in steps.TASK_MODEL.items()}
"""Registered model name -> the pipeline's task key (classifier, segmenter, type-classifier)."""


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    found, problems = load_catalog(task_files(TASKS_DIR))
    assert problems == []
    return found


def _brain(catalog: Catalog) -> list[TaskSpec]:
    return [t for t in catalog.tasks() if t.models[0] in BRAIN_MODELS]


def test_every_brain_model_has_its_task_file_and_nothing_else_claims_them(catalog: Catalog) -> None:
    brain = _brain(catalog)
    assert sorted(t.models[0] for t in brain) == sorted(BRAIN_MODELS)
    for spec in brain:
        assert spec.name == spec.models[0] and spec.models == [spec.models[0]]
        assert spec.modality == "MR"
    assert set(CODE_TASK.values()) == set(TASKS)


def test_data_folders_and_layouts_are_the_pipelines(catalog: Catalog, data_dir: Path) -> None:
    folders = {
        "classifier": local.LGG_DIR,
        "segmenter": local.LGG_DIR,
        "type-classifier": local.FOURCLASS_DIR,
    }
    for spec in _brain(catalog):
        assert spec.data.path == folders[CODE_TASK[spec.name]]
        assert detect_layout(data_dir / spec.data.path) == spec.data.layout


def test_classes_are_the_ones_exported(catalog: Catalog, data_dir: Path) -> None:
    fourclass = scan(data_dir / local.FOURCLASS_DIR, "class-folders", lambda rel: rel)
    exported = {
        "classifier": SEGMENTATION_CLASSES,  # the LGG manifest's classes
        "segmenter": ["tumour"],  # steps.export: one foreground channel
        "type-classifier": fourclass.classes,
    }
    for spec in _brain(catalog):
        assert spec.label.classes == exported[CODE_TASK[spec.name]], spec.name


@pytest.mark.parametrize("preset", list(PRESETS))
def test_training_settings_per_preset_are_the_codes(catalog: Catalog, preset: str) -> None:
    chosen = PRESETS[preset]
    for spec in _brain(catalog):
        task = CODE_TASK[spec.name]
        today = TrainConfig.preset(task, chosen.train_preset, **chosen.overrides.get(task, {}))  # type: ignore[arg-type]
        declared = TrainConfig.preset(task, chosen.train_preset, **spec.train_overrides(preset))  # type: ignore[arg-type]
        assert declared == today, (spec.name, preset)
        # and the size is the one preprocessing gets
        assert spec.preprocess_kwargs(preset)["size"] == today.image_size


@pytest.mark.parametrize("preset", list(PRESETS))
def test_gate_floors_and_tolerances_per_preset_are_the_codes(catalog: Catalog, preset: str) -> None:
    chosen = PRESETS[preset]
    tolerance_today = chosen.tolerance
    for spec in _brain(catalog):
        task = CODE_TASK[spec.name]
        declared = spec.presets[preset]  # type: ignore[index]
        assert declared.floors == chosen.minimums[task], (spec.name, preset)
        assert declared.tolerance == tolerance_today[task], (spec.name, preset)
    assert set(PresetName.__args__) == set(PRESETS)  # type: ignore[attr-defined]


def test_intervals_and_decision_rules_are_the_codes(catalog: Catalog) -> None:
    rules = {"classifier": "threshold", "segmenter": "pixel-threshold", "type-classifier": "argmax"}
    for spec in _brain(catalog):
        task = CODE_TASK[spec.name]
        assert tuple(spec.intervals) == steps.INTERVAL_METRICS[task]
        assert spec.decision.rule == rules[task]
    classifier = catalog.task(CLASSIFIER)
    # the plane flags a slice at P(last class) >= threshold: the positive class is last
    assert classifier.decision.positive_class == classifier.label.classes[-1] == "tumour"


def test_preprocessing_is_the_one_training_and_serving_call(catalog: Catalog) -> None:
    rng = np.random.default_rng(0)
    slice_ = rng.integers(0, 256, size=(3, 64, 48), dtype=np.uint8)
    for spec in _brain(catalog):
        assert spec.preprocessing.channels == CHANNELS
        kwargs = spec.preprocess_kwargs("fast")
        declared = preprocess_slice(slice_, **kwargs)  # type: ignore[arg-type]
        np.testing.assert_array_equal(declared, preprocess_slice(slice_, 128))


def test_the_chain_is_the_gateways(catalog: Catalog) -> None:
    classifier, segmenter = catalog.chain_models("brain-tumor-two-stage")
    # the gateway reads this file at start: its default chain (GatewaySettings.default_chain)
    assert Chain(classifier=classifier, segmenter=segmenter) == Chain(CLASSIFIER, SEGMENTER)


def test_preset_overrides_name_real_training_fields() -> None:
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(TrainOverrides.model_fields) <= fields


def test_the_readable_layouts_are_the_ones_scan_reads(tmp_path: Path) -> None:
    assert set(LAYOUTS) == set(get_args(Layout))  # every layout a task declares is read
    for layout in LAYOUTS:
        with pytest.raises(DatasetError):  # read, and found empty: not an unknown layout
            scan(tmp_path, layout, lambda rel: rel)
    with pytest.raises(KeyError):
        scan(tmp_path, "png-folders", lambda rel: rel)


def test_kvasir_task_validates_against_its_data(catalog: Catalog, data_dir: Path) -> None:
    from medops.tasks import data_problems

    spec = catalog.task("kvasir-polyp-segmenter")
    assert data_problems(spec, "kvasir-polyp-segmenter.yaml", data_dir) == []
    assert spec.trainable and spec.label.mask_threshold == 128
    assert len(spec.groups.together) == 4
    for brain in _brain(catalog):
        assert brain.trainable
        assert data_problems(brain, f"{brain.name}.yaml", data_dir) == []
