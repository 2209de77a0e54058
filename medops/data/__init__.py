"""Datasets: ingest a folder into a versioned manifest, split it by patient, validate it, and
load cached, preprocessed arrays for training.

>>> manifest = ingest(Path("../shared/data/lgg-mri-segmentation"), home)
>>> splits = split_dataset(manifest, seed=0)
>>> report = validate(manifest, splits)
>>> train = load_arrays(manifest, splits.sample_ids(manifest, "train"), size=128, home=home)
"""

from medops.data.arrays import ArraySet, cache_dir, load_arrays, source_shapes
from medops.data.ingestion import ingest
from medops.data.layouts import LayoutOptions, detect_layout
from medops.data.manifest import Manifest, Sample, load_manifest
from medops.data.splits import Splits, patient_folds, split_dataset
from medops.data.validation import Issue, ValidationReport, validate

__all__ = [
    "ArraySet",
    "Issue",
    "LayoutOptions",
    "Manifest",
    "Sample",
    "Splits",
    "ValidationReport",
    "cache_dir",
    "detect_layout",
    "ingest",
    "load_arrays",
    "load_manifest",
    "patient_folds",
    "source_shapes",
    "split_dataset",
    "validate",
]
