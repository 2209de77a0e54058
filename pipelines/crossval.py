"""Patient-level k-fold cross-validation of a recipe (a preset), with the pipeline's own steps.

A recipe is judged here, never by one split: every development patient is tested once, by
models that never saw them, and the figures come with their spread over folds and a bootstrap
interval over patients. ``medops pipeline run --folds K`` and ``bench/quality.py`` call it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medops.tasks import TaskSpec
from pipelines import steps
from pipelines.tasks import encode, resolve

FOLD_METRICS: tuple[tuple[str, str, str], ...] = (
    ("segmenter", "two_stage_dice_patient_mean", "served two-stage Dice (per patient)"),
    ("segmenter", "dice_patient_mean", "segmenter alone Dice (per patient)"),
    ("segmenter", "plain_gate_dice_patient_mean", "plain gate Dice (classifier threshold)"),
    ("segmenter", "two_stage_detection_sensitivity", "served slice sensitivity"),
    ("segmenter", "two_stage_detection_specificity", "served slice specificity"),
    ("classifier", "auc", "classifier slice AUC"),
    ("classifier", "sensitivity", "classifier sensitivity"),
    ("classifier", "specificity", "classifier specificity"),
    ("classifier", "ece_uncalibrated", "ECE before calibration"),
    ("classifier", "ece", "ECE after calibration"),
    ("classifier", "train_seconds", "classifier training s"),
    ("segmenter", "train_seconds", "segmenter training s"),
)
"""(model, headline key, label) rows of the per-fold table."""


@dataclass
class FoldResult:
    fold: int
    patients: dict[str, int]
    headline: dict[str, dict[str, float]]
    """Per task (classifier, segmenter): the test headline of that fold, plus train_seconds."""
    patient_dice: dict[str, list[float]]
    """segmenter / two_stage: one volume Dice per test patient of this fold."""
    patient_iou: dict[str, list[float]] = field(default_factory=dict)
    """segmenter: one volume IoU per test patient (or group) of this fold."""
    slices: dict[str, list[float]] = field(default_factory=dict)
    """The classifier's test slices: tumour_prob (calibrated), tumour_prob_uncalibrated, label."""


@dataclass
class CrossValidation:
    preset: str
    seed: int
    folds: list[FoldResult] = field(default_factory=list)
    seconds: float = 0.0
    task: str | None = None
    """The task file's name; None: the brain classifier and gated segmenter."""
    rows: tuple[tuple[str, str, str], ...] = FOLD_METRICS
    """(model, headline key, label) rows of the per-fold table."""

    def summary(self) -> dict[str, dict[str, float]]:
        """Per metric: mean, std, min, max over folds; pooled per-patient Dice with intervals."""
        from medops.evaluation.stats import mean_interval

        out: dict[str, dict[str, float]] = {}
        for task, key, _ in self.rows:
            values = np.array(
                [f.headline.get(task, {}).get(key, np.nan) for f in self.folds], float
            )
            values = values[np.isfinite(values)]
            if len(values):
                out[key if task == "segmenter" or key != "train_seconds" else f"{task}_{key}"] = {
                    "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "min": float(values.min()),
                    "max": float(values.max()),
                }
        out |= self._pooled_slices()
        for name, figure in (
            ("two_stage", "dice"),
            ("segmenter", "dice"),
            ("segmenter", "iou"),
        ):
            pooled = [
                d
                for f in self.folds
                for d in (f.patient_dice if figure == "dice" else f.patient_iou).get(name, [])
            ]
            if pooled:
                low, high = mean_interval(pooled)
                out[f"pooled_{name}_{figure}"] = {
                    "mean": float(np.mean(pooled)),
                    "median": float(np.median(pooled)),
                    "ci_low": low,
                    "ci_high": high,
                    "patients": float(len(pooled)),
                }
        return out

    def _pooled_slices(self) -> dict[str, dict[str, float]]:
        """AUC and ECE over every development slice, each scored by the fold that held it out."""
        from medops.evaluation import calibration, roc_auc

        def pooled(key: str) -> np.ndarray:
            return np.concatenate([np.asarray(f.slices.get(key, []), float) for f in self.folds])

        labels = pooled("label") == 1
        if not len(labels):
            return {}
        return {
            "pooled_slices": {
                "auc": roc_auc(labels, pooled("tumour_prob")),
                "ece": calibration(pooled("tumour_prob"), labels)[0],
                "ece_uncalibrated": calibration(pooled("tumour_prob_uncalibrated"), labels)[0],
                "slices": float(len(labels)),
            }
        }

    def metrics(self) -> dict[str, float]:
        """Flat ``cv_<metric>_mean`` / ``_std`` figures for a registered version."""
        flat: dict[str, float] = {}
        for key, values in self.summary().items():
            for stat, value in values.items():
                flat[f"cv_{key}_{stat}"] = value
        return flat

    def to_text(self) -> str:
        summary = self.summary()
        what = f"task {self.task}" if self.task else "the brain models"
        unit = "groups" if self.task else "patients"
        lines = [
            f"{len(self.folds)}-fold {unit[:-1]}-level cross-validation of {what}, preset "
            f"{self.preset}, seed {self.seed} ({self.seconds / 60:.1f} min)"
        ]
        alone = "served segmenter" if self.task else "segmenter alone"
        for key, label in (
            ("two_stage_dice", "served two-stage Dice"),
            ("segmenter_dice", f"{alone} Dice"),
            ("segmenter_iou", f"{alone} IoU"),
        ):
            pooled = summary.get(f"pooled_{key}")
            if pooled:
                lines.append(
                    f"  {label:<22} over {pooled['patients']:.0f} {unit}: mean "
                    f"{pooled['mean']:.3f} [95% CI {pooled['ci_low']:.3f}-{pooled['ci_high']:.3f}]"
                    f", median {pooled['median']:.3f}"
                )
        slices = summary.get("pooled_slices")
        if slices:
            lines.append(
                f"  classifier over {slices['slices']:.0f} slices: AUC {slices['auc']:.3f}, ECE "
                f"{slices['ece_uncalibrated']:.3f} before and {slices['ece']:.3f} after calibration"
            )
        header = (
            "  " + f"{'metric':<42}" + "".join(f"{'fold ' + str(f.fold):>9}" for f in self.folds)
        )
        lines += ["", header + f"{'mean':>9}{'sd':>8}"]
        for task, key, label in self.rows:
            values = [f.headline.get(task, {}).get(key, float("nan")) for f in self.folds]
            if not np.isfinite(values).any():
                continue
            digits = 0 if key == "train_seconds" else 3
            row = "".join(f"{v:>9.{digits}f}" for v in values)
            finite = np.asarray(values)[np.isfinite(values)]
            sd = finite.std(ddof=1) if len(finite) > 1 else 0.0
            lines.append(f"  {label:<42}{row}{finite.mean():>9.{digits}f}{sd:>8.{digits}f}")
        return "\n".join(lines)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = asdict(self) | {"summary": self.summary(), "metrics": self.metrics()}
        path.write_text(json.dumps(doc, indent=1, default=float))
        return path


def fold_splits(
    manifest_path: str, work: Path, *, folds: int, seed: int, task: str = ""
) -> list[Path]:
    """Write and validate every fold's split before anything trains (bad folds fail fast)."""
    from medops.data import load_manifest, patient_folds

    manifest = load_manifest(manifest_path)
    paths = []
    for i, splits in enumerate(patient_folds(manifest, folds=folds, seed=seed), 1):
        path = splits.save(work / f"fold-{i}" / "splits.json")
        report = str(path.with_name("validation.txt"))
        steps.validate_data(manifest_path, str(path), report, task)
        paths.append(path)
    return paths


def held_out_split(manifest_path: str, work: Path, *, seed: int, task: str = "") -> Path:
    """The single pipeline run's split (a quarter of the patients held out), validated."""
    path = work / "held-out" / "splits.json"
    steps.split_data(manifest_path, str(path), seed=seed)
    steps.validate_data(manifest_path, str(path), str(path.with_name("validation.txt")), task)
    return path


def cross_validate(
    preset: str,
    data_path: Path,
    home: Path,
    *,
    folds: int = 5,
    seed: int = 0,
    work: Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    fourclass_path: Path | None = None,
    on_fold: Callable[[FoldResult], None] | None = None,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None = None,
    task: TaskSpec | None = None,
) -> CrossValidation:
    """Train and evaluate the classifier and the gated segmenter on every fold (``task``:
    the model of that task file instead, on its data at ``data_path``, folds by its groups).

    ``folds`` 1 judges the single held-out split of a pipeline run instead. ``overrides`` are
    per-task training settings on top of the preset (for ablations; ``{"classifier":
    {"pretrain": false}}`` trains the classifier from scratch; a task file's settings are
    under ``task``). A preset that pretrains does so once, on ``fourclass_path`` (default:
    beside ``data_path``), for every fold.
    """
    from pipelines.local import FOURCLASS_DIR

    started = time.perf_counter()
    work = Path(work or home / "crossval" / f"{preset}-seed{seed}")
    document = encode(task) if task is not None else ""
    manifest = steps.ingest_data(str(data_path), str(home), document)["manifest"]
    models: tuple[str, ...] = (document,) if task is not None else ("classifier", "segmenter")
    classifier_overrides = dict((overrides or {}).get("classifier", {}))
    pretrained = ""
    if task is None and classifier_overrides.pop("pretrain", True):
        fourclass = fourclass_path or Path(data_path).parent / FOURCLASS_DIR
        pretrained = steps.pretrain(preset, str(fourclass), str(home))
    overrides = {**(overrides or {}), "classifier": classifier_overrides}
    if task is not None:
        overrides[document] = dict((overrides or {}).get("task", {}))
    if folds == 1:
        paths = [held_out_split(manifest, work, seed=seed, task=document)]
    else:
        paths = fold_splits(manifest, work, folds=folds, seed=seed, task=document)
    result = CrossValidation(preset=preset, seed=seed)
    if task is not None:
        declared = [("segmenter", m, m) for m in task.metrics]
        seconds = ("segmenter", "train_seconds", "training s")
        result = CrossValidation(
            preset=preset, seed=seed, task=task.name, rows=(*declared, seconds)
        )
    for i, splits_path in enumerate(paths, 1):
        fold = _run_fold(
            i, preset, manifest, splits_path, home, overrides, pretrained, on_epoch, models
        )
        result.folds.append(fold)
        result.seconds = time.perf_counter() - started
        result.save(work / "crossval.json")
        if on_fold is not None:
            on_fold(fold)
    return result


def _run_fold(
    index: int,
    preset: str,
    manifest: str,
    splits_path: Path,
    home: Path,
    overrides: Mapping[str, Mapping[str, Any]],
    pretrained: str,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None,
    models: tuple[str, ...],
) -> FoldResult:
    """Train and evaluate ``models`` (brain roles or one task document) on one fold; a
    segmenter after a classifier is gated by it, as it serves."""
    folder = splits_path.parent
    headline: dict[str, dict[str, float]] = {}
    for task in models:
        role = resolve(task).role
        extra = dict(overrides.get(task, {}))
        weights = str(folder / f"{role}.pt")
        summary = steps.train(
            task,
            preset,
            manifest,
            str(splits_path),
            str(home),
            weights,
            overrides=extra,
            pretrained=pretrained if task == "classifier" else "",
            on_epoch=(lambda e, r, t=role: on_epoch(t, e, r)) if on_epoch else None,
        )
        gated: dict[str, Any] = (
            {
                "classifier_weights": str(folder / "classifier.pt"),
                "classifier_evaluation": str(folder / "classifier-evaluation.json"),
                "classifier_overrides": dict(overrides.get("classifier", {})),
            }
            if role == "segmenter" and "classifier" in models
            else {}
        )
        headline[role] = steps.evaluate(
            task,
            preset,
            manifest,
            str(splits_path),
            str(home),
            weights,
            str(folder / f"{role}-report.html"),
            str(folder / f"{role}-evaluation.json"),
            overrides=extra,
            **gated,
        ) | {"train_seconds": summary["train_seconds"]}
    split_sizes = json.loads(splits_path.read_text())

    def evaluation(role: str) -> dict[str, Any]:
        found = folder / f"{role}-evaluation.json"
        return json.loads(found.read_text()) if found.is_file() else {}

    segmenter = evaluation("segmenter")
    return FoldResult(
        fold=index,
        patients={k: len(split_sizes[k]) for k in ("train", "val", "test")},
        headline=headline,
        patient_dice=segmenter.get("patient_dice", {}),
        patient_iou=segmenter.get("patient_iou", {}),
        slices=evaluation("classifier").get("slices", {}),
    )
