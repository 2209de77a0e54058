"""Calibrated drift alarms on synthetic patients: the stated false-alarm rate, detection, and
the monitor judging with the thresholds stored beside the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from medops.errors import DatasetError
from medops.monitoring.drift import (
    CalibrationSet,
    ReferenceDistances,
    build_reference,
    calibrate_alarm,
    draw_stream_windows,
    load_reference,
    normed_wasserstein,
)
from medops.monitoring.metrics import MonitorMetrics
from medops.monitoring.monitor import Monitor
from medops.monitoring.store import PredictionRecord, PredictionStore

COLUMNS = ["p50", "noise", "emb_0", "emb_1"]


def _patients(rng: np.random.Generator, count: int, slices: int = 40) -> tuple[pd.DataFrame, list]:
    """Rows of ``count`` patients: a per-patient offset (sd 0.3) plus slice noise (sd 1)."""
    rows, groups = [], []
    for k in range(count):
        offset = rng.normal(0.0, 0.3, len(COLUMNS))
        rows.append(rng.normal(offset, 1.0, (slices, len(COLUMNS))))
        groups += [f"p{k}"] * slices
    return pd.DataFrame(np.concatenate(rows), columns=COLUMNS), groups


def test_the_fast_distance_is_evidentlys_normed_wasserstein() -> None:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"p50": rng.normal(size=333), "rows": np.full(333, 256.0)})
    windows = np.stack(
        [np.column_stack([rng.gamma(2.0, size=70), np.full(70, 224.0)]) for _ in range(4)]
    )
    fast = ReferenceDistances(reference, ["p50", "rows"])(windows)
    for b in range(4):
        for c, name in enumerate(["p50", "rows"]):
            expected = normed_wasserstein(reference[name].to_numpy(), windows[b, :, c])
            assert fast[b, c] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_stream_windows_are_consecutive_whole_studies_in_random_patient_order() -> None:
    # row value = patient * 1000 + slice: a window must read as runs of consecutive slices
    groups = np.repeat(np.arange(12), 30)
    values = (groups * 1000 + np.tile(np.arange(30), 12)).astype(float)[:, None]
    windows = draw_stream_windows(
        values, groups, window=100, draws=300, rng=np.random.default_rng(0)
    )[:, :, 0]
    starts = set()
    for window in windows:
        patient, slice_ = window // 1000, window % 1000
        # runs of one study: consecutive slices of one patient
        runs = np.split(np.arange(100), np.flatnonzero(np.diff(window) != 1) + 1)
        assert len(runs) >= 4  # 100 predictions of 30-slice studies span four or five
        # every study but the first and the last of the window is whole
        assert all(slice_[run[0]] == 0 and slice_[run[-1]] == 29 for run in runs[1:-1])
        starts.add(int(patient[0]))
    assert starts == set(range(12))  # patients in random order


def test_calibration_reaches_its_stated_false_alarm_rate_and_detects_a_clear_shift() -> None:
    rng = np.random.default_rng(1)
    # the rate is a tail of the patient-to-patient spread: it takes many patients to pin down
    pool, groups = _patients(rng, 300, slices=20)
    thresholds, record = calibrate_alarm(pool, groups, false_alarm_rate=0.05, draws=2000)
    assert record.calibration_rate <= 0.05 and record.groups == 300 and record.window == 100
    assert record.traffic.startswith("whole studies")
    # the rate on folds left out of the calibration estimates that of unseen patients
    assert record.heldout_rate is not None and abs(record.heldout_rate - 0.05) <= 0.03
    reference = ReferenceDistances(pool, COLUMNS)
    limits = np.array([thresholds[c] for c in COLUMNS])

    # 2,000 windows of 100 predictions streamed from 200 patients never seen in calibration
    unseen, unseen_groups = _patients(rng, 200, slices=20)
    healthy = draw_stream_windows(
        unseen[COLUMNS].to_numpy(), np.asarray(unseen_groups), window=100, draws=2000, rng=rng
    )
    rate = float((reference(healthy) > limits).any(axis=1).mean())
    # the target within sampling error: a window holds five patients, so the error is that
    # of a 5 % tail of five-patient mixtures seen in 300 and in 200 patients
    assert 0.05 - 0.03 <= rate <= 0.05 + 0.03, rate

    shifted = healthy.copy()
    shifted[:, :, COLUMNS.index("noise")] += 1.0  # 1 sd of the slices: a clear shift
    detected = (reference(shifted[:500]) > limits).any(axis=1).mean()
    assert detected >= 0.95, detected


def test_calibration_refuses_too_few_patients_to_hold_any_out() -> None:
    pool, groups = _patients(np.random.default_rng(2), 2)
    with pytest.raises(DatasetError, match="too few"):
        calibrate_alarm(pool, groups)


def _images(rng: np.random.Generator, n: int, brightness: float = 0.5) -> list[np.ndarray]:
    return [
        np.clip(rng.normal(brightness, 0.1, (3, 32, 32)), 0, 1).astype(np.float32) for _ in range(n)
    ]


def test_the_monitor_judges_with_the_stored_threshold_and_states_its_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    build_reference(
        _images(rng, 120),
        model="m",
        model_version="1",
        home=tmp_path,
        groups=[i // 12 for i in range(120)],
        calibration=CalibrationSet(_images(rng, 48), groups=[i // 12 for i in range(48)]),
        draws=400,
    )
    reference = load_reference("m", "1", home=tmp_path)
    assert reference.calibration is not None and reference.calibration.window == 100
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    with PredictionStore(url) as store:
        for i, image in enumerate(_images(rng, 120)):
            store.record(
                PredictionRecord(
                    request_id=f"r{i}",
                    model="m",
                    version="1",
                    variant="champion",
                    probabilities={"tumour": 0.5},
                    features=reference.features(image),
                    time=1_700_000_000.0 + i,
                )
            )

    def evaluate():
        monitor = Monitor(
            PredictionStore(url), MonitorMetrics(CollectorRegistry()), home=tmp_path, min_window=10
        )
        return monitor.evaluate("m").drift

    drift = evaluate()
    assert drift is not None and drift.window["size"] == 100  # the calibrated window
    assert drift.alarm is not None and drift.alarm["false_alarm_rate"] == 0.01
    assert {k: s.threshold for k, s in drift.feature_scores.items()} == reference.thresholds

    # the monitor reads the stored threshold as it is: lower one below its score
    meta_path = reference.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["thresholds"]["p50"] = drift.feature_scores["p50"].score / 2
    meta_path.write_text(json.dumps(meta))
    lowered = evaluate()
    assert lowered is not None and lowered.drift_detected
    assert lowered.feature_scores["p50"].drifted
    assert lowered.feature_scores["p50"].threshold == meta["thresholds"]["p50"]


def test_a_window_shorter_than_the_calibrated_one_gets_no_verdict(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    build_reference(
        _images(rng, 60), model="m", model_version="1", home=tmp_path,
        groups=[i // 6 for i in range(60)], draws=200,
    )  # fmt: skip
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    reference = load_reference("m", "1", home=tmp_path)
    with PredictionStore(url) as store:
        for i, image in enumerate(_images(rng, 50)):
            store.record(
                PredictionRecord(
                    request_id=f"r{i}", model="m", version="1", variant="champion",
                    probabilities={"tumour": 0.5}, features=reference.features(image),
                )
            )  # fmt: skip
    monitor = Monitor(
        PredictionStore(url), MonitorMetrics(CollectorRegistry()), home=tmp_path, min_window=10
    )
    evaluation = monitor.evaluate("m")
    assert evaluation.drift is None
    assert "calibrated for" in (evaluation.note or "")
