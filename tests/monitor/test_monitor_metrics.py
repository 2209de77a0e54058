"""Gateway and monitor metrics: names, label sets, values, one registry per owner."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from medops.monitoring.metrics import STAGES, GatewayMetrics, MonitorMetrics

LABELS: dict[str, Any] = {"model": "brain-tumor-classifier", "version": "3", "variant": "champion"}


def _samples(registry: CollectorRegistry) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_gateway_metrics_carry_model_version_variant_and_nothing_else() -> None:
    registry = CollectorRegistry()
    m = GatewayMetrics(registry)
    for stage in STAGES[:-1]:
        m.observe_stage(**LABELS, stage=stage, seconds=0.01)
    m.observe_request(**LABELS, status=200, seconds=0.2)
    m.observe_request(**LABELS, status=503)
    m.observe_prediction(**LABELS, predicted_class="tumour", confidence=0.93)
    with m.time_stage(**LABELS, stage="infer"):
        pass
    s = _samples(registry)
    requests = {x.labels["status"]: x.value for x in s["medops_requests_total"]}
    assert requests == {"200": 1.0, "503": 1.0}
    assert all(x.labels["stage"] == "total" for x in s["medops_requests_total"])
    counts = {x.labels["stage"]: x.value for x in s["medops_request_duration_seconds_count"]}
    assert counts == {"decode": 1, "preprocess": 1, "infer": 2, "postprocess": 1, "total": 1}
    assert s["medops_predictions_total"][0].labels == {**LABELS, "class": "tumour"}
    assert s["medops_prediction_confidence_sum"][0].value == pytest.approx(0.93)
    allowed = {"model", "version", "variant", "stage", "status", "class", "le"}
    assert all(set(x.labels) <= allowed for xs in s.values() for x in xs)


def test_an_unknown_stage_is_refused() -> None:
    m = GatewayMetrics(CollectorRegistry())
    with pytest.raises(ValueError, match="stage"):
        m.observe_stage(**LABELS, stage="dicom-upload", seconds=1.0)


def test_two_owners_keep_separate_registries() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    GatewayMetrics(a).observe_request(**LABELS, status=200)
    GatewayMetrics(b)  # no "duplicated timeseries" error: no module globals
    assert "medops_requests_total" in _samples(a)
    assert "medops_requests_total" not in _samples(b)


def test_monitor_metrics_export_drift_quality_and_triggers_per_model() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry)
    m.drift_share.labels("seg").set(0.25)
    m.drift_detected.labels("seg").set(1)
    m.accuracy.labels("cls").set(0.9)
    m.quality_score.labels("cls", "accuracy").set(0.9)
    m.dice.labels("seg").set(0.7)
    m.retrain_triggers.labels("seg").inc()
    s = _samples(registry)
    assert s["medops_drift_share"][0].value == 0.25
    assert s["medops_drift_detected"][0].labels == {"model": "seg"}
    assert s["medops_quality_accuracy"][0].value == 0.9
    assert s["medops_quality_dice"][0].value == 0.7
    assert s["medops_quality_score"][0].labels == {"model": "cls", "metric": "accuracy"}
    assert s["medops_retrain_triggers_total"][0].value == 1.0
