"""One evaluation of the monitor: window -> drift and quality -> gauges -> retraining policy.

Transport-neutral (no web framework): ``services.monitor`` runs :meth:`Monitor.evaluate_all`
periodically and serves :meth:`Monitor.latest`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medops.errors import MedopsError, NotFoundError
from medops.monitoring.drift import DriftResult, Reference, compute_drift, load_reference
from medops.monitoring.metrics import MonitorMetrics
from medops.monitoring.policy import RetrainAction, RetrainPolicy, TriggerEvent
from medops.monitoring.quality import Quality, window_quality
from medops.monitoring.store import PredictionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation of one model found."""

    model: str
    window_size: int
    drift: DriftResult | None
    """None when the window is smaller than ``min_window`` (or than the window the
    reference's alarm is calibrated for) or no reference exists."""
    quality: Quality
    trigger: TriggerEvent | None
    note: str | None = None


class Monitor:
    """Compares recent predictions of each model with its reference and acts on the result."""

    def __init__(
        self,
        store: PredictionStore,
        metrics: MonitorMetrics,
        *,
        home: Path,
        models: Sequence[str] = (),
        policy: RetrainPolicy | None = None,
        actions: Sequence[RetrainAction] = (),
        window_size: int = 500,
        min_window: int = 100,
        drift_share_threshold: float = 0.1,
        negative_label: str = "no_tumour",
        history_size: int = 1000,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.home = home
        self.models = list(models)
        self.policy = policy or RetrainPolicy()
        self.actions = list(actions)
        self.window_size = window_size
        self.min_window = min_window
        self.drift_share_threshold = drift_share_threshold
        self.negative_label = negative_label
        self._latest: dict[str, Evaluation] = {}
        self._history: dict[str, deque[tuple[float, Evaluation]]] = {}
        self.history_size = history_size
        self._references: dict[tuple[str, str | None], Reference] = {}
        self._lock = threading.Lock()

    def _reference(self, model: str, version: str | None) -> Reference:
        key = (model, version)
        if key not in self._references:
            try:
                self._references[key] = load_reference(model, version, home=self.home)
            except NotFoundError:
                if version is None:
                    raise
                # no reference for this exact version (yet): the most recent one, not cached,
                # so the version's own reference is picked up once it is built
                return load_reference(model, None, home=self.home)
        return self._references[key]

    def evaluate(self, model: str) -> Evaluation:
        """Evaluate the newest ``window_size`` predictions of ``model``."""
        window = self.store.window(model, limit=self.window_size)
        quality = window_quality(window, negative_label=self.negative_label)
        drift: DriftResult | None = None
        note = None
        if len(window) < self.min_window:
            note = f"window of {len(window)} predictions is below min_window={self.min_window}"
        else:
            version = str(window["version"].mode().iloc[0])
            try:
                ref = self._reference(model, version)
            except NotFoundError as exc:
                note = str(exc)
            else:
                calibrated = None if ref.calibration is None else ref.calibration.window
                if calibrated is not None and len(window) < calibrated:
                    note = (
                        f"window of {len(window)} predictions is below the {calibrated} the "
                        f"drift alarm of version {ref.version} is calibrated for"
                    )
                else:
                    # the stated false-alarm rate holds for windows of the calibrated size
                    drift = compute_drift(
                        ref.frame,
                        window if calibrated is None else window.tail(calibrated),
                        model=model,
                        thresholds=ref.thresholds,
                        drift_share_threshold=self.drift_share_threshold,
                        reference_version=ref.version,
                        calibration=ref.calibration,
                    )
        trigger = self.policy.observe(
            model, drift_detected=None if drift is None else drift.drift_detected, quality=quality
        )
        if trigger is not None and not self._act(trigger):
            self.policy.rearm(model)
            trigger = None
        evaluation = Evaluation(model, len(window), drift, quality, trigger, note)
        self._export(evaluation)
        with self._lock:
            self._latest[model] = evaluation
            kept = self._history.setdefault(model, deque(maxlen=self.history_size))
            kept.append((time.time(), evaluation))
        return evaluation

    def _act(self, event: TriggerEvent) -> bool:
        """Run every action; True when at least one succeeded (or none is configured)."""
        ok = not self.actions
        for action in self.actions:
            try:
                action(event)
                ok = True
            except MedopsError as exc:
                log.error("retrain action %s failed for %s: %s", action.name, event.model, exc)
        if ok:
            self.metrics.retrain_triggers.labels(event.model).inc()
            log.warning("retraining triggered for %s (%s)", event.model, event.reason)
        return ok

    def _export(self, ev: Evaluation) -> None:
        m, model = self.metrics, ev.model
        m.window_size.labels(model).set(ev.window_size)
        if ev.drift is not None:
            m.drift_share.labels(model).set(ev.drift.drift_share)
            m.drift_detected.labels(model).set(1.0 if ev.drift.drift_detected else 0.0)
            for name, score in ev.drift.feature_scores.items():
                m.drift_score.labels(model, name).set(score.score)
        m.feedback_size.labels(model).set(ev.quality.labelled + ev.quality.masks)
        for name, gauge in (
            ("accuracy", m.accuracy),
            ("sensitivity", m.sensitivity),
            ("dice", m.dice),
        ):
            value = getattr(ev.quality, name)
            if value is not None:
                gauge.labels(model).set(value)
                m.quality_score.labels(model, name).set(value)
        m.last_evaluation.labels(model).set(time.time())

    def evaluate_all(self) -> list[Evaluation]:
        """Evaluate every configured model, or every model in the log when none is."""
        out = []
        for model in self.models or self.store.models():
            try:
                out.append(self.evaluate(model))
            except MedopsError as exc:
                log.error("monitor: evaluation of %s failed: %s", model, exc)
        return out

    def history(self, model: str) -> list[dict[str, Any]]:
        """This process's recent evaluations of ``model``, oldest first (drift share, the
        verdict and the quality figures from feedback), for charts over time."""
        with self._lock:
            kept = list(self._history.get(model, ()))
        return [
            {
                "time": round(at, 3),
                "window_size": ev.window_size,
                "drift_share": None if ev.drift is None else ev.drift.drift_share,
                "drift_detected": None if ev.drift is None else ev.drift.drift_detected,
                "quality": ev.quality.to_dict(),
                "note": ev.note,
            }
            for at, ev in kept
        ]

    def latest(self, model: str | None = None) -> Evaluation:
        """The latest evaluation of ``model`` (None: the first configured or evaluated)."""
        with self._lock:
            if model is None:
                names = self.models or sorted(self._latest)
                model = names[0] if names else None
            if model is None or model not in self._latest:
                raise NotFoundError(f"drift: no evaluation yet for model {model!r}")
            return self._latest[model]
