"""Preprocessed arrays: shapes, dtypes, ranges, the training/serving contract and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from data_constants import LggCopy

from medops.data import Manifest, cache_dir, ingest, load_arrays
from medops.data.reading import read_2d
from medops.errors import DatasetError, InvalidInputError
from medops.transforms import preprocess_slice, resize_mask


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import medops.data.arrays as module

    calls: list[str] = []
    real = module.read_2d

    def counting(path: Path, name: str | None = None) -> np.ndarray:
        calls.append(str(name))
        return real(path, name)

    monkeypatch.setattr(module, "read_2d", counting)
    return calls


def test_lgg_arrays_have_the_documented_shapes_dtypes_and_ranges(
    lgg_manifest: Manifest, tmp_path: Path
) -> None:
    ids = [s.sample_id for s in lgg_manifest.samples[200:260]]
    arrays = load_arrays(lgg_manifest, ids, size=64, home=tmp_path)
    assert arrays.images.shape == (60, 3, 64, 64) and arrays.images.dtype == np.float32
    assert arrays.masks is not None
    assert arrays.masks.shape == (60, 1, 64, 64) and arrays.masks.dtype == np.uint8
    assert arrays.labels.shape == (60,) and arrays.labels.dtype == np.int64
    assert arrays.images.min() >= 0.0 and arrays.images.max() <= 1.0
    assert arrays.images.max() > 0.95  # percentile scaling spans the range
    assert set(np.unique(arrays.masks)) <= {0, 1}
    assert arrays.sample_ids == ids
    assert arrays.patient_ids == [lgg_manifest.by_id[i].patient_id for i in ids]
    assert arrays.labels.tolist() == [lgg_manifest.by_id[i].label for i in ids]
    assert 0 < arrays.labels.sum() < 60
    # a slice with no tumour has an empty mask; large tumours survive the resize
    assert not arrays.masks[arrays.labels == 0].any()


def test_arrays_are_exactly_the_shared_transforms_of_each_slice(
    lgg_manifest: Manifest, tmp_path: Path
) -> None:
    ids = [lgg_manifest.samples[i].sample_id for i in (700, 5, 333)]  # unsorted on purpose
    arrays = load_arrays(lgg_manifest, ids, size=96, home=tmp_path)
    for row, sid in enumerate(ids):
        s = lgg_manifest.by_id[sid]
        image = read_2d(lgg_manifest.image_path(s))
        mask = read_2d(lgg_manifest.root / str(s.mask))[0]
        np.testing.assert_array_equal(arrays.images[row], preprocess_slice(image, 96))
        assert arrays.masks is not None
        np.testing.assert_array_equal(arrays.masks[row], resize_mask(mask, 96))


def test_second_call_reads_from_the_cache_without_decoding(
    lgg_copy: LggCopy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = ingest(lgg_copy(patients=2, slices=[10, 11, 12, 13]), tmp_path / "home")
    ids = [s.sample_id for s in manifest.samples]
    calls = _count_reads(monkeypatch)
    first = load_arrays(manifest, ids[:5], size=32, home=tmp_path / "home")
    assert first.decoded == 5 and len(calls) == 10  # an image and a mask per slice
    where = cache_dir(tmp_path / "home", manifest.version, 32)
    assert (where / "images.npy").is_file() and (where / "masks.npy").is_file()
    assert np.load(where / "done.npy").sum() == 5
    calls.clear()
    again = load_arrays(manifest, ids[:5], size=32, home=tmp_path / "home")
    assert again.decoded == 0 and calls == []
    np.testing.assert_array_equal(again.images, first.images)
    assert first.masks is not None and again.masks is not None
    np.testing.assert_array_equal(again.masks, first.masks)
    every = load_arrays(manifest, ids, size=32, home=tmp_path / "home")
    assert every.decoded == len(ids) - 5 and len(calls) == 2 * (len(ids) - 5)
    np.testing.assert_array_equal(every.images[:5], first.images)


def test_each_size_and_dataset_version_gets_its_own_cache(
    lgg_copy: LggCopy, tmp_path: Path
) -> None:
    src = lgg_copy(patients=1, slices=[10, 11])
    home = tmp_path / "home"
    manifest = ingest(src, home)
    ids = [s.sample_id for s in manifest.samples]
    assert load_arrays(manifest, ids, size=16, home=home).images.shape[-1] == 16
    assert load_arrays(manifest, ids, size=24, home=home).decoded == 2
    image = next(src.glob("*/*_10.tif"))
    tifffile.imwrite(image, 255 - tifffile.imread(image))
    changed = ingest(src, home)
    assert changed.version != manifest.version
    redone = load_arrays(changed, ids, size=16, home=home)
    assert redone.decoded == 2


def test_fourclass_arrays_have_no_masks_and_grey_pictures_become_three_equal_channels(
    fourclass_manifest: Manifest, tmp_path: Path
) -> None:
    ids = [s.sample_id for s in fourclass_manifest.samples[::250]]
    arrays = load_arrays(fourclass_manifest, ids, size=48, home=tmp_path)
    assert arrays.masks is None
    assert arrays.images.shape == (8, 3, 48, 48)
    assert arrays.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    greys = [
        i
        for i, sid in enumerate(ids)
        if read_2d(fourclass_manifest.image_path(fourclass_manifest.by_id[sid])).shape[0] == 1
    ]
    assert greys, "the 4-class data mixes grey and RGB JPEGs"
    for i in greys:
        assert np.array_equal(arrays.images[i, 0], arrays.images[i, 1])
        assert np.array_equal(arrays.images[i, 0], arrays.images[i, 2])


def test_unknown_sample_ids_bad_sizes_and_missing_masks_are_refused(
    lgg_copy: LggCopy, tmp_path: Path
) -> None:
    src = lgg_copy(patients=1, slices=[10, 11])
    next(src.glob("*/*_11_mask.tif")).unlink()
    manifest = ingest(src, tmp_path / "home")
    home = tmp_path / "home"
    with pytest.raises(InvalidInputError, match="not in dataset"):
        load_arrays(manifest, ["nobody/1"], size=16, home=home)
    with pytest.raises(InvalidInputError, match="size"):
        load_arrays(manifest, [manifest.samples[0].sample_id], size=0, home=home)
    missing = next(s for s in manifest.samples if s.mask is None)
    with pytest.raises(DatasetError, match=f"{missing.image} has no mask"):
        load_arrays(manifest, [missing.sample_id], size=16, home=home)


def test_damaged_cache_is_rebuilt_instead_of_served(lgg_copy: LggCopy, tmp_path: Path) -> None:
    home = tmp_path / "home"
    manifest = ingest(lgg_copy(patients=1, slices=[10, 11]), home)
    ids = [s.sample_id for s in manifest.samples]
    first = load_arrays(manifest, ids, size=16, home=home)
    images = cache_dir(home, manifest.version, 16) / "images.npy"
    images.write_bytes(images.read_bytes()[:100])
    again = load_arrays(manifest, ids, size=16, home=home)
    assert again.decoded == 2
    np.testing.assert_array_equal(again.images, first.images)
