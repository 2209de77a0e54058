"""Validation: the real data passes; each kind of broken dataset is caught, naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from data_constants import LGG_SLICES, LggCopy

from medops.data import Manifest, Splits, ValidationReport, ingest, split_dataset, validate


def _issues(report: ValidationReport, code: str) -> list[str]:
    return [i.message for i in report.issues if i.code == code]


def _mask_file(root: Path, n: int, patient: int = 0) -> Path:
    folder = sorted(d for d in root.iterdir() if d.is_dir())[patient]
    return folder / f"{folder.name}_{n}_mask.tif"


def _image_file(root: Path, n: int, patient: int = 0) -> Path:
    folder = sorted(d for d in root.iterdir() if d.is_dir())[patient]
    return folder / f"{folder.name}_{n}.tif"


def test_real_lgg_data_validates_clean_with_its_split(lgg_manifest: Manifest) -> None:
    report = validate(lgg_manifest, split_dataset(lgg_manifest, seed=0))
    assert report.ok, report.to_text()
    assert report.issues == []
    assert report.stats["samples"] == LGG_SLICES
    assert report.stats["image_shapes"] == {"256x256x3": LGG_SLICES}
    assert report.stats["dtypes"] == {"uint8": LGG_SLICES}
    assert report.stats["intensity"] == {"min": 0.0, "max": 255.0}
    splits = report.stats["splits"]
    assert sum(s["samples"] for s in splits.values()) == LGG_SLICES
    assert sum(s["positive"] for s in splits.values()) == report.stats["positive_samples"]


def test_real_fourclass_data_passes_with_its_duplicates_reported_as_warnings(
    fourclass_manifest: Manifest,
) -> None:
    report = validate(fourclass_manifest, split_dataset(fourclass_manifest, seed=0))
    assert report.ok, report.to_text()
    assert report.codes() == {"duplicate-image"}
    assert report.stats["duplicate_groups"] == len(report.warnings) == 19
    assert any(
        "Tr-me_0176.jpg and meningioma/Tr-me_0211.jpg" in m
        for m in _issues(report, "duplicate-image")
    )


def test_mask_of_another_size_than_its_image_is_an_error_naming_both(
    lgg_copy: LggCopy, tmp_path: Path
) -> None:
    src = lgg_copy(patients=1, slices=[1, 2])
    bad = _mask_file(src, 2)
    tifffile.imwrite(bad, np.zeros((128, 128), np.uint8))
    report = validate(ingest(src, tmp_path / "home"))
    assert not report.ok
    (message,) = _issues(report, "size-mismatch")
    assert bad.name in message and "128x128" in message and "256x256" in message
    assert "size-mismatch" in report.to_text() and "FAILED" in report.to_text()


def test_mask_with_more_than_two_values_is_not_binary(lgg_copy: LggCopy, tmp_path: Path) -> None:
    src = lgg_copy(patients=1, slices=[1, 2])
    bad = _mask_file(src, 1)
    mask = np.zeros((256, 256), np.uint8)
    mask[10:20, 10:20], mask[30:40, 30:40] = 128, 255
    tifffile.imwrite(bad, mask)
    report = validate(ingest(src, tmp_path / "home"))
    (message,) = _issues(report, "non-binary-mask")
    assert bad.name in message and "3 values" in message and "128" in message
    assert not report.ok


def test_slice_without_its_mask_and_mask_without_its_slice_are_pairing_errors(
    lgg_copy: LggCopy, tmp_path: Path
) -> None:
    src = lgg_copy(patients=1, slices=[1, 2, 3])
    _mask_file(src, 2).unlink()
    _image_file(src, 3).unlink()
    report = validate(ingest(src, tmp_path / "home"))
    (missing_mask,) = _issues(report, "missing-mask")
    assert _image_file(src, 2).name in missing_mask
    (missing_image,) = _issues(report, "missing-image")
    assert _mask_file(src, 3).name in missing_image and _image_file(src, 3).name in missing_image
    assert not report.ok


def test_duplicate_image_is_a_warning_within_a_split_and_an_error_across_splits(
    lgg_copy: LggCopy, tmp_path: Path
) -> None:
    src = lgg_copy(patients=2, slices=[1, 2])
    shutil.copyfile(_image_file(src, 2, patient=0), _image_file(src, 2, patient=1))
    manifest = ingest(src, tmp_path / "home")
    a, b = sorted(manifest.patients)
    alone = validate(manifest)
    (warning,) = _issues(alone, "duplicate-image")
    assert _image_file(src, 2, 0).name in warning and _image_file(src, 2, 1).name in warning
    assert alone.ok
    across = validate(manifest, Splits(train=[a], val=[], test=[b]))
    (error,) = _issues(across, "duplicate-across-splits")
    assert "train and test" in error and _image_file(src, 2, 1).name in error
    assert not across.ok


def test_patient_in_two_splits_is_reported_as_leakage(lgg_copy: LggCopy, tmp_path: Path) -> None:
    src = lgg_copy(patients=2, slices=[1])
    manifest = ingest(src, tmp_path / "home")
    a, b = sorted(manifest.patients)
    report = validate(manifest, Splits(train=[a, b], val=[], test=[a]))
    (message,) = _issues(report, "patient-leakage")
    assert a in message and "train and test" in message
    assert not report.ok
    clean = validate(manifest, Splits(train=[a], val=[], test=[b]))
    assert clean.ok and "patient-leakage" not in clean.codes()
    unknown = validate(manifest, Splits(train=[a, b, "TCGA_XX_0000"], val=[], test=[]))
    assert "unknown-patient" in unknown.codes() and not unknown.ok


def test_empty_folders_are_reported_and_an_empty_class_is_an_error(
    lgg_copy: LggCopy, fourclass_copy: Path, tmp_path: Path
) -> None:
    src = lgg_copy(patients=1, slices=[1])
    (src / "TCGA_XX_0000_20000101").mkdir()
    report = validate(ingest(src, tmp_path / "home"))
    assert _issues(report, "empty-folder") == ["TCGA_XX_0000_20000101/ is empty"]
    assert report.ok  # a stray empty patient folder loses nothing
    (fourclass_copy / "astrocytoma").mkdir()
    classes = validate(ingest(fourclass_copy, tmp_path / "home"))
    assert _issues(classes, "empty-folder") == ["class folder astrocytoma/ holds no pictures"]
    assert not classes.ok


def test_non_image_files_are_reported_and_undecodable_pictures_are_errors(
    fourclass_copy: Path, tmp_path: Path
) -> None:
    (fourclass_copy / "glioma" / "notes.txt").write_text("scanner settings")
    (fourclass_copy / "glioma" / "fake.jpg").write_bytes(b"this is not a JPEG at all")
    head = (fourclass_copy / "pituitary").iterdir().__next__()
    truncated = fourclass_copy / "pituitary" / "truncated.jpg"
    truncated.write_bytes(head.read_bytes()[:600])
    report = validate(ingest(fourclass_copy, tmp_path / "home"))
    assert _issues(report, "non-image-file") == [
        "glioma/notes.txt is not an image; it was not ingested"
    ]
    unreadable = _issues(report, "unreadable-image")
    assert len(unreadable) == 2
    assert any(m.startswith("glioma/fake.jpg: cannot decode image") for m in unreadable)
    assert any(m.startswith("pituitary/truncated.jpg: cannot decode image") for m in unreadable)
    assert not report.ok


def test_file_changed_after_ingest_is_reported(lgg_copy: LggCopy, tmp_path: Path) -> None:
    src = lgg_copy(patients=1, slices=[1, 2])
    manifest = ingest(src, tmp_path / "home")
    image = _image_file(src, 1)
    pixels = tifffile.imread(image)
    tifffile.imwrite(image, 255 - pixels)
    report = validate(manifest)
    (message,) = _issues(report, "changed-file")
    assert image.name in message
    _mask_file(src, 2).unlink()
    gone = validate(manifest)
    assert any(_mask_file(src, 2).name in m for m in _issues(gone, "missing-file"))


def test_second_validation_reuses_decoded_facts_but_still_sees_changes(
    lgg_copy: LggCopy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medops.data.validation as module

    src = lgg_copy(patients=1, slices=[1, 2, 3])
    manifest = ingest(src, tmp_path / "home")
    calls: list[str] = []
    real = module.decode_2d

    def counting(data: bytes, name: str) -> np.ndarray:
        calls.append(name)
        return real(data, name)

    monkeypatch.setattr(module, "decode_2d", counting)
    first = validate(manifest)
    # one decode per distinct content: empty masks are byte-identical and decoded once
    distinct_masks = {manifest.hashes[s.mask] for s in manifest.samples if s.mask}
    assert len(calls) == 3 + len(distinct_masks) < 6
    calls.clear()
    second = validate(manifest)
    assert calls == [] and second.to_dict() == first.to_dict()
    mask = _mask_file(src, 1)
    values = np.zeros((256, 256), np.uint8)
    values[0, :3] = [1, 2, 3]
    tifffile.imwrite(mask, values)
    third = validate(manifest)
    assert calls == [f"{mask.parent.name}/{mask.name}"]
    assert {"changed-file", "non-binary-mask"} <= third.codes()


def test_slice_file_holding_a_stack_instead_of_a_picture_is_unreadable(
    lgg_copy: LggCopy, tmp_path: Path
) -> None:
    src = lgg_copy(patients=1, slices=[1, 2])
    stack = _image_file(src, 2)
    tifffile.imwrite(stack, np.zeros((10, 64, 64), np.uint8))
    report = validate(ingest(src, tmp_path / "home"))
    (message,) = _issues(report, "unreadable-image")
    assert message.startswith(f"{stack.parent.name}/{stack.name}: expected a 2D image")
    assert "(10, 64, 64)" in message and not report.ok
