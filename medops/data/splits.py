"""Patient-level, label-stratified, seeded train/val/test splits."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from medops.data.manifest import Manifest, write_json_atomic
from medops.errors import DatasetError, InvalidInputError

SplitName = Literal["train", "val", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "val", "test")


@dataclass
class Splits:
    """Patient ids per split; a patient's slices are never spread over two splits."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int = 0
    fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)
    version: str | None = field(default=None)
    """Version of the manifest the split was made for."""

    def patients(self, split: SplitName) -> list[str]:
        if split not in SPLIT_NAMES:
            raise InvalidInputError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
        patients: list[str] = getattr(self, split)
        return patients

    def sample_ids(self, manifest: Manifest, split: SplitName) -> list[str]:
        """Ids of the samples of ``split``, in manifest order."""
        wanted = set(self.patients(split))
        return [s.sample_id for s in manifest.samples if s.patient_id in wanted]

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "version": self.version,
            "train": self.train,
            "val": self.val,
            "test": self.test,
        }

    def save(self, path: Path) -> Path:
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: Path | str) -> Splits:
        try:
            data = json.loads(Path(path).read_text())
            fr = [float(f) for f in data["fractions"]]
            return cls(
                train=list(data["train"]),
                val=list(data["val"]),
                test=list(data["test"]),
                seed=int(data["seed"]),
                fractions=(fr[0], fr[1], fr[2]),
                version=data.get("version"),
            )
        except FileNotFoundError:
            raise DatasetError(f"{path}: splits file not found") from None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise DatasetError(f"{path}: malformed splits file ({exc})") from None


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr):
        raise InvalidInputError(f"fractions must be three non-negative numbers, got {fractions}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise InvalidInputError(f"fractions must sum to 1, got {fractions} (sum {sum(fr)})")
    return fr[0], fr[1], fr[2]


DEFAULT_FRACTIONS = (0.6, 0.15, 0.25)
"""A quarter of the patients held out: 10 of the 40 LGG patients, enough for an interval."""


def split_dataset(
    manifest: Manifest, *, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> Splits:
    """Split the patients of ``manifest`` into train/val/test.

    Patients are grouped by their label (has-tumour for segmentation, class otherwise) and
    shuffled with ``seed`` within each group; every split gets its fraction of every group,
    to within one patient, so all splits have the same label mix. Deterministic for a seed.
    Saved as ``splits-<seed>.json`` beside the manifest when the manifest was saved.
    """
    fr = _check_fractions(fractions)
    labels = manifest.patient_labels()
    if not labels:
        raise DatasetError(f"dataset {manifest.name} has no patients to split")
    order = _stratified_order(labels, seed)
    # Deal the patients, stratum after stratum, each to the split furthest below its share:
    # every stratum and the whole set then match the fractions to within one patient, even
    # for strata too small to cut on their own.
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    counts = [0, 0, 0]
    for n, patient in enumerate(order, 1):
        j = max(range(3), key=lambda k: (fr[k] * n - counts[k], -k))
        counts[j] += 1
        out[SPLIT_NAMES[j]].append(patient)
    splits = Splits(
        train=sorted(out["train"]),
        val=sorted(out["val"]),
        test=sorted(out["test"]),
        seed=seed,
        fractions=fr,
        version=manifest.version,
    )
    if manifest.directory is not None:
        splits.save(manifest.directory / f"splits-{seed}.json")
    return splits


def _stratified_order(labels: dict[str, int], seed: int) -> list[str]:
    """Patients grouped by label, shuffled with ``seed`` within each group."""
    rng = np.random.default_rng(seed)
    order: list[str] = []
    for label in sorted(set(labels.values())):
        group = sorted(p for p, lab in labels.items() if lab == label)
        order += [group[i] for i in rng.permutation(len(group))]
    return order


def patient_folds(manifest: Manifest, *, folds: int = 5, seed: int = 0) -> list[Splits]:
    """Patient-level k-fold cross-validation, stratified by patient label, seeded.

    Patients are dealt round-robin to ``folds`` folds, stratum after stratum, so every fold
    gets its share of each label to within one patient. Fold ``i`` tests on fold ``i``,
    early-stops on fold ``i + 1`` and trains on the rest: every patient is tested exactly once.
    """
    if folds < 3:
        raise InvalidInputError(f"folds: need at least 3 (test, validation, train), got {folds}")
    labels = manifest.patient_labels()
    if len(labels) < folds:
        raise DatasetError(
            f"folds: {folds} folds need at least {folds} patients; dataset {manifest.name} "
            f"has {len(labels)}"
        )
    dealt: list[list[str]] = [[] for _ in range(folds)]
    for n, patient in enumerate(_stratified_order(labels, seed)):
        dealt[n % folds].append(patient)
    out = []
    for i in range(folds):
        val = (i + 1) % folds
        train = [p for j, fold in enumerate(dealt) if j not in (i, val) for p in fold]
        out.append(
            Splits(
                train=sorted(train),
                val=sorted(dealt[val]),
                test=sorted(dealt[i]),
                seed=seed,
                fractions=(
                    len(train) / len(labels),
                    len(dealt[val]) / len(labels),
                    len(dealt[i]) / len(labels),
                ),
                version=manifest.version,
            )
        )
    return out
