"""The prediction log: records, feedback, windows, durability, PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medops.errors import ConflictError, InvalidInputError, NotFoundError
from medops.monitoring.store import PredictionRecord, PredictionStore
from medops.rle import rle_encode


def _rec(i: int, *, model: str = "brain-tumor-classifier", t: float | None = None, **kw):
    base = dict(
        request_id=f"req-{i}",
        model=model,
        version="3",
        variant="champion",
        probabilities={"no_tumour": 0.25, "tumour": 0.75},
        features={"p50": 0.1 * i, "noise": 0.01, "emb_0": -1.0},
        decision="tumour",
        confidence=0.75,
    )
    base.update(kw)
    if t is not None:
        base["time"] = t
    return PredictionRecord(**base)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path):
    with PredictionStore(f"sqlite:///{tmp_path}/log/predictions.db") as s:
        yield s


def test_sqlite_store_runs_in_wal_mode_with_full_sync(store: PredictionStore) -> None:
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_window_returns_newest_predictions_oldest_first_with_features_as_columns(
    store: PredictionStore,
) -> None:
    for i in range(5):
        store.record(_rec(i, t=1000.0 + i))
    store.record(_rec(99, model="brain-tumor-segmenter", t=2000.0))
    win = store.window("brain-tumor-classifier", limit=3)
    assert win["request_id"].tolist() == ["req-2", "req-3", "req-4"]
    assert win["p50"].tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert win["prob_tumour"].tolist() == [0.75] * 3
    assert str(win["time"].dt.tz) == "UTC"
    assert store.window("brain-tumor-classifier", since=1003.0)["request_id"].tolist() == [
        "req-3",
        "req-4",
    ]
    assert store.models() == ["brain-tumor-classifier", "brain-tumor-segmenter"]


def test_feedback_is_joined_to_every_prediction_of_its_request(store: PredictionStore) -> None:
    mask = pd.DataFrame([[0, 1], [1, 1]]).to_numpy().astype(bool)
    store.record(_rec(1))
    store.record(_rec(1, model="brain-tumor-segmenter", mask_rle=rle_encode(mask)))
    store.record_feedback(
        "req-1", label="no_tumour", mask_rle=rle_encode(mask), reviewer_role="radiologist"
    )
    cls = store.window("brain-tumor-classifier")
    seg = store.window("brain-tumor-segmenter")
    assert cls["feedback_label"].tolist() == ["no_tumour"]
    assert json.loads(seg["feedback_mask_rle"].iloc[0]) == rle_encode(mask)
    # a later review replaces the earlier one
    store.record_feedback("req-1", label="tumour")
    assert store.window("brain-tumor-classifier")["feedback_label"].tolist() == ["tumour"]


def test_feedback_labels_are_the_models_own_class_names(store: PredictionStore) -> None:
    store.record(_rec(1))
    for wrong in ("no-tumour", "Tumour", "negative"):
        with pytest.raises(InvalidInputError, match="expected one of no_tumour, tumour"):
            store.record_feedback("req-1", label=wrong)
    assert store.window("brain-tumor-classifier")["feedback_label"].isna().all()
    store.record_feedback("req-1", label="no_tumour")
    assert store.window("brain-tumor-classifier")["feedback_label"].tolist() == ["no_tumour"]


def test_feedback_for_an_unknown_request_is_not_found(store: PredictionStore) -> None:
    with pytest.raises(NotFoundError, match="req-404"):
        store.record_feedback("req-404", label="tumour")


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({}, "give a label"),
        ({"label": "tumour", "reviewer_role": "patient"}, "reviewer_role"),
        ({"mask_rle": {"size": [3, 3], "counts": [9]}}, "differs from the predicted"),
        ({"mask_rle": {"size": [2, 2], "counts": [3]}}, "cover 3 pixels"),
    ],
)
def test_bad_feedback_is_rejected_naming_the_field(
    store: PredictionStore, kwargs: dict, fault: str
) -> None:
    store.record(_rec(1, model="seg", mask_rle={"size": [2, 2], "counts": [4]}))
    with pytest.raises(InvalidInputError, match=fault):
        store.record_feedback("req-1", **kwargs)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"request_id": "Jane Doe/scan.dcm"}, "request_id"),
        ({"variant": ""}, "variant"),
        ({"features": {"patient_name": "Doe^Jane"}}, "features.patient_name"),
        ({"probabilities": {"tumour": float("nan")}}, "probabilities.tumour"),
        ({"decision": "1.2.840.10008 / x"}, "decision"),
    ],
)
def test_records_that_could_carry_free_text_are_refused(
    store: PredictionStore, change: dict, field: str
) -> None:
    with pytest.raises(InvalidInputError, match=field):
        store.record(_rec(1, **change))
    assert store.count() == 0


def test_a_repeated_prediction_is_a_conflict(store: PredictionStore) -> None:
    store.record(_rec(1))
    with pytest.raises(ConflictError):
        store.record(_rec(1))
    store.record(_rec(1, variant="challenger"))  # a shadow prediction of the same request
    assert store.count() == 2


_WRITER = """
import sys
from medops.monitoring.store import PredictionRecord, PredictionStore
store = PredictionStore(sys.argv[1])
i = 0
while True:
    store.record(PredictionRecord(
        request_id=f"w-{i}", model="m", version="1", variant="champion",
        probabilities={"tumour": 0.5}, features={"p50": float(i)}))
    print(i, flush=True)  # the acknowledgement: printed only after record() returned
    i += 1
"""


def test_acknowledged_records_survive_a_killed_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/crash.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, url], stdout=subprocess.PIPE, text=True)
    acked = -1
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 150:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no checkpoint
        proc.wait()
    assert acked >= 150
    with PredictionStore(url) as reopened:
        ids = set(reopened.window("m")["request_id"])
    assert {f"w-{i}" for i in range(acked + 1)} <= ids


def test_postgresql_store_keeps_the_same_contract(postgres_url: str) -> None:
    with PredictionStore(postgres_url) as pg:
        for i in range(3):
            pg.record(_rec(i, t=100.0 + i))
        with pytest.raises(ConflictError):
            pg.record(_rec(0))
        pg.record_feedback("req-1", label="no_tumour")
        pg.record_feedback("req-1", label="tumour")
        with pytest.raises(NotFoundError):
            pg.record_feedback("nope", label="tumour")
        win = pg.window("brain-tumor-classifier", limit=2)
    assert win["request_id"].tolist() == ["req-1", "req-2"]
    assert win["feedback_label"].tolist()[0] == "tumour"
    assert win["p50"].tolist() == pytest.approx([0.1, 0.2])
    with PredictionStore(postgres_url) as again:  # survives a reconnect
        assert again.count("brain-tumor-classifier") == 3
