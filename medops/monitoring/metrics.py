"""Prometheus metrics of the gateway and the monitor, on a registry the caller owns.

No module-level metric objects: a service creates its registry, hands it here and serves it
on ``/metrics``; tests get a fresh one each. Labels carry model facts only (model, version,
variant, stage, class, status), never anything about a patient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES: Final = ("decode", "preprocess", "infer", "postprocess", "total")
"""Stages of ``medops_request_duration_seconds``."""

LATENCY_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
CONFIDENCE_BUCKETS: Final = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

_MODEL_LABELS: Final = ("model", "version", "variant")


class GatewayMetrics:
    """Request, latency and prediction metrics of the serving path.

    - ``medops_requests_total{model,version,variant,stage,status}``: ``status`` is the HTTP
      status code as text (``"200"``, ``"400"``, ``"503"``...), so error rates are
      ``status=~"5.."``; ``stage`` is always ``total`` (the end-to-end count; dashboards and
      alerts select ``stage="total"``, the same label set as the latency histogram).
    - ``medops_request_duration_seconds{model,version,variant,stage}``: one histogram per
      stage of :data:`STAGES`; ``total`` is the whole request.
    - ``medops_predictions_total{model,version,variant,class}``: the class answered.
    - ``medops_prediction_confidence{model,version,variant}``: the answered class's probability.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "medops_requests",
            "Inference requests by outcome (HTTP status code).",
            (*_MODEL_LABELS, "stage", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "medops_request_duration_seconds",
            "Time spent per request stage.",
            (*_MODEL_LABELS, "stage"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "medops_predictions",
            "Predictions by answered class.",
            (*_MODEL_LABELS, "class"),
            registry=registry,
        )
        self.confidence = Histogram(
            "medops_prediction_confidence",
            "Probability of the answered class.",
            _MODEL_LABELS,
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )

    def observe_request(
        self,
        *,
        model: str,
        version: str,
        variant: str,
        status: int | str,
        seconds: float | None = None,
    ) -> None:
        """Count one finished request; ``seconds`` (if given) feeds the ``total`` stage."""
        self.requests.labels(model, version, variant, "total", str(status)).inc()
        if seconds is not None:
            self.observe_stage(
                model=model, version=version, variant=variant, stage="total", seconds=seconds
            )

    def observe_stage(
        self, *, model: str, version: str, variant: str, stage: str, seconds: float
    ) -> None:
        """Record the duration of one stage (one of :data:`STAGES`)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.duration.labels(model, version, variant, stage).observe(max(0.0, seconds))

    @contextmanager
    def time_stage(self, *, model: str, version: str, variant: str, stage: str) -> Iterator[None]:
        """``with metrics.time_stage(...):`` times the block, also when it raises."""
        start = perf_counter()
        try:
            yield
        finally:
            self.observe_stage(
                model=model,
                version=version,
                variant=variant,
                stage=stage,
                seconds=perf_counter() - start,
            )

    def observe_prediction(
        self, *, model: str, version: str, variant: str, predicted_class: str, confidence: float
    ) -> None:
        """Count the answered class and record its probability."""
        self.predictions.labels(model, version, variant, predicted_class).inc()
        self.confidence.labels(model, version, variant).observe(float(confidence))


class MonitorMetrics:
    """Drift, quality and retraining metrics of the monitor, one series per model.

    - ``medops_drift_share{model}``: share of drifted columns in the latest window.
    - ``medops_drift_detected{model}``: 1 when the latest window drifted, else 0.
    - ``medops_drift_score{model,feature}``: the per-column drift statistic.
    - ``medops_drift_window_size{model}``: predictions in the latest window.
    - ``medops_quality_accuracy{model}``, ``medops_quality_sensitivity{model}``,
      ``medops_quality_dice{model}``: over reviewed predictions of the latest window; the same
      values as ``medops_quality_score{model,metric}`` (``metric`` = accuracy, sensitivity,
      dice) for rules that treat every quality figure alike.
    - ``medops_feedback_window_size{model}``: reviewed predictions in the window.
    - ``medops_retrain_triggers_total{model}``: retraining triggers fired.
    - ``medops_monitor_last_evaluation_timestamp_seconds{model}``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.drift_share = Gauge(
            "medops_drift_share", "Share of drifted columns.", ("model",), registry=registry
        )
        self.drift_detected = Gauge(
            "medops_drift_detected", "1 when the latest window drifted.", ("model",),
            registry=registry,
        )  # fmt: skip
        self.drift_score = Gauge(
            "medops_drift_score",
            "Per-column drift statistic (p-value or distance, see the drift report).",
            ("model", "feature"),
            registry=registry,
        )
        self.window_size = Gauge(
            "medops_drift_window_size", "Predictions in the latest window.", ("model",),
            registry=registry,
        )  # fmt: skip
        self.accuracy = Gauge(
            "medops_quality_accuracy", "Accuracy on reviewed predictions.", ("model",),
            registry=registry,
        )  # fmt: skip
        self.sensitivity = Gauge(
            "medops_quality_sensitivity", "Sensitivity on reviewed predictions.", ("model",),
            registry=registry,
        )  # fmt: skip
        self.dice = Gauge(
            "medops_quality_dice", "Mean Dice against reviewers' masks.", ("model",),
            registry=registry,
        )  # fmt: skip
        self.quality_score = Gauge(
            "medops_quality_score",
            "Quality on reviewed predictions, by metric.",
            ("model", "metric"),
            registry=registry,
        )
        self.feedback_size = Gauge(
            "medops_feedback_window_size", "Reviewed predictions in the window.", ("model",),
            registry=registry,
        )  # fmt: skip
        self.retrain_triggers = Counter(
            "medops_retrain_triggers", "Retraining triggers fired.", ("model",), registry=registry
        )
        self.last_evaluation = Gauge(
            "medops_monitor_last_evaluation_timestamp_seconds",
            "When the latest evaluation finished.",
            ("model",),
            registry=registry,
        )
