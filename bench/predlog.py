"""Prediction-log write throughput: durable records/s against a non-durable baseline.

Same run, same schema, same rows:
- baseline: plain INSERTs into SQLite with ``synchronous=OFF`` (no fsync), one commit per row;
- ``PredictionStore.record``: WAL, ``synchronous=FULL``, one fsync-ed commit per prediction
  (what the gateway gets by default: acknowledged means on disk);
- ``PredictionStore.record_many``: the same, 50 predictions per call;
- concurrent writers (threads calling ``record``, as gateway requests do) at concurrency
  1 / 8 / 32, with and without group commit (callers sharing one commit);
- ``--postgres URL``: the concurrent figures against PostgreSQL too.

    python -m bench predlog   (or: python bench/predlog.py --records 2000)
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from medops.monitoring.features import FEATURE_NAMES
from medops.monitoring.store import _SCHEMA, PredictionRecord, PredictionStore

CONCURRENCY = (1, 8, 32)


def records(n: int, run: str) -> list[PredictionRecord]:
    feats = {name: 0.5 + i / 100 for i, name in enumerate(FEATURE_NAMES)}
    feats.update({f"emb_{i}": 0.1 * i for i in range(4)})
    return [
        PredictionRecord(
            request_id=f"{run}-{i}",
            model="brain-tumor-classifier",
            version="3",
            variant="champion",
            probabilities={"no_tumour": 0.3, "tumour": 0.7},
            features=feats,
            decision="tumour",
            confidence=0.7,
        )
        for i in range(n)
    ]


def bench_baseline(path: Path, recs: list[PredictionRecord]) -> float:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    for statement in _SCHEMA:
        conn.execute(statement)
    rows = [PredictionStore._row(r) for r in recs]
    t0 = time.perf_counter()
    for row in rows:
        conn.execute(PredictionStore._INSERT, row)
        conn.commit()
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(recs) / elapsed


def bench_store(url: str, recs: list[PredictionRecord], batch: int = 1) -> float:
    with PredictionStore(url) as store:
        t0 = time.perf_counter()
        if batch == 1:
            for rec in recs:
                store.record(rec)
        else:
            for i in range(0, len(recs), batch):
                store.record_many(recs[i : i + batch])
        return len(recs) / (time.perf_counter() - t0)


def bench_concurrent(
    url: str, recs: list[PredictionRecord], concurrency: int, *, group_commit: bool
) -> float:
    """Records/s when ``concurrency`` threads each ``record`` their share, one at a time."""
    shares = [recs[i::concurrency] for i in range(concurrency)]
    with PredictionStore(url, group_commit=group_commit) as store:
        start = threading.Barrier(concurrency + 1)

        def write(share: list[PredictionRecord]) -> None:
            start.wait()
            for rec in share:
                store.record(rec)

        threads = [threading.Thread(target=write, args=(share,)) for share in shares]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        return len(recs) / (time.perf_counter() - t0)


def concurrent_table(label: str, url_of: Callable[[str], str], n: int) -> None:
    print(f"  {label}: concurrent writers, records/s (best of two interleaved runs)")
    print(f"    {'conc':>4} {'commit per call':>16} {'group commit':>13} {'ratio':>6}")
    for c in CONCURRENCY:
        best = {False: 0.0, True: 0.0}
        for round_ in range(2):  # interleaved, so a change in load hits both alike
            for group_commit in (bool(round_), not round_):
                run = f"{'g' if group_commit else 's'}{c}-{uuid.uuid4().hex[:8]}"
                rate = bench_concurrent(url_of(run), records(n, run), c, group_commit=group_commit)
                best[group_commit] = max(best[group_commit], rate)
        single, grouped = best[False], best[True]
        print(f"    {c:4d} {single:16.0f} {grouped:13.0f} {grouped / single:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--postgres", default=None, help="postgresql:// URL to measure too")
    args = parser.parse_args()
    n = args.records
    with tempfile.TemporaryDirectory() as tmp:
        base = bench_baseline(Path(tmp) / "baseline.db", records(n, "b"))
        durable = bench_store(f"sqlite:///{tmp}/durable.db", records(n, "d"))
        grouped = bench_store(f"sqlite:///{tmp}/grouped.db", records(n, "g"), batch=50)
        print(f"{n} predictions per configuration (one features row of {len(FEATURE_NAMES) + 4})")
        print(f"  baseline SQLite INSERT, synchronous=OFF (no fsync): {base:9.0f} records/s")
        print(
            f"  PredictionStore.record, WAL + synchronous=FULL:      {durable:9.0f} records/s"
            f"  ({durable / base:.2f}x baseline)"
        )
        print(
            f"  PredictionStore.record_many, 50 per call:            {grouped:9.0f} records/s"
            f"  ({grouped / base:.2f}x baseline)"
        )
        concurrent_table(
            "SQLite WAL + synchronous=FULL", lambda name: f"sqlite:///{tmp}/{name}.db", n
        )
    if args.postgres:
        # one table, fresh request ids per configuration
        concurrent_table("PostgreSQL", lambda _name: args.postgres, n)


if __name__ == "__main__":
    main()
