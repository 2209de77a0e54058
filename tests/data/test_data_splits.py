"""Patient-level, stratified, seeded splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from medops.data import Manifest, Sample, Splits, patient_folds, split_dataset
from medops.errors import DatasetError, InvalidInputError


def _synthetic(positive: int, negative: int, slices: int = 4) -> Manifest:
    """A manifest with ``positive`` patients having a tumour slice and ``negative`` without."""
    samples = []
    for p in range(positive + negative):
        for k in range(slices):
            label = int(p < positive and k == 1)
            sid = f"P{p:03d}/{k}"
            samples.append(Sample(sid, f"P{p:03d}", f"{sid}.tif", f"{sid}_mask.tif", label))
    return Manifest(
        name="synthetic",
        layout="lgg",
        kind="segmentation",
        root=Path("/nonexistent"),
        classes=["no_tumour", "tumour"],
        samples=samples,
        patients={f"P{p:03d}": {} for p in range(positive + negative)},
        version="0" * 16,
        hashes={},
    )


def _assert_partition(manifest: Manifest, splits: Splits) -> None:
    train, val, test = set(splits.train), set(splits.val), set(splits.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(manifest.patients)


def test_lgg_split_puts_every_patient_in_exactly_one_split(lgg_manifest: Manifest) -> None:
    splits = split_dataset(lgg_manifest, seed=0)
    _assert_partition(lgg_manifest, splits)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 10)
    ids = [splits.sample_ids(lgg_manifest, name) for name in ("train", "val", "test")]
    assert sum(map(len, ids)) == len(lgg_manifest.samples)
    for name, sample_ids in zip(("train", "val", "test"), ids, strict=True):
        members = set(getattr(splits, name))
        assert all(lgg_manifest.by_id[sid].patient_id in members for sid in sample_ids)


def test_fourclass_split_is_stratified_by_class(fourclass_manifest: Manifest) -> None:
    splits = split_dataset(fourclass_manifest, seed=3)
    _assert_partition(fourclass_manifest, splits)
    labels = fourclass_manifest.patient_labels()
    for name, share in (("train", 0.6), ("val", 0.15), ("test", 0.25)):
        counts = Counter(labels[p] for p in getattr(splits, name))
        for cls in range(4):
            in_class = sum(1 for lab in labels.values() if lab == cls)
            assert abs(counts[cls] / in_class - share) < 0.01


def test_positive_and_negative_patients_are_spread_evenly_over_the_splits() -> None:
    manifest = _synthetic(positive=30, negative=20)
    splits = split_dataset(manifest, seed=1)
    _assert_partition(manifest, splits)
    labels = manifest.patient_labels()
    names = ("train", "val", "test")
    sizes = [len(getattr(splits, n)) for n in names]
    positives = [sum(labels[p] for p in getattr(splits, n)) for n in names]
    # 50 x (0.6, 0.15, 0.25) = 30, 7.5, 12.5 and per stratum 18, 4.5, 7.5 / 12, 3, 5
    assert sizes[0] == 30 and sizes[1] in (7, 8) and sizes[2] in (12, 13)
    for got, ideal in zip(positives, (18, 4.5, 7.5), strict=True):
        assert abs(got - ideal) <= 1
    for size, got in zip(sizes, positives, strict=True):
        assert 0.5 <= got / size <= 0.72


def test_tiny_datasets_still_fill_the_held_out_splits() -> None:
    splits = split_dataset(_synthetic(positive=2, negative=1), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2, 0, 1)
    splits = split_dataset(_synthetic(positive=4, negative=3), seed=0)
    assert len(splits.val) >= 1 and len(splits.test) >= 1


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds(
    lgg_manifest: Manifest,
) -> None:
    a = split_dataset(lgg_manifest, seed=7)
    b = split_dataset(lgg_manifest, seed=7)
    c = split_dataset(lgg_manifest, seed=8)
    assert a == b
    assert (a.train, a.val, a.test) != (c.train, c.val, c.test)


def test_split_is_saved_beside_the_manifest_and_loads_back(lgg_manifest: Manifest) -> None:
    splits = split_dataset(lgg_manifest, seed=5)
    assert lgg_manifest.directory is not None
    path = lgg_manifest.directory / "splits-5.json"
    loaded = Splits.load(path)
    assert loaded == splits
    assert loaded.version == lgg_manifest.version and loaded.seed == 5


def test_fractions_that_do_not_sum_to_one_are_refused(lgg_manifest: Manifest) -> None:
    with pytest.raises(InvalidInputError, match="sum to 1"):
        split_dataset(lgg_manifest, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(InvalidInputError, match="non-negative"):
        split_dataset(lgg_manifest, fractions=(1.2, -0.1, -0.1))
    with pytest.raises(InvalidInputError, match="split must be one of"):
        split_dataset(lgg_manifest).sample_ids(lgg_manifest, "holdout")  # type: ignore[arg-type]


def test_other_fractions_are_honoured(lgg_manifest: Manifest) -> None:
    splits = split_dataset(lgg_manifest, seed=0, fractions=(0.5, 0.25, 0.25))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 10, 10)


def test_every_patient_is_tested_in_exactly_one_fold() -> None:
    manifest = _synthetic(positive=13, negative=9)
    folds = patient_folds(manifest, folds=5, seed=4)
    assert len(folds) == 5
    tested = [p for fold in folds for p in fold.test]
    assert sorted(tested) == sorted(manifest.patient_labels())
    for fold in folds:
        _assert_partition(manifest, fold)
        assert not set(fold.train) & set(fold.val) and not set(fold.val) & set(fold.test)


def test_folds_are_stratified_and_stable_under_a_seed() -> None:
    manifest = _synthetic(positive=15, negative=10)
    labels = manifest.patient_labels()
    folds = patient_folds(manifest, folds=5, seed=7)
    for fold in folds:
        assert sum(labels[p] for p in fold.test) == 3  # 15 positives over 5 folds
    assert [f.test for f in patient_folds(manifest, folds=5, seed=7)] == [f.test for f in folds]
    assert [f.test for f in patient_folds(manifest, folds=5, seed=8)] != [f.test for f in folds]


def test_fewer_patients_than_folds_is_refused_with_the_numbers() -> None:
    with pytest.raises(DatasetError, match=r"5 folds need at least 5 patients.*has 4"):
        patient_folds(_synthetic(positive=2, negative=2), folds=5)
