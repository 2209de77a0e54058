"""Data, prediction and embedding drift of a window of predictions against the reference.

The reference is the training set seen through the same eyes as serving: image statistics
(:func:`~medops.monitoring.features.image_features`), embedding coordinates and, when the
model's outputs on the training images are given, its output probabilities. It is stored
with the model version under ``$MEDOPS_HOME/monitoring/reference/<model>/<version>/``.

Every column is compared with Evidently's normed Wasserstein distance (the distance between
the two distributions in units of the reference's standard deviation): unlike a p-value it
does not call every tiny difference drift once the window is large. Brain MRI varies a lot
from patient to patient, so a single global threshold either misses a bias field or cries
wolf on a new patient mix. Each column's threshold is therefore calibrated on the reference
itself: windows drawn from held-out groups of patients (the ``groups`` given at build time,
used only for this and never stored) are compared with the remaining patients, and the
threshold is the largest distance seen, times a margin.
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
PREDICTION_COLUMNS = ("confidence", "area")
_REFERENCE_FILE = "reference.parquet"
_META_FILE = "meta.json"
_EMBEDDING_FILE = "embedding.npz"


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
    norm = max(float(np.std(reference)), 0.001)
    return float(stats.wasserstein_distance(reference, current) / norm)


def calibrate_thresholds(
    frame: pd.DataFrame,
    groups: Sequence[Any] | None,
    *,
    window: int = 100,
    rounds: int = 100,
    holdout: float = 0.25,
    margin: float = 1.5,
    seed: int = 0,
) -> dict[str, float]:
    """Per-column thresholds from same-distribution windows of the reference.

    Each round holds out ``holdout`` of the groups (patients), draws a window of ``window``
    rows from them and measures each column's distance to the other groups; a column's
    threshold is ``margin`` times the largest distance seen (at least
    :data:`DEFAULT_THRESHOLD`). Without groups, rows are split at random, which is blind to
    patient-to-patient variation: expect more false alarms.
    """
    columns = [c for c in frame.columns if column_kind(c) is not None]
    if len(frame) < 8:
        raise DatasetError(f"reference: {len(frame)} rows are too few to calibrate drift")
    rng = np.random.default_rng(seed)
    labels = np.asarray(groups) if groups is not None else np.arange(len(frame))
    if labels.shape[0] != len(frame):
        raise InvalidInputError(f"groups: {labels.shape[0]} labels for {len(frame)} images")
    unique = np.unique(labels)
    if unique.size < 2:
        raise DatasetError("groups: need at least two groups (patients) to calibrate drift")
    worst = dict.fromkeys(columns, 0.0)
    values = {c: frame[c].to_numpy(dtype=np.float64) for c in columns}
    for _ in range(rounds):
        held = rng.choice(unique, size=max(1, round(holdout * unique.size)), replace=False)
        mask = np.isin(labels, held)
        idx = np.flatnonzero(mask)
        pick = rng.choice(idx, size=min(window, idx.size), replace=idx.size < window)
        for c in columns:
            ref, cur = values[c][~mask], values[c][pick]
            ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
            if ref.size and cur.size:
                worst[c] = max(worst[c], normed_wasserstein(ref, cur))
    return {c: max(DEFAULT_THRESHOLD, margin * d) for c, d in worst.items()}


@dataclass(frozen=True)
class Reference:
    """A stored reference: the frame, its drift thresholds and its embedding reducer."""

    model: str
    version: str
    frame: pd.DataFrame
    thresholds: dict[str, float]
    reducer: EmbeddingReducer | None
    path: Path

    def features(self, image: np.ndarray, *, original_shape: tuple[int, ...] | None = None):
        """Image statistics plus embedding coordinates of one model input: what to log."""
        out = image_features(image, original_shape=original_shape)
        if self.reducer is not None:
            out.update(self.reducer.embed(image))
        return out


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
    calibration_window: int = 100,
) -> pd.DataFrame:
    """Build, calibrate and store the reference of one model version; return its frame.

    ``images`` are the training set's model inputs (``preprocess_slice`` output); ``outputs``
    the model's outputs on them (``{"prob_<class>": p, "confidence": c, "area": a}``, any
    subset) to enable prediction drift; ``groups`` one patient key per image, used only to
    calibrate thresholds and never stored. Writes ``reference.parquet``, ``embedding.npz``
    and ``meta.json`` under :func:`reference_dir`.
    """
    if len(images) < 8:
        raise DatasetError(f"reference for {model} {model_version}: need at least 8 images")
    for name, seq in (("outputs", outputs), ("original_shapes", original_shapes)):
        if seq is not None and len(seq) != len(images):
            raise InvalidInputError(f"{name}: {len(seq)} entries for {len(images)} images")
    reducer = EmbeddingReducer.fit_images(list(images), n_components=n_components)
    rows = []
    for i, im in enumerate(images):
        shape = original_shapes[i] if original_shapes is not None else None
        row: dict[str, float] = image_features(im, original_shape=shape, name=f"images[{i}]")
        row.update(reducer.embed(im))
        if outputs is not None:
            row.update({k: float(v) for k, v in outputs[i].items() if column_kind(k)})
        rows.append(row)
    frame = pd.DataFrame(rows)
    thresholds = calibrate_thresholds(frame, groups, window=calibration_window)
    out = reference_dir(model, model_version, home=home)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / _REFERENCE_FILE, index=False)
    reducer.save(out / _EMBEDDING_FILE)
    meta = {
        "model": model,
        "version": model_version,
        "rows": len(frame),
        "groups": None if groups is None else len(set(groups)),
        "calibration": "patient groups" if groups is not None else "random rows",
        "statistic": "normed Wasserstein distance (Evidently 'wasserstein')",
        "thresholds": thresholds,
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
    return Reference(
        model=model,
        version=version,
        frame=pd.read_parquet(path / _REFERENCE_FILE),
        thresholds={k: float(v) for k, v in meta["thresholds"].items()},
        reducer=EmbeddingReducer.load(reducer_path) if reducer_path.is_file() else None,
        path=path,
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
    drift_share_threshold: float
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
) -> DriftResult:
    """Run Evidently's ``DataDriftPreset`` on the columns both frames share.

    Columns are image statistics, embedding coordinates (``emb_*``) and outputs
    (``prob_*``, ``confidence``, ``area``); a column is drifted when its normed Wasserstein
    distance reaches its threshold (``thresholds``, else :data:`DEFAULT_THRESHOLD`). The
    window drifted when the share of drifted columns reaches ``drift_share_threshold``.
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
    ]
    if not columns:
        raise InvalidInputError(
            f"drift for {model}: the window shares no columns with the reference"
        )
    limits = {c: float((thresholds or {}).get(c, DEFAULT_THRESHOLD)) for c in columns}
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
        per_column_threshold=limits,
        drift_share=drift_share_threshold,
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
            scores[name] = FeatureScore(score, limits[name], score >= limits[name], kind)
    return DriftResult(
        model=model,
        drift_detected=share >= drift_share_threshold,
        drift_share=share,
        feature_scores=scores,
        window=_window_info(current_df),
        reference_version=reference_version,
        data_drift_share=_share(scores, "data") or 0.0,
        prediction_drift_share=_share(scores, "prediction"),
        embedding_drift_share=_share(scores, "embedding"),
        drift_share_threshold=drift_share_threshold,
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
        reducer = self._reducer(model, version)
        if reducer is not None:
            out.update(reducer.embed(image))
        return out
