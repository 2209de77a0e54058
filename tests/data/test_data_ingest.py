"""Ingest: layouts, counts on the real data, manifests and content-hash versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from data_constants import LGG_PATIENTS, LGG_SLICES, LggCopy
from PIL import Image as PILImage

from medops.data import Manifest, detect_layout, ingest, load_manifest
from medops.errors import DatasetError, MedopsError

# Measured on the published data (40-patient subset of kaggle_3m) and pinned here; the test
# below also recounts it by a separate route (Pillow bounding boxes of every *_mask.tif).
LGG_TUMOUR_SLICES = 484


def test_lgg_ingest_finds_40_patients_and_1288_slices(lgg_manifest: Manifest) -> None:
    assert lgg_manifest.layout == "lgg"
    assert lgg_manifest.kind == "segmentation"
    assert lgg_manifest.classes == ["no_tumour", "tumour"]
    assert len(lgg_manifest.patients) == LGG_PATIENTS
    assert len(lgg_manifest.samples) == LGG_SLICES
    assert len({s.patient_id for s in lgg_manifest.samples}) == LGG_PATIENTS
    assert all(s.mask is not None for s in lgg_manifest.samples)


def test_lgg_tumour_positive_count_matches_a_second_count_of_non_empty_masks(
    lgg_manifest: Manifest, lgg_dir: Path
) -> None:
    positive = sum(s.label == 1 for s in lgg_manifest.samples)
    # second route: Pillow (not tifffile), straight from the files on disk
    recount = 0
    for mask in lgg_dir.glob("*/*_mask.tif"):
        with PILImage.open(mask) as pic:
            recount += pic.getbbox() is not None
    assert positive == recount == LGG_TUMOUR_SLICES
    assert 0.25 < positive / LGG_SLICES < 0.45  # "about a third" per the data's README
    assert all(s.label in (0, 1) for s in lgg_manifest.samples)


def test_lgg_samples_pair_each_slice_with_its_own_mask(lgg_manifest: Manifest) -> None:
    s = lgg_manifest.by_id["TCGA_CS_4942_19970222/10"]
    assert s.patient_id == "TCGA_CS_4942"
    assert s.image == "TCGA_CS_4942_19970222/TCGA_CS_4942_19970222_10.tif"
    assert s.mask == "TCGA_CS_4942_19970222/TCGA_CS_4942_19970222_10_mask.tif"
    assert s.slice_index is None
    mask = tifffile.imread(lgg_manifest.mask_path(s))
    assert s.label == int(mask.any())
    for sample in lgg_manifest.samples[::97]:
        assert lgg_manifest.image_path(sample).is_file()
        assert sample.mask is not None
        assert sample.mask.removesuffix("_mask.tif") == sample.image.removesuffix(".tif")


def test_lgg_patients_carry_clinical_attributes_from_data_csv(lgg_manifest: Manifest) -> None:
    attrs = lgg_manifest.patients["TCGA_CS_4942"]
    assert attrs["institution"] == "CS"
    assert attrs["age"] == 44.0
    assert attrs["sex"] == "1"
    institutions = {p["institution"] for p in lgg_manifest.patients.values()}
    assert {"CS", "DU", "HT"} <= institutions
    assert all(p.split("_")[1] == a["institution"] for p, a in lgg_manifest.patients.items())


def test_fourclass_ingest_counts_500_pictures_per_class(fourclass_manifest: Manifest) -> None:
    assert fourclass_manifest.layout == "class-folders"
    assert fourclass_manifest.kind == "classification"
    assert fourclass_manifest.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    assert fourclass_manifest.class_counts() == {
        "glioma": 500,
        "meningioma": 500,
        "notumor": 500,
        "pituitary": 500,
    }
    for s in fourclass_manifest.samples[::50]:
        assert s.image.split("/")[0] == fourclass_manifest.classes[s.label]
        assert s.mask is None


def test_byte_identical_pictures_share_one_patient_so_splits_keep_them_together(
    fourclass_manifest: Manifest,
) -> None:
    by_hash: dict[str, set[str]] = {}
    for s in fourclass_manifest.samples:
        by_hash.setdefault(fourclass_manifest.hashes[s.image], set()).add(s.patient_id)
    assert all(len(p) == 1 for p in by_hash.values())
    assert len(fourclass_manifest.patients) == len(by_hash) < 2000
    a = fourclass_manifest.by_id["meningioma/Tr-me_0176.jpg"]
    b = fourclass_manifest.by_id["meningioma/Tr-me_0211.jpg"]
    assert a.patient_id == b.patient_id


def test_manifest_is_saved_under_home_by_name_and_version_and_loads_back(
    lgg_manifest: Manifest, data_home: Path
) -> None:
    path = data_home / "datasets" / "lgg-mri-segmentation" / lgg_manifest.version / "manifest.json"
    assert lgg_manifest.path == path
    assert json.loads(path.read_text())["version"] == lgg_manifest.version
    for source in (path, path.parent, path.parent.parent):
        loaded = load_manifest(source)
        assert loaded == lgg_manifest
        assert loaded.samples == lgg_manifest.samples


def test_version_is_a_16_hex_content_hash_stable_across_ingests_and_locations(
    lgg_copy: LggCopy, tmp_path: Path
) -> None:
    src = lgg_copy(patients=2)
    first = ingest(src, tmp_path / "home-a")
    second = ingest(src, tmp_path / "home-b")
    moved = tmp_path / "elsewhere" / src.name
    shutil.copytree(src, moved)
    third = ingest(moved, tmp_path / "home-a")
    assert len(first.version) == 16 and int(first.version, 16) >= 0
    assert first.version == second.version == third.version
    assert first.hashes == third.hashes


def test_version_changes_when_a_file_changes_is_added_or_removed(
    lgg_copy: LggCopy, tmp_path: Path
) -> None:
    src = lgg_copy(patients=2, slices=[1, 2, 3])
    home = tmp_path / "home"
    base = ingest(src, home).version
    mask_file = next(src.glob("*/*_2_mask.tif"))
    mask = tifffile.imread(mask_file)
    mask[0, 0] = 255 - mask[0, 0]
    tifffile.imwrite(mask_file, mask)
    changed = ingest(src, home).version
    assert changed != base
    extra = next(src.glob("*/*_3.tif"))
    shutil.copyfile(extra, extra.with_name(extra.name.replace("_3.tif", "_4.tif")))
    added = ingest(src, home).version
    assert added not in (base, changed)
    (extra.with_name(extra.name.replace("_3.tif", "_4.tif"))).unlink()
    assert ingest(src, home).version == changed


def test_empty_folder_is_refused_with_a_dataset_error_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(DatasetError, match="nothing-here: empty folder") as info:
        ingest(empty, tmp_path / "home")
    assert info.value.status_code == 400


def test_unknown_layout_missing_path_and_plain_file_are_refused_naming_the_path(
    tmp_path: Path,
) -> None:
    odd = tmp_path / "odd"
    (odd / "sub").mkdir(parents=True)
    (odd / "sub" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="odd: no known dataset layout"):
        detect_layout(odd)
    with pytest.raises(DatasetError, match="missing: no such dataset folder"):
        ingest(tmp_path / "missing", tmp_path / "home")
    (tmp_path / "file.tif").write_bytes(b"xx")
    with pytest.raises(DatasetError, match=r"file\.tif: not a folder"):
        ingest(tmp_path / "file.tif", tmp_path / "home")


def test_dataset_name_defaults_to_the_folder_and_generic_names_take_the_parent(
    fourclass_copy: Path, lgg_copy: LggCopy, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    assert ingest(fourclass_copy, home).name == "fourclass-training"
    assert ingest(fourclass_copy, home, name="Brain MRI 4").name == "brain-mri-4"
    with pytest.raises(MedopsError, match="name"):
        ingest(fourclass_copy, home, name="  ")


def test_lgg_slice_without_mask_gets_unknown_label_and_is_still_ingested(
    lgg_copy: LggCopy, tmp_path: Path
) -> None:
    src = lgg_copy(patients=1, slices=[1, 2])
    next(src.glob("*/*_2_mask.tif")).unlink()
    manifest = ingest(src, tmp_path / "home")
    sample = next(s for s in manifest.samples if s.sample_id.endswith("/2"))
    assert sample.mask is None and sample.label == -1
    assert np.array([s.label for s in manifest.samples]).min() == -1
