"""The prediction log: every prediction's outputs and image statistics, and reviewers' feedback.

SQLite in WAL mode with ``synchronous=FULL`` by default (one file, no server; readers never
block the writer), PostgreSQL as an option. :meth:`PredictionStore.record` commits before it
returns, so whatever was acknowledged survives a crash or a restart; concurrent writers share
one commit (group commit), so a busy gateway pays one fsync per group, not per request.
Nothing here may identify a patient: no patient ids, names, UIDs or file names, only a request
id, model facts, outputs and numbers that describe the pixels.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medops.errors import (
    BackendUnavailableError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from medops.rle import validate_rle

_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .-]{0,63}$")
REVIEWER_ROLES = ("radiologist", "resident", "technologist", "annotator", "other")

_PREDICTION_COLUMNS = """
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        variant TEXT NOT NULL,
        version TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        decision TEXT,
        confidence DOUBLE PRECISION,
        area DOUBLE PRECISION,
        probabilities TEXT NOT NULL,
        features TEXT NOT NULL,
        mask_rle TEXT,
        PRIMARY KEY (request_id, model, variant)"""

_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS predictions ({_PREDICTION_COLUMNS})",
    "CREATE INDEX IF NOT EXISTS predictions_model_ts ON predictions (model, ts)",
    # what a shadow variant answered on a copy of a served prediction (never served: the
    # monitor's windows leave it out; the review queue compares it with the served answer)
    f"CREATE TABLE IF NOT EXISTS shadow_predictions ({_PREDICTION_COLUMNS})",
    "CREATE INDEX IF NOT EXISTS shadow_predictions_model_ts ON shadow_predictions (model, ts)",
    """CREATE TABLE IF NOT EXISTS feedback (
        request_id TEXT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        label TEXT,
        mask_rle TEXT,
        reviewer_role TEXT NOT NULL
    )""",
)


def _check_token(value: str, field_name: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidInputError(
            f"{field_name}: expected 1-128 characters of letters, digits and ._:@+-, got {value!r}"
            if isinstance(value, str) and len(value) <= 64
            else f"{field_name}: expected 1-128 characters of letters, digits and ._:@+-"
        )
    return value


def _check_numbers(values: Mapping[str, float], field_name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidInputError(f"{field_name}: bad key {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(f"{field_name}.{key}: expected a number")
        if not math.isfinite(float(value)):
            raise InvalidInputError(f"{field_name}.{key}: not a finite number")
        out[key] = float(value)
    return out


@dataclass(frozen=True)
class PredictionRecord:
    """One logged prediction; identifying data never goes in here."""

    request_id: str
    model: str
    version: str
    variant: str
    probabilities: Mapping[str, float]
    """Class name -> probability (classifiers), or e.g. ``{"max": ...}`` for the segmenter."""
    features: Mapping[str, float]
    """:func:`~medops.monitoring.features.image_features` plus embedding coordinates."""
    decision: str | None = None
    """The class the service answered with (classifiers)."""
    confidence: float | None = None
    area: float | None = None
    """Predicted lesion area (segmenter), in mm² when the pixel spacing is known."""
    mask_rle: Mapping[str, Any] | None = None
    """The predicted mask (segmenter), COCO RLE, to score reviewers' corrections with Dice."""
    time: float = field(default_factory=time.time)
    """Unix time of the prediction, seconds."""

    def validated(self) -> PredictionRecord:
        """Checked copy; raises :class:`InvalidInputError` naming the bad field."""
        _check_token(self.request_id, "request_id")
        _check_token(self.model, "model")
        _check_token(self.version, "version")
        _check_token(self.variant, "variant")
        _check_numbers(self.probabilities, "probabilities")
        _check_numbers(self.features, "features")
        if self.decision is not None and not _KEY.match(self.decision):
            raise InvalidInputError(f"decision: bad class name {self.decision!r}")
        for name in ("confidence", "area", "time"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise InvalidInputError(f"{name}: not a finite number")
        if self.mask_rle is not None:
            validate_rle(self.mask_rle, field="mask_rle")
        return self


def _clean_rle(rle: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of an RLE :func:`validate_rle` accepted (its other keys dropped)."""
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}


@dataclass
class _Pending:
    """One caller's rows waiting for a group commit; ``done`` once the commit was tried."""

    rows: list[tuple[Any, ...]]
    done: bool = False
    error: BaseException | None = None


def _sqlite_path(url: str) -> str:
    # SQLAlchemy's spelling: sqlite:///relative.db, sqlite:////absolute.db, sqlite:///:memory:
    rest = url[len("sqlite://") :]
    if not rest.startswith("/"):
        raise InvalidInputError(f"store url: expected sqlite:///PATH, got {url!r}")
    path = rest[1:]
    if not path:
        raise InvalidInputError("store url: sqlite URL without a file path")
    return path


class PredictionStore:
    """The prediction log behind a URL: ``sqlite:///PATH`` (default) or ``postgresql://...``.

    Thread-safe (one connection behind a lock); open one store per process. Several
    processes may share a SQLite file (WAL: the gateway writes, the monitor reads).

    ``group_commit`` (default): writers arriving while a commit is under way wait for it,
    then the first of them commits everyone's records in one transaction; each call still
    returns only once its own records are durable, and a record that fails (a repeated id)
    fails its own call only. Off: one commit per call.
    """

    def __init__(self, url: str, *, group_commit: bool = True) -> None:
        self.url = url
        self.group_commit = group_commit
        self._lock = threading.RLock()
        self._group = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False
        if url.startswith("sqlite:"):
            self.dialect = "sqlite"
            path = _sqlite_path(url)
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so an acknowledged write survives power
            # loss, not only a process crash
            conn.execute("PRAGMA synchronous=FULL")
            self._conn: Any = conn
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            try:
                import psycopg
            except ImportError as exc:  # optional dependency
                raise BackendUnavailableError(
                    "store url: postgresql:// needs the psycopg package (pip install psycopg)"
                ) from exc
            try:
                self._conn = psycopg.connect(url)
            except psycopg.OperationalError as exc:
                raise BackendUnavailableError(
                    "store: cannot connect to the PostgreSQL prediction log"
                ) from exc
        else:
            raise InvalidInputError(
                f"store url: unsupported scheme in {url.split(':', 1)[0]!r} "
                "(use sqlite:///PATH or postgresql://...)"
            )
        with self._transaction() as cur:
            for statement in _SCHEMA:
                cur.execute(statement)

    # -- plumbing -------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        # the SQL is portable but for the placeholder style
        return statement.replace("?", "%s") if self.dialect == "postgresql" else statement

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                yield cur
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()

    def _is_unique_violation(self, exc: Exception) -> bool:
        if isinstance(exc, sqlite3.IntegrityError):
            return True
        return type(exc).__name__ in ("UniqueViolation", "IntegrityError")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------

    _INSERT_INTO = (
        "INSERT INTO {table} (request_id, model, variant, version, ts, decision, confidence,"
        " area, probabilities, features, mask_rle) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    _INSERT = _INSERT_INTO.format(table="predictions")
    _INSERT_SHADOW = _INSERT_INTO.format(table="shadow_predictions")

    @staticmethod
    def _row(rec: PredictionRecord) -> tuple[Any, ...]:
        rec.validated()
        return (
            rec.request_id,
            rec.model,
            rec.variant,
            rec.version,
            float(rec.time),
            rec.decision,
            None if rec.confidence is None else float(rec.confidence),
            None if rec.area is None else float(rec.area),
            json.dumps({k: float(v) for k, v in rec.probabilities.items()}),
            json.dumps({k: float(v) for k, v in rec.features.items()}),
            # checked by validated() above: the clean copy only (a mask has thousands of runs)
            None if rec.mask_rle is None else json.dumps(_clean_rle(rec.mask_rle)),
        )

    def record(self, rec: PredictionRecord) -> None:
        """Log one prediction; durable when it returns. A repeated (request, model, variant)
        raises :class:`ConflictError`."""
        self.record_many([rec])

    def record_many(self, records: Sequence[PredictionRecord]) -> None:
        """Log several predictions in one transaction: durable when it returns. With group
        commit the transaction may hold other callers' records too; a repeated
        (request, model, variant) raises :class:`ConflictError` here and nowhere else."""
        pending = _Pending([self._row(r) for r in records])
        if not pending.rows:
            return
        if not self.group_commit:
            with self._lock:
                self._write_group([pending])
        else:
            self._join_group(pending)
        if pending.error is not None:
            raise pending.error

    def _join_group(self, pending: _Pending) -> None:
        """Queue ``pending``; the caller that finds no commit under way leads the next one,
        for everything queued by the time it holds the connection."""
        with self._group:
            self._queue.append(pending)
            while self._leading and not pending.done:
                self._group.wait()
            if pending.done:  # a leader committed it while this caller waited
                return
            self._leading = True
        try:
            with self._lock:
                with self._group:
                    group, self._queue = self._queue, []
                self._write_group(group)
        finally:
            with self._group:
                self._leading = False
                self._group.notify_all()

    def _write_group(self, group: list[_Pending]) -> None:
        """Insert every pending caller's rows and commit once; marks each done, with its own
        error. One failing caller is undone alone (a savepoint each) and the rest commit; a
        failed commit fails them all, since none of them is durable."""
        insert = self._sql(self._INSERT)
        cur = self._conn.cursor()
        try:
            if len(group) == 1:
                try:
                    cur.executemany(insert, group[0].rows)
                except Exception as exc:
                    self._conn.rollback()
                    group[0].error = self._write_error(exc)
                    return
            else:
                if self.dialect == "sqlite":
                    # explicit, or releasing the outermost savepoint would commit
                    cur.execute("BEGIN")
                cur.execute("SAVEPOINT grouped")
                try:
                    cur.executemany(insert, [row for p in group for row in p.rows])
                except Exception:
                    # find the culprits: each caller's rows under a savepoint of their own
                    cur.execute("ROLLBACK TO SAVEPOINT grouped")
                    for p in group:
                        cur.execute("SAVEPOINT caller")
                        try:
                            cur.executemany(insert, p.rows)
                        except Exception as exc:
                            cur.execute("ROLLBACK TO SAVEPOINT caller")
                            p.error = self._write_error(exc)
                        cur.execute("RELEASE SAVEPOINT caller")
                cur.execute("RELEASE SAVEPOINT grouped")
            self._conn.commit()
        except BaseException as exc:
            for p in group:
                p.error = p.error or exc
            with contextlib.suppress(Exception):  # a dead connection cannot roll back
                self._conn.rollback()
            raise
        finally:
            cur.close()
            for p in group:
                p.done = True

    def _write_error(self, exc: Exception) -> Exception:
        if self._is_unique_violation(exc):
            conflict = ConflictError("request_id: prediction already logged")
            conflict.__cause__ = exc
            return conflict
        return exc

    def record_shadow(self, records: Sequence[PredictionRecord]) -> None:
        """Log what a shadow variant answered on copies of served predictions (same request
        ids, the shadow's variant and version), in one transaction. A repeated
        (request, model, variant) raises :class:`ConflictError` and logs none of them."""
        rows = [self._row(r) for r in records]
        if not rows:
            return
        try:
            with self._transaction() as cur:
                cur.executemany(self._sql(self._INSERT_SHADOW), rows)
        except Exception as exc:
            raise self._write_error(exc) from None

    def shadows(self, model: str, *, since: float | None = None) -> pd.DataFrame:
        """Shadow answers of ``model`` (newer than ``since``): ``request_id, time, variant,
        version, decision, confidence``, oldest first."""
        query = (
            "SELECT request_id, ts, variant, version, decision, confidence"
            " FROM shadow_predictions WHERE model = ?"
        )
        params: list[Any] = [model]
        if since is not None:
            query += " AND ts >= ?"
            params.append(float(since))
        with self._transaction() as cur:
            cur.execute(self._sql(query + " ORDER BY ts"), params)
            rows = cur.fetchall()
        columns = ["request_id", "time", "variant", "version", "decision", "confidence"]
        return pd.DataFrame(rows, columns=columns)

    def record_feedback(
        self,
        request_id: str,
        label: str | None = None,
        mask_rle: Mapping[str, Any] | None = None,
        *,
        reviewer_role: str = "radiologist",
        time_s: float | None = None,
    ) -> None:
        """Store a reviewer's confirmation or correction of a logged prediction.

        A later call for the same request replaces the earlier one. Raises
        :class:`NotFoundError` for an unknown request id and :class:`InvalidInputError` for
        an empty or malformed body, or a label that is none of the logged classifier's class
        names (the message lists them).
        """
        _check_token(request_id, "request_id")
        if label is None and mask_rle is None:
            raise InvalidInputError("feedback: give a label, a mask_rle, or both")
        if label is not None and (not isinstance(label, str) or not _KEY.match(label)):
            raise InvalidInputError("label: expected a class name")
        if reviewer_role not in REVIEWER_ROLES:
            raise InvalidInputError(f"reviewer_role: expected one of {', '.join(REVIEWER_ROLES)}")
        mask_json = None if mask_rle is None else json.dumps(validate_rle(mask_rle))
        now = time.time() if time_s is None else float(time_s)
        with self._transaction() as cur:
            cur.execute(
                self._sql(
                    "SELECT mask_rle, decision, probabilities FROM predictions WHERE request_id = ?"
                ),
                (request_id,),
            )
            found = cur.fetchall()
            if not found:
                raise NotFoundError(f"request_id: no logged prediction with id {request_id!r}")
            # a label is one of the classes the classifier itself answered with
            classes = sorted({c for _, d, p in found if d is not None for c in json.loads(p)})
            if label is not None and classes and label not in classes:
                raise InvalidInputError(
                    f"label: {label!r} is not a class of the model; expected one of "
                    f"{', '.join(classes)}"
                )
            if mask_rle is not None:
                sizes = {tuple(json.loads(m)["size"]) for m, _, _ in found if m is not None}
                given = tuple(mask_rle["size"])
                if sizes and given not in sizes:
                    raise InvalidInputError(
                        f"mask_rle.size: {list(given)} differs from the predicted mask's "
                        f"{list(next(iter(sizes)))}"
                    )
            cur.execute(
                self._sql(
                    "INSERT INTO feedback (request_id, ts, label, mask_rle, reviewer_role)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET"
                    " ts = excluded.ts, label = excluded.label, mask_rle = excluded.mask_rle,"
                    " reviewer_role = excluded.reviewer_role"
                ),
                (request_id, now, label, mask_json, reviewer_role),
            )

    # -- reads ----------------------------------------------------------------------------

    def count(self, model: str | None = None) -> int:
        """Number of logged predictions (of one model)."""
        with self._transaction() as cur:
            if model is None:
                cur.execute("SELECT COUNT(*) FROM predictions")
            else:
                cur.execute(self._sql("SELECT COUNT(*) FROM predictions WHERE model = ?"), (model,))
            return int(cur.fetchone()[0])

    def models(self) -> list[str]:
        """Models with at least one logged prediction."""
        with self._transaction() as cur:
            cur.execute("SELECT DISTINCT model FROM predictions ORDER BY model")
            return [r[0] for r in cur.fetchall()]

    def has_request(self, request_id: str) -> bool:
        with self._transaction() as cur:
            cur.execute(
                self._sql("SELECT 1 FROM predictions WHERE request_id = ? LIMIT 1"), (request_id,)
            )
            return cur.fetchone() is not None

    def window(
        self,
        model: str,
        *,
        since: float | None = None,
        limit: int | None = None,
        variant: str | None = None,
    ) -> pd.DataFrame:
        """Recent predictions of ``model`` joined to their feedback, oldest first.

        ``since`` (Unix seconds) keeps newer ones; ``limit`` keeps the newest ``limit``.
        Columns: ``request_id, time, model, version, variant, decision, confidence, area,
        mask_rle``, one ``prob_<class>`` per class, one column per image feature, then
        ``feedback_label, feedback_mask_rle, feedback_time, reviewer_role`` (NaN/None when
        no feedback arrived).
        """
        clauses, params = ["p.model = ?"], [model]
        if since is not None:
            clauses.append("p.ts >= ?")
            params.append(float(since))  # type: ignore[arg-type]
        if variant is not None:
            clauses.append("p.variant = ?")
            params.append(variant)
        query = (
            "SELECT p.request_id, p.ts, p.model, p.version, p.variant, p.decision, p.confidence,"
            " p.area, p.mask_rle, p.probabilities, p.features, f.label, f.mask_rle, f.ts,"
            " f.reviewer_role FROM predictions p LEFT JOIN feedback f"
            " ON f.request_id = p.request_id WHERE " + " AND ".join(clauses) + " ORDER BY p.ts DESC"
        )
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        with self._transaction() as cur:
            cur.execute(self._sql(query), params)
            rows = cur.fetchall()
        return _frame(reversed(rows))


def _frame(rows: Iterable[Sequence[Any]]) -> pd.DataFrame:
    records = []
    for r in rows:
        rec: dict[str, Any] = {
            "request_id": r[0],
            "time": r[1],
            "model": r[2],
            "version": r[3],
            "variant": r[4],
            "decision": r[5],
            "confidence": r[6],
            "area": r[7],
            "mask_rle": r[8],
        }
        rec.update({f"prob_{k}": v for k, v in json.loads(r[9]).items()})
        rec.update(json.loads(r[10]))
        rec.update(
            {
                "feedback_label": r[11],
                "feedback_mask_rle": r[12],
                "feedback_time": r[13],
                "reviewer_role": r[14],
            }
        )
        records.append(rec)
    base = [
        "request_id",
        "time",
        "model",
        "version",
        "variant",
        "decision",
        "confidence",
        "area",
        "mask_rle",
    ]
    tail = ["feedback_label", "feedback_mask_rle", "feedback_time", "reviewer_role"]
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=base + tail)
    middle = [c for c in frame.columns if c not in base and c not in tail]
    frame = frame[base + middle + tail]
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    return frame
