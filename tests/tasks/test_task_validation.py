"""Bad task files are refused with the file, the field and what was found; ``medops tasks
validate`` and ``medops tasks list`` through the real command group."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from click.testing import CliRunner
from PIL import Image

from medops.cli import cli
from medops.tasks import load_catalog, read_spec

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "tasks"


def _shipped(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SHIPPED / f"{name}.yaml").read_text())
    return loaded


def _write(folder: Path, doc: dict[str, Any], name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _validate(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["tasks", "validate", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _problems(path: Path) -> list[str]:
    _, problems = read_spec(path)
    return [str(p) for p in problems]


def test_shipped_files_validate_with_one_line_each(data_dir: Path) -> None:
    files = sorted(str(p) for p in SHIPPED.glob("*.yaml"))
    code, out, err = _validate(*files, "--check-data", "--data-dir", str(data_dir))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(files) and all(": ok: " in line for line in lines)
    kvasir = next(line for line in lines if line.startswith("kvasir-polyp-segmenter.yaml"))
    # its images/masks layout is read today: no "reader comes later" note any more
    assert "[image-mask-folders])" in kvasir and "later step" not in out
    assert "chain brain-tumor-two-stage: brain-tumor-classifier -> brain-tumor-segmenter" in out


def test_an_unknown_field_is_named_with_its_path(tmp_path: Path) -> None:
    doc = _shipped("brain-tumor-classifier")
    doc["preprocessing"]["sise"] = 128
    path = _write(tmp_path, doc)
    code, out, err = _validate(str(path))
    assert code == 2 and out == ""
    assert err.strip() == (
        "brain-tumor-classifier.yaml: preprocessing.sise: unknown field (found 128)"
    )


def test_a_wrong_type_names_the_field_and_the_value(tmp_path: Path) -> None:
    doc = _shipped("brain-tumor-segmenter")
    doc["preprocessing"]["size"] = "large"
    doc["presets"]["fast"]["floors"]["dice_patient_mean"] = "0.5"
    problems = _problems(_write(tmp_path, doc))
    assert any(
        p.startswith("brain-tumor-segmenter.yaml: preprocessing.size: ") and "'large'" in p
        for p in problems
    ), problems
    assert any("presets.fast.floors.dice_patient_mean: " in p and "'0.5'" in p for p in problems)


def test_a_missing_required_field_and_a_key_given_twice(tmp_path: Path) -> None:
    doc = _shipped("brain-tumor-classifier")
    del doc["decision"]
    assert _problems(_write(tmp_path, doc)) == [
        "brain-tumor-classifier.yaml: decision: required, but missing"
    ]
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: twice\nname: again\n")
    [problem] = _problems(twice)
    assert problem.startswith("twice.yaml: document: not YAML at line 2") and "'name'" in problem


def test_a_missing_data_folder_names_the_file_the_field_and_the_path(tmp_path: Path) -> None:
    doc = _shipped("brain-tumor-classifier")
    doc["data"]["path"] = "no-such-folder"
    path = _write(tmp_path / "tasks", doc)
    # without --check-data the file itself is valid
    assert _validate(str(path))[0] == 0
    code, _, err = _validate(str(path), "--check-data", "--data-dir", str(tmp_path))
    assert code == 2
    wanted = f"brain-tumor-classifier.yaml: data.path: {tmp_path.resolve() / 'no-such-folder'}"
    assert err.startswith(wanted + " not found")


def test_a_layout_that_does_not_match_its_data(tmp_path: Path, data_dir: Path) -> None:
    doc = _shipped("brain-tumor-type-classifier")
    doc["data"]["layout"] = "lgg"
    doc["label"]["source"] = "mask-present"
    doc["groups"]["by"] = "patient"
    doc["label"]["kind"] = "binary-classification"
    doc["label"]["classes"] = ["no_tumour", "tumour"]
    doc["decision"] = {"rule": "threshold", "positive_class": "tumour", "threshold": 0.5}
    doc["metrics"] = ["accuracy"]
    doc["intervals"] = []
    for preset in doc["presets"].values():
        preset["floors"] = {"accuracy": 0.0}
        preset["tolerance"] = {}
    path = _write(tmp_path, doc)
    code, _, err = _validate(str(path), "--check-data", "--data-dir", str(data_dir))
    assert code == 2
    assert "brain-tumor-type-classifier.yaml: data.layout: declared lgg, but " in err
    assert "reads as class-folders" in err


def _pair_dataset(root: Path, images: list[str], masks: list[str]) -> Path:
    for folder, names in (("images", images), ("masks", masks)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / folder / f"{name}.jpg")
    return root


def test_images_without_masks_and_groups_naming_absent_images(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _pair_dataset(data / "kvasir-seg", ["a1", "b2", "c3"], ["a1"])
    doc = _shipped("kvasir-polyp-segmenter")
    path = _write(tmp_path / "tasks", doc)
    code, _, err = _validate(str(path), "--check-data", "--data-dir", str(data))
    assert code == 2
    assert "kvasir-polyp-segmenter.yaml: data.masks: 2 of 3 images have no mask" in err
    assert "(e.g. b2.jpg, c3.jpg)" in err
    # masks complete: now the near-duplicate groups name frames this copy lacks
    shutil.rmtree(data / "kvasir-seg" / "masks")
    _pair_dataset(data / "kvasir-seg", [], ["a1", "b2", "c3"])
    code, _, err = _validate(str(path), "--check-data", "--data-dir", str(data))
    assert code == 2 and "groups.together[0]: cju30bmab08bi0835mvlr6e0r" in err


def test_an_images_masks_pair_declared_as_class_folders_is_named(tmp_path: Path) -> None:
    data = _pair_dataset(tmp_path / "data" / "kvasir-seg", ["a1"], ["a1"])
    doc = _shipped("brain-tumor-type-classifier")
    doc["data"]["path"] = "kvasir-seg"
    doc["label"]["classes"] = ["a", "b", "c"]
    path = _write(tmp_path / "tasks", doc)
    code, _, err = _validate(str(path), "--check-data", "--data-dir", str(data.parent))
    assert code == 2
    assert "data.layout: declared class-folders, but " in err and "image-mask-folders" in err


def test_a_class_list_that_does_not_fit_the_label_kind(tmp_path: Path) -> None:
    doc = _shipped("brain-tumor-classifier")
    doc["label"]["classes"] = ["no_tumour", "tumour", "maybe"]
    doc["decision"]["positive_class"] = "maybe"
    assert _problems(_write(tmp_path, doc)) == [
        "brain-tumor-classifier.yaml: label.classes: binary-classification needs exactly 2 "
        "classes (negative, then positive), found 3: ['no_tumour', 'tumour', 'maybe']"
    ]
    seg = _shipped("brain-tumor-segmenter")
    seg["label"]["classes"] = ["tumour", "oedema"]
    assert _problems(_write(tmp_path, seg)) == [
        "brain-tumor-segmenter.yaml: label.classes: binary-segmentation needs exactly 1 "
        "foreground class, found 2: ['tumour', 'oedema']"
    ]


def test_a_class_list_other_than_the_class_folders(tmp_path: Path, data_dir: Path) -> None:
    doc = _shipped("brain-tumor-type-classifier")
    doc["label"]["classes"] = ["glioma", "meningioma", "pituitary"]
    path = _write(tmp_path, doc)
    code, _, err = _validate(str(path), "--check-data", "--data-dir", str(data_dir))
    assert code == 2
    assert "label.classes: ['glioma', 'meningioma', 'pituitary'] differs from the class " in err


def test_rules_across_fields(tmp_path: Path) -> None:
    doc = _shipped("brain-tumor-classifier")
    doc["decision"]["positive_class"] = "no_tumour"
    doc["presets"]["fast"]["floors"]["dice"] = 0.5
    doc["model"]["channels"] = [8, 16]
    problems = _problems(_write(tmp_path, doc))
    file = "brain-tumor-classifier.yaml"
    assert f"{file}: model.channels: not a setting of the resnet family" in problems
    floor = f"{file}: presets.fast.floors.dice: dice is not one of"
    assert any(p.startswith(floor) for p in problems)
    positive = f"{file}: decision.positive_class: 'no_tumour' must be the last"
    assert any(p.startswith(positive) for p in problems)


def test_a_chain_naming_a_task_that_does_not_exist(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    _write(folder, _shipped("brain-tumor-classifier"))
    chain = _shipped("brain-tumor-two-stage")
    chain["chain"]["segmenter"] = "brain-tumor-segmentr"
    path = _write(folder, chain)
    code, out, err = _validate(str(path))
    assert code == 2 and out == ""
    assert err.strip() == (
        "brain-tumor-two-stage.yaml: chain.segmenter: no task named brain-tumor-segmentr "
        "(known tasks: brain-tumor-classifier)"
    )
    # a task of the wrong kind for its step
    chain["chain"]["segmenter"] = "brain-tumor-classifier"
    _write(folder, chain)
    code, _, err = _validate(str(path))
    assert code == 2 and "chain.segmenter: brain-tumor-classifier is binary-classification" in err


def test_duplicate_model_names_across_task_files(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    _write(folder, _shipped("brain-tumor-classifier"))
    other = _shipped("brain-tumor-type-classifier")
    other["models"] = ["brain-tumor-type-classifier", "brain-tumor-classifier"]
    path = _write(folder, other)
    code, _, err = _validate(str(path))
    assert code == 2
    assert err.strip() == (
        "brain-tumor-type-classifier.yaml: models[1]: brain-tumor-classifier is also a model "
        "of task brain-tumor-classifier (brain-tumor-classifier.yaml)"
    )
    _, problems = load_catalog(sorted(folder.glob("*.yaml")))
    assert [p.field for p in problems] == ["models[1]"]


def test_list_shows_kind_models_data_presence_and_chain(tmp_path: Path, data_dir: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["tasks", "list", "--dir", str(SHIPPED), "--data-dir", str(data_dir)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["brain-tumor-classifier"] == [
        "brain-tumor-classifier",
        "binary-classification",
        "brain-tumor-classifier",
        "lgg-mri-segmentation",
        "(present)",
        "brain-tumor-two-stage",
    ]
    assert rows["kvasir-polyp-segmenter"][3:5] == ["kvasir-seg", "(present)"]
    assert rows["brain-tumor-two-stage"][1] == "chain"
    missing = CliRunner().invoke(
        cli, ["tasks", "list", "--dir", str(SHIPPED), "--data-dir", str(tmp_path)]
    )
    assert "lgg-mri-segmentation (missing)" in missing.stdout
