"""Pipeline steps on their own: splitting small runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from medops.data import Splits, load_manifest
from pipelines import steps


def test_capped_splits_of_class_folder_data_keep_every_class(
    fourclass_dir: Path, medops_home: Path, tmp_path: Path
) -> None:
    manifest = steps.ingest_data(str(fourclass_dir), str(medops_home))["manifest"]
    counts = steps.split_data(
        manifest, str(tmp_path / "splits.json"), max_patients={"train": 8, "val": 4, "test": 4}
    )
    assert counts == {"train": 8, "val": 4, "test": 4}
    labels = load_manifest(manifest).patient_labels()
    splits = Splits.load(tmp_path / "splits.json")
    for name, per_class in (("train", 2), ("val", 1), ("test", 1)):
        assert Counter(labels[p] for p in getattr(splits, name)) == dict.fromkeys(
            range(4), per_class
        )
    report = steps.validate_data(manifest, str(tmp_path / "splits.json"), str(tmp_path / "r.txt"))
    assert report["ok"]
