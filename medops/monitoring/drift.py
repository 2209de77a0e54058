"""Data, prediction and embedding drift of a window of predictions against the reference.

The reference is the training set seen through the same eyes as serving: image statistics
(:func:`~medops.monitoring.features.image_features`), embedding coordinates and, when the
model's outputs on the training images are given, its output probabilities. It is stored
with the model version under ``$MEDOPS_HOME/monitoring/reference/<model>/<version>/``.

Every column is compared with Evidently's normed Wasserstein distance (the distance between
the two distributions in units of the reference's standard deviation): unlike a p-value it
does not call every tiny difference drift once the window is large.

The alarm has a stated false-alarm rate, for healthy traffic as it arrives: whole studies
(every slice of one patient, then the next patient, in random order; for the segmenter only
the slices the classifier flags, so one window spans more patients). Brain MRI varies more
from patient to patient than slices within one patient do, so the alarm is calibrated on
patients a reference has not seen: the non-test patients (training and validation splits)
are split again and again into a pseudo-reference and held-out patients, the held-out
patients are streamed study after study, and thousands of windows of ``window`` consecutive
predictions are cut from those streams. A window raises the alarm when any column's
distance exceeds its threshold; the thresholds are one quantile level of each column's
healthy distances, the level chosen so that at most ``false_alarm_rate`` of the drawn
windows raise it (a max-statistic / min-p calibration: columns that move together are not
counted twice, and a column that never moved in calibration alarms on any change). The same
calibration repeated with one fold of patients left out, and judged on that fold's windows,
estimates the rate on patients the thresholds never saw (``heldout_rate``). The thresholds,
the rate, the window size and how they were obtained are stored in ``meta.json`` and used by
the monitor as they are; at run time an alarm costs one distance per column.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from medops.errors import DatasetError, InvalidInputError, NotFoundError
from medops.monitoring.features import FEATURE_NAMES, EmbeddingReducer, image_features

DEFAULT_THRESHOLD = 0.1
"""Evidently's default for the normed Wasserstein distance, used for uncalibrated columns."""
DEFAULT_FALSE_ALARM_RATE = 0.01
"""Target share of healthy windows that raise the alarm."""
DEFAULT_WINDOW = 100
"""Predictions per window the alarm is calibrated for (and the monitor judges)."""
DEFAULT_DRAWS = 2000
"""Healthy windows drawn to calibrate: 20 exceedances at a 1 % target."""
TRAFFIC = "whole studies, patients in random order"
"""How the healthy windows of calibration arrive (see :func:`draw_stream_windows`)."""
PREDICTION_COLUMNS = ("confidence", "area")
_REFERENCE_FILE = "reference.parquet"
_META_FILE = "meta.json"
_EMBEDDING_FILE = "embedding.npz"
_MIN_NORM = 0.001  # Evidently's floor for the reference's standard deviation
_MIN_THRESHOLD = 1e-9  # a column constant in calibration alarms on any change


def column_kind(name: str) -> str | None:
    """``"data"``, ``"embedding"``, ``"prediction"`` or None (not a drift column)."""
    if name in FEATURE_NAMES:
        return "data"
    if name.startswith("emb_"):
        return "embedding"
    if name.startswith("prob_") or name in PREDICTION_COLUMNS:
        return "prediction"
    return None


def _home(home: Path | None) -> Path:
    if home is not None:
        return Path(home)
    from medops.settings import MedopsSettings

    return MedopsSettings().home


def reference_dir(model: str, version: str, *, home: Path | None = None) -> Path:
    """``<home>/monitoring/reference/<model>/<version>``."""
    for name, value in (("model", model), ("version", version)):
        if not value or "/" in value or value.startswith("."):
            raise InvalidInputError(f"{name}: not a valid path component: {value!r}")
    return _home(home) / "monitoring" / "reference" / model / version


def normed_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    """The statistic Evidently's ``wasserstein`` test computes (distance / reference std)."""
    norm = max(float(np.std(reference)), _MIN_NORM)
    return float(stats.wasserstein_distance(reference, current) / norm)


class ReferenceDistances:
    """Normed Wasserstein distances of many equal-sized windows to a fixed reference at once.

    The same number as :func:`normed_wasserstein` (and Evidently), computed on the quantile
    functions: for a reference of N rows and windows of n, both are step functions whose
    steps fall on one grid of at most N + n levels, fixed by N and n alone, so a batch of
    windows costs one sort per window and one weighted sum.
    """

    def __init__(self, reference: pd.DataFrame, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        values = reference[self.columns].to_numpy(dtype=np.float64)
        if values.shape[0] < 2 or not np.isfinite(values).all():
            raise InvalidInputError("reference: need two or more rows of finite values")
        self._sorted = np.sort(values, axis=0)
        self._norm = np.maximum(values.std(axis=0), _MIN_NORM)
        self._grids: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _grid(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if n not in self._grids:
            rows = self._sorted.shape[0]
            levels = np.union1d(np.arange(1, rows + 1) / rows, np.arange(1, n + 1) / n)
            widths = np.diff(levels, prepend=0.0)
            middle = levels - widths / 2
            self._grids[n] = (
                widths,
                np.minimum((middle * rows).astype(np.int64), rows - 1),
                np.minimum((middle * n).astype(np.int64), n - 1),
            )
        return self._grids[n]

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """(B, n, C) windows (columns in :attr:`columns` order) -> (B, C) distances."""
        batch = np.asarray(windows, dtype=np.float64)
        if batch.ndim != 3 or batch.shape[2] != len(self.columns) or batch.shape[1] < 1:
            raise InvalidInputError(
                f"windows: expected shape (B, n, {len(self.columns)}), got {batch.shape}"
            )
        widths, at_ref, at_window = self._grid(batch.shape[1])
        ordered = np.sort(batch, axis=1)
        out = np.empty((batch.shape[0], batch.shape[2]))
        for c in range(batch.shape[2]):
            gap = np.abs(ordered[:, at_window, c] - self._sorted[at_ref, c][None, :])
            out[:, c] = gap @ widths / self._norm[c]
        return out


@dataclass(frozen=True)
class Calibration:
    """How a reference's alarm thresholds were obtained, stored beside them."""

    false_alarm_rate: float
    """Target share of healthy windows that raise the alarm."""
    window: int
    """Predictions per window the thresholds hold for."""
    draws: int
    """Healthy windows drawn."""
    column_level: float
    """The per-column exceedance level every threshold sits at."""
    calibration_rate: float
    """Share of the drawn windows that raised the alarm (at most the target)."""
    rows: int
    """Slices of the calibration pool (training and validation patients, never test)."""
    groups: int
    """Patients in the pool."""
    source: str
    """Which patients made the pool."""
    rounds: int = 40
    """Times a fold of the pool's patients was held out of a pseudo-reference."""
    holdout: float = 0.25
    """Share of the patients held out per round."""
    traffic: str = TRAFFIC
    """How the healthy windows were drawn from the held-out patients."""
    heldout_rate: float | None = None
    """Share of windows that raised the alarm under thresholds calibrated without their
    patients (each fold left out in turn): what to expect of patients never seen."""
    method: str = (
        "max statistic over columns; windows of consecutive predictions of held-out "
        "patients streamed study after study (patients in random order) against a "
        "pseudo-reference of the others; alarm when any column's normed Wasserstein distance "
        "exceeds its threshold"
    )
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def draw_windows(
    values: np.ndarray,
    groups: np.ndarray,
    *,
    window: int,
    draws: int,
    patients: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(draws, window, C) windows, each from ``patients`` random patients' rows: without
    replacement when they have enough rows, a bootstrap of them when not (the stress case of
    traffic from one patient at a time, not what the alarm is calibrated for)."""
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(unique.size)]
    out = np.empty((draws, window, values.shape[1]))
    for b in range(draws):
        chosen = rng.choice(unique.size, min(patients, unique.size), replace=False)
        rows = np.concatenate([members[g] for g in chosen])
        out[b] = values[rng.choice(rows, window, replace=rows.size < window)]
    return out


def draw_stream_windows(
    values: np.ndarray,
    groups: np.ndarray,
    *,
    window: int,
    draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(draws, window, C) windows of healthy traffic as it arrives: each is ``window``
    consecutive rows, at a random place, of a stream of whole studies (every row of one
    patient in its given order, then the next patient, patients in random order). A patient
    comes back only when the stream has run through all of them and still needs rows."""
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(unique.size)]
    out = np.empty((draws, window, values.shape[1]))
    for b in range(draws):
        studies = [members[g] for g in rng.permutation(unique.size)]
        start = int(rng.integers(0, sum(m.size for m in studies)))  # anywhere in one pass
        while sum(m.size for m in studies) < start + window:
            studies += [members[g] for g in rng.permutation(unique.size)]
        out[b] = values[np.concatenate(studies)[start : start + window]]
    return out


def drift_columns(frame: pd.DataFrame) -> list[str]:
    """The drift columns of ``frame`` whose values are all finite."""
    return [
        c
        for c in frame.columns
        if column_kind(c) is not None and np.isfinite(frame[c].to_numpy(dtype=np.float64)).all()
    ]


def _max_statistic_thresholds(scores: np.ndarray, target: float) -> tuple[np.ndarray, float, float]:
    """Per-column thresholds at one quantile level of (N, C) healthy ``scores``: the largest
    level at which at most ``target`` of the rows have any column above its threshold.
    Returns the thresholds, the level and the rate they give on ``scores``."""
    count = scores.shape[0]
    ranked = np.sort(scores, axis=0)

    def thresholds_at(level: float) -> np.ndarray:
        # the (1 - level) quantile of each column's healthy distances
        k = min(count - 1, math.ceil((1.0 - level) * count) - 1)
        return np.maximum(ranked[max(k, 0)], _MIN_THRESHOLD)

    def rate_at(level: float) -> float:
        return float((scores > thresholds_at(level)[None, :]).any(axis=1).mean())

    low, high = 0.0, target
    if rate_at(high) <= target:
        low = high
    while high - low > 0.25 / count:
        middle = (low + high) / 2
        low, high = (middle, high) if rate_at(middle) <= target else (low, middle)
    return thresholds_at(low), low, rate_at(low)


def calibrate_alarm(
    pool: pd.DataFrame,
    groups: Sequence[Any],
    *,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    window: int = DEFAULT_WINDOW,
    draws: int = DEFAULT_DRAWS,
    rounds: int = 40,
    holdout: float = 0.25,
    seed: int = 0,
    source: str = "training patients",
) -> tuple[dict[str, float], Calibration]:
    """Per-column thresholds at which healthy traffic raises the alarm at most at the target.

    ``pool``: feature rows of non-test patients (the training and validation splits), each
    patient's rows in the order a study arrives; ``groups`` one patient key per row. The
    patients are split ``rounds`` times into folds of about ``holdout`` of them (more
    patients per fold when that few hold too few rows for two windows); each fold in turn is
    held out of a pseudo-reference made of the others and streamed study after study
    (:func:`draw_stream_windows`): what windows of unseen patients look like against a
    reference of these. Returns the thresholds (alarm when any column's distance exceeds its
    own) and the record of how they were obtained, with the rate measured on each fold under
    thresholds calibrated without it (``heldout_rate``).
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise InvalidInputError(f"false_alarm_rate: expected in (0, 1), got {false_alarm_rate}")
    if window < 2 or rounds < 1 or draws < rounds or not 0.0 < holdout < 1.0:
        raise InvalidInputError(
            f"calibration: window ({window}) >= 2, draws ({draws}) >= rounds ({rounds}) >= 1 "
            f"and holdout ({holdout}) in (0, 1) expected"
        )
    if round(false_alarm_rate * draws) < 1:
        raise InvalidInputError(
            f"draws: {draws} windows cannot resolve a false-alarm rate of {false_alarm_rate}"
        )
    labels = np.asarray(groups)
    if labels.shape[0] != len(pool):
        raise InvalidInputError(f"groups: {labels.shape[0]} labels for {len(pool)} rows")
    patients = np.unique(labels)
    if patients.size < 4 or len(pool) < 8:
        raise DatasetError(
            f"calibration: {patients.size} patients ({len(pool)} slices) are too few to hold "
            "some out of a reference; need at least 4"
        )
    # folds of about `holdout` of the patients, fewer and larger when a fold would hold less
    # than two windows of rows (the segmenter's few flagged slices per patient)
    folds = max(2, min(round(1.0 / holdout), len(pool) // (2 * window), patients.size // 2))
    columns = drift_columns(pool)
    if not columns:
        raise DatasetError("calibration: no finite drift column")
    rng = np.random.default_rng(seed)
    values = pool[columns].to_numpy(dtype=np.float64)
    splits = max(1, round(rounds / folds))
    per_fold = max(1, math.ceil(draws / (splits * folds)))
    healthy: list[list[np.ndarray]] = []
    for _ in range(splits):
        scores = []
        for fold in np.array_split(rng.permutation(patients), folds):
            held = np.isin(labels, fold)
            distance = ReferenceDistances(pool.loc[~held, columns], columns)
            windows = draw_stream_windows(
                values[held], labels[held], window=window, draws=per_fold, rng=rng
            )
            scores.append(distance(windows))
        healthy.append(scores)
    every = np.concatenate([s for split in healthy for s in split])
    limits, level, rate = _max_statistic_thresholds(every, false_alarm_rate)
    # the same calibration without one fold, judged on that fold's windows
    alarms = [
        (scores[k] > _max_statistic_thresholds(np.concatenate(scores[:k] + scores[k + 1 :]),
                                               false_alarm_rate)[0]).any(axis=1)
        for scores in healthy
        for k in range(folds)
    ]  # fmt: skip
    record = Calibration(
        false_alarm_rate=false_alarm_rate,
        window=window,
        draws=int(every.shape[0]),
        column_level=level,
        calibration_rate=rate,
        rows=len(pool),
        groups=int(patients.size),
        source=source,
        rounds=splits * folds,
        holdout=1.0 / folds,
        heldout_rate=float(np.concatenate(alarms).mean()),
        seed=seed,
    )
    return dict(zip(columns, map(float, limits), strict=True)), record


@dataclass(frozen=True)
class Reference:
    """A stored reference: the frame, its drift thresholds and its embedding reducer."""

    model: str
    version: str
    frame: pd.DataFrame
    thresholds: dict[str, float]
    reducer: EmbeddingReducer | None
    path: Path
    calibration: Calibration | None = None
    """How the thresholds were calibrated; None for a reference stored before calibrated
    alarms (judged by the share of drifted columns)."""

    def features(self, image: np.ndarray, *, original_shape: tuple[int, ...] | None = None):
        """Image statistics plus embedding coordinates of one model input: what to log."""
        out = image_features(image, original_shape=original_shape)
        if self.reducer is not None:
            out.update(self.reducer.embed(image))
        return out


@dataclass(frozen=True)
class CalibrationSet:
    """Slices of patients the reference does not hold (the validation split), seen as serving
    sees them: what the alarm is calibrated on."""

    images: Sequence[np.ndarray]
    groups: Sequence[Any] | None = None
    """One patient key per image; used to draw windows, never stored."""
    outputs: Sequence[Mapping[str, float]] | None = None
    original_shapes: Sequence[tuple[int, ...]] | None = None


def _rows(
    images: Sequence[np.ndarray],
    reducer: EmbeddingReducer,
    outputs: Sequence[Mapping[str, float]] | None,
    original_shapes: Sequence[tuple[int, ...]] | None,
    what: str,
) -> pd.DataFrame:
    for name, seq in (("outputs", outputs), ("original_shapes", original_shapes)):
        if seq is not None and len(seq) != len(images):
            raise InvalidInputError(f"{what} {name}: {len(seq)} entries for {len(images)} images")
    rows = []
    for i, im in enumerate(images):
        shape = original_shapes[i] if original_shapes is not None else None
        row: dict[str, float] = image_features(im, original_shape=shape, name=f"{what}[{i}]")
        row.update(reducer.embed(im))
        if outputs is not None:
            row.update({k: float(v) for k, v in outputs[i].items() if column_kind(k)})
        rows.append(row)
    return pd.DataFrame(rows)


def build_reference(
    images: Sequence[np.ndarray],
    *,
    model: str,
    model_version: str,
    home: Path | None = None,
    outputs: Sequence[Mapping[str, float]] | None = None,
    groups: Sequence[Any] | None = None,
    original_shapes: Sequence[tuple[int, ...]] | None = None,
    n_components: int = 4,
    calibration: CalibrationSet | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    calibration_window: int = DEFAULT_WINDOW,
    draws: int = DEFAULT_DRAWS,
) -> pd.DataFrame:
    """Build, calibrate and store the reference of one model version; return its frame.

    ``images`` are the training set's model inputs (``preprocess_slice`` output); ``outputs``
    the model's outputs on them (``{"prob_<class>": p, "confidence": c, "area": a}``, any
    subset) to enable prediction drift; ``original_shapes`` the decoded images' shapes, as
    serving logs them; ``groups`` one patient key per image (never stored). ``calibration``:
    the validation patients' slices, pooled with the reference's to calibrate the alarm
    (:func:`calibrate_alarm`) and not stored. Writes ``reference.parquet``,
    ``embedding.npz`` and ``meta.json`` under :func:`reference_dir`.
    """
    if len(images) < 8:
        raise DatasetError(f"reference for {model} {model_version}: need at least 8 images")
    if groups is not None and len(groups) != len(images):
        raise InvalidInputError(f"groups: {len(groups)} labels for {len(images)} images")
    reducer = EmbeddingReducer.fit_images(list(images), n_components=n_components)
    frame = _rows(images, reducer, outputs, original_shapes, "images")
    if groups is None:
        raise InvalidInputError(f"reference for {model} {model_version}: groups are required")
    pool, pool_groups = frame, list(groups)
    source = "training patients"
    if calibration is not None:
        if calibration.groups is None or len(calibration.groups) != len(calibration.images):
            raise InvalidInputError("calibration groups: one patient key per image expected")
        held = _rows(
            calibration.images,
            reducer,
            calibration.outputs,
            calibration.original_shapes,
            "calibration images",
        )
        pool = pd.concat([frame, held], ignore_index=True)
        # keys of the two sets apart, in case both number their patients from 0
        pool_groups = [("reference", g) for g in pool_groups] + [
            ("calibration", g) for g in calibration.groups
        ]
        source = "training and validation patients"
    thresholds, record = calibrate_alarm(
        pool[[c for c in pool.columns if c in frame.columns]],
        [str(g) for g in pool_groups],
        false_alarm_rate=false_alarm_rate,
        window=calibration_window,
        draws=draws,
        source=source,
    )
    out = reference_dir(model, model_version, home=home)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / _REFERENCE_FILE, index=False)
    reducer.save(out / _EMBEDDING_FILE)
    meta = {
        "model": model,
        "version": model_version,
        "rows": len(frame),
        "groups": None if groups is None else len(set(groups)),
        "statistic": "normed Wasserstein distance (Evidently 'wasserstein')",
        "thresholds": thresholds,
        "calibration": record.to_dict(),
        "created": time.time(),
    }
    (out / _META_FILE).write_text(json.dumps(meta, indent=2))
    return frame


def load_reference(model: str, version: str | None = None, *, home: Path | None = None):
    """The stored reference of ``model`` at ``version`` (None: the most recently built)."""
    if version is None:
        base = _home(home) / "monitoring" / "reference" / model
        built = sorted(base.glob(f"*/{_META_FILE}"), key=lambda p: p.stat().st_mtime)
        if not built:
            raise NotFoundError(f"reference: none built for model {model!r}")
        version = built[-1].parent.name
    path = reference_dir(model, version, home=home)
    if not (path / _META_FILE).is_file():
        raise NotFoundError(f"reference: none built for model {model!r} version {version!r}")
    meta = json.loads((path / _META_FILE).read_text())
    reducer_path = path / _EMBEDDING_FILE
    calibration = meta.get("calibration")
    return Reference(
        model=model,
        version=version,
        frame=pd.read_parquet(path / _REFERENCE_FILE),
        thresholds={k: float(v) for k, v in meta["thresholds"].items()},
        reducer=EmbeddingReducer.load(reducer_path) if reducer_path.is_file() else None,
        path=path,
        # older references stored a string here and no calibrated alarm
        calibration=Calibration.from_dict(calibration) if isinstance(calibration, dict) else None,
    )


@dataclass(frozen=True)
class FeatureScore:
    score: float
    """Normed Wasserstein distance of the window to the reference."""
    threshold: float
    drifted: bool
    kind: str
    """``data``, ``embedding`` or ``prediction``."""


@dataclass(frozen=True)
class DriftResult:
    """One window compared with the reference; :meth:`to_dict` is the ``/v1/drift`` body."""

    model: str
    drift_detected: bool
    drift_share: float
    feature_scores: dict[str, FeatureScore]
    window: dict[str, Any]
    """``size``, ``start`` and ``end`` (ISO times of the oldest and newest prediction)."""
    reference_version: str
    data_drift_share: float
    prediction_drift_share: float | None
    embedding_drift_share: float | None
    drift_share_threshold: float | None
    """The share of drifted columns that flags a window; None under a calibrated alarm."""
    alarm: dict[str, Any] | None = None
    """The calibrated alarm: ``rule``, ``false_alarm_rate``, ``window`` and how the
    thresholds (each column's in ``feature_scores``) were obtained; None when uncalibrated."""
    computed_at: float = field(default_factory=time.time)
    html: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("html")
        return out


def _share(scores: Mapping[str, FeatureScore], kind: str) -> float | None:
    chosen = [s.drifted for s in scores.values() if s.kind == kind]
    return sum(chosen) / len(chosen) if chosen else None


def _window_info(current: pd.DataFrame) -> dict[str, Any]:
    info: dict[str, Any] = {"size": len(current), "start": None, "end": None}
    if "time" in current.columns and len(current):
        times = pd.to_datetime(current["time"], utc=True)
        info["start"], info["end"] = times.min().isoformat(), times.max().isoformat()
    return info


def compute_drift(
    reference_df: pd.DataFrame,
    current_df: pd.DataFrame,
    *,
    model: str,
    thresholds: Mapping[str, float] | None = None,
    drift_share_threshold: float = 0.1,
    reference_version: str = "",
    html: bool = True,
    calibration: Calibration | None = None,
) -> DriftResult:
    """Run Evidently's ``DataDriftPreset`` on the columns both frames share.

    Columns are image statistics, embedding coordinates (``emb_*``) and outputs
    (``prob_*``, ``confidence``, ``area``); a column is drifted when its normed Wasserstein
    distance exceeds its threshold (``thresholds``, else :data:`DEFAULT_THRESHOLD`). With a
    ``calibration`` (the thresholds' own, from :func:`calibrate_alarm`) the window drifted
    when any calibrated column did, at the stated false-alarm rate; without one, when the
    share of drifted columns reaches ``drift_share_threshold``.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if current_df.empty:
        raise InvalidInputError(f"drift for {model}: the current window is empty")
    columns = [
        c
        for c in reference_df.columns
        if column_kind(c) is not None
        and c in current_df.columns
        and current_df[c].notna().any()
        and reference_df[c].notna().any()
        and (calibration is None or c in (thresholds or {}))
    ]
    if not columns:
        raise InvalidInputError(
            f"drift for {model}: the window shares no columns with the reference"
        )
    limits = {c: float((thresholds or {}).get(c, DEFAULT_THRESHOLD)) for c in columns}
    # Evidently's own report flags what the alarm flags: a score above the threshold, and
    # under a calibrated alarm any one such column
    share_limit = drift_share_threshold if calibration is None else 1.0 / len(columns)
    definition = DataDefinition(numerical_columns=columns)
    current = Dataset.from_pandas(
        current_df[columns].astype("float64").reset_index(drop=True), data_definition=definition
    )
    reference = Dataset.from_pandas(
        reference_df[columns].astype("float64").reset_index(drop=True), data_definition=definition
    )
    preset = DataDriftPreset(
        columns=columns,
        method="wasserstein",
        per_column_threshold={c: max(t, _MIN_THRESHOLD) for c, t in limits.items()},
        drift_share=share_limit,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy/pandas chatter on constant columns
        snapshot = Report([preset]).run(current, reference)
    scores: dict[str, FeatureScore] = {}
    share = 0.0
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        if config.get("type", "").endswith("DriftedColumnsCount"):
            share = float(value["share"])
        elif "column" in config:
            name = config["column"]
            score = float(value) if value is not None and math.isfinite(float(value)) else 0.0
            kind = column_kind(name) or "data"
            scores[name] = FeatureScore(score, limits[name], score > limits[name], kind)
    if scores:
        share = sum(s.drifted for s in scores.values()) / len(scores)
    alarm = None
    if calibration is not None:
        alarm = {"rule": "any column's distance above its threshold", **calibration.to_dict()}
    return DriftResult(
        model=model,
        drift_detected=share >= share_limit if calibration is None else share > 0,
        drift_share=share,
        feature_scores=scores,
        window=_window_info(current_df),
        reference_version=reference_version,
        data_drift_share=_share(scores, "data") or 0.0,
        prediction_drift_share=_share(scores, "prediction"),
        embedding_drift_share=_share(scores, "embedding"),
        drift_share_threshold=None if calibration is not None else drift_share_threshold,
        alarm=alarm,
        html=snapshot.get_html_str(as_iframe=False) if html else None,
    )


class PredictionFeatures:
    """What serving logs per prediction: image statistics plus the reference's embedding.

    Looks up (and caches) the stored reference of each model version under ``home``; with
    no reference for that version yet, the most recent one's reducer is used, and with none
    at all only :func:`~medops.monitoring.features.image_features` is logged.
    """

    def __init__(self, home: Path | None = None) -> None:
        self.home = home
        self._reducers: dict[tuple[str, str], EmbeddingReducer | None] = {}

    def _reducer(self, model: str, version: str) -> EmbeddingReducer | None:
        key = (model, version)
        if key not in self._reducers:
            reducer = None
            for wanted in (version, None):
                try:
                    reducer = load_reference(model, wanted, home=self.home).reducer
                    break
                except (NotFoundError, InvalidInputError):
                    continue
            self._reducers[key] = reducer
        return self._reducers[key]

    def __call__(
        self,
        model: str,
        version: str,
        image: np.ndarray,
        *,
        original_shape: tuple[int, ...] | None = None,
    ) -> dict[str, float]:
        out = image_features(image, original_shape=original_shape)
        out.update(self.embedding(model, version, image))
        return out

    def embedding(self, model: str, version: str, image: np.ndarray) -> dict[str, float]:
        """The reference's embedding coordinates of one model input (none without one), for
        a caller that has the image statistics already."""
        reducer = self._reducer(model, version)
        return {} if reducer is None else reducer.embed(image)

    def embeddings(
        self, model: str, version: str, images: Sequence[np.ndarray], *, chunk: int = 32
    ) -> list[dict[str, float]]:
        """:meth:`embedding` of many model inputs of one shape, ``chunk`` at a time."""
        reducer = self._reducer(model, version)
        if reducer is None:
            return [{} for _ in images]
        return [
            row
            for start in range(0, len(images), chunk)
            for row in reducer.embed_batch(np.stack(images[start : start + chunk]))
        ]
