"""The prediction log: records, feedback, windows, durability, PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
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


def _shadow_log_is_apart(store: PredictionStore) -> None:
    model = "shadowed-classifier"  # of its own: PostgreSQL's database is the session's
    store.record(_rec(1, model=model, t=100.0))
    store.record_shadow([_rec(1, model=model, variant="challenger", decision="no_tumour", t=101.0)])
    with pytest.raises(ConflictError):
        store.record_shadow([_rec(1, model=model, variant="challenger", t=102.0)])
    shadows = store.shadows(model, since=100.0)
    assert shadows[["request_id", "variant", "decision"]].values.tolist() == [
        ["req-1", "challenger", "no_tumour"]
    ]
    assert store.shadows(model, since=101.5).empty
    # the served log (what the monitor windows) holds the served answer only
    assert store.window(model)["variant"].tolist() == ["champion"]
    assert store.count(model) == 1


def test_shadow_answers_are_logged_apart_from_the_served_ones(store: PredictionStore) -> None:
    _shadow_log_is_apart(store)


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


_CONCURRENT_WRITER = """
import sys, threading
from medops.monitoring.store import PredictionRecord, PredictionStore
store = PredictionStore(sys.argv[1])
printing = threading.Lock()

def write(t):
    i = 0
    while True:
        store.record(PredictionRecord(
            request_id=f"w{t}-{i}", model="m", version="1", variant="champion",
            probabilities={"tumour": 0.5}, features={"p50": float(i)}))
        with printing:  # the acknowledgement: printed only after record() returned
            print(f"w{t}-{i}", flush=True)
        i += 1

for t in range(8):
    threading.Thread(target=write, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_acknowledged_records_of_concurrent_writers_survive_a_killed_writer(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/crash.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CONCURRENT_WRITER, url], stdout=subprocess.PIPE, text=True
    )
    acked: set[str] = set()
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            acked.add(line.strip())
            if len(acked) >= 400:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-group: some callers were waiting for a commit
        proc.wait()
    assert len(acked) >= 400
    assert len({a.split("-")[0] for a in acked}) == 8  # every writer thread got acknowledged
    with PredictionStore(url) as reopened:
        ids = set(reopened.window("m")["request_id"])
    assert acked <= ids


def _commits(store: PredictionStore) -> list[str]:
    """The COMMIT statements SQLite runs on the store's connection from now on."""
    seen: list[str] = []
    store._conn.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


def _queued_while_busy(store: PredictionStore, recs: list[PredictionRecord]) -> list[object]:
    """Each record written by its own thread while the connection is busy (a reader holds
    it), so they all queue; then the connection is freed. Returns each thread's outcome:
    None when acknowledged, else the exception."""
    outcomes: list[object] = [None] * len(recs)

    def write(i: int) -> None:
        try:
            store.record(recs[i])
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(recs))]
    with store._lock:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(store._queue) < len(recs):
            assert time.monotonic() < deadline, "writers did not queue"
            time.sleep(0.01)
    for t in threads:
        t.join(30)
    return outcomes


def test_concurrent_writers_share_one_commit_and_all_are_acknowledged(
    store: PredictionStore,
) -> None:
    commits = _commits(store)
    outcomes = _queued_while_busy(store, [_rec(i) for i in range(16)])
    assert outcomes == [None] * 16
    assert commits == ["COMMIT"]  # one durable commit for sixteen callers
    assert set(store.window("brain-tumor-classifier")["request_id"]) == {
        f"req-{i}" for i in range(16)
    }
    # without group commit: one commit per caller
    store.group_commit = False
    threads = [
        threading.Thread(target=store.record, args=(_rec(i, variant="shadow"),)) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.count() == 16 + 4 and len(commits) == 1 + 4


def test_a_failing_record_fails_only_its_own_caller_in_a_group(store: PredictionStore) -> None:
    store.record(_rec(5))
    commits = _commits(store)
    outcomes = _queued_while_busy(store, [_rec(i) for i in range(10)])
    assert isinstance(outcomes[5], ConflictError)
    assert [o for i, o in enumerate(outcomes) if i != 5] == [None] * 9
    assert commits == ["COMMIT"]
    assert store.count() == 10


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


def test_postgresql_logs_shadow_answers_apart(postgres_url: str) -> None:
    with PredictionStore(postgres_url) as pg:
        _shadow_log_is_apart(pg)


def test_postgresql_group_commit_fails_only_the_conflicting_caller(postgres_url: str) -> None:
    with PredictionStore(postgres_url) as pg:
        pg.record(_rec(103))
        outcomes = _queued_while_busy(pg, [_rec(100 + i) for i in range(6)])
        assert isinstance(outcomes[3], ConflictError)
        assert [o for i, o in enumerate(outcomes) if i != 3] == [None] * 5
    with PredictionStore(postgres_url) as again:  # committed, not merely seen by its session
        assert {f"req-{100 + i}" for i in range(6)} <= set(
            again.window("brain-tumor-classifier")["request_id"]
        )
