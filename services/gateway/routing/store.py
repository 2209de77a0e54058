"""The routing state every gateway replica shares: the document, its revision, the progressive
delivery state per model and the one audit trail, in the database the prediction log uses.

Three tables beside the prediction log's (whose schema is left alone): ``routing_document``
(one row: revision, document, time), ``routing_progress`` (per model: when its routing last
changed and the last canary verdict) and ``routing_audit`` (one row per revision). Every change
is one transaction that moves the revision from the one the writer read to the next
(compare-and-set): of two writers on the same revision exactly one commits, the other gets
:class:`RevisionConflictError` naming both revisions. SQLite (one machine, WAL) or PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from medops.errors import BackendUnavailableError, ConflictError, InvalidInputError

log = logging.getLogger("medops.gateway.routing.store")

_metadata = sa.MetaData()
_document = sa.Table(
    "routing_document",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
)
_progress = sa.Table(
    "routing_progress",
    _metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("changed_at", sa.Float, nullable=False),
    sa.Column("verdict", sa.Text),
)
_audit = sa.Table(
    "routing_audit",
    _metadata,
    sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("entry", sa.Text, nullable=False),
)
_ROW = 1  # the one routing document of the fleet


class RevisionConflictError(ConflictError):
    """The document was written against a revision that is no longer the current one."""

    def __init__(self, current: int, given: int) -> None:
        super().__init__(
            f"routing revision {given} is stale: the current revision is {current}; "
            "GET /v1/routing, reapply the change and PUT it with the current revision"
        )
        self.current = current
        self.given = given


@dataclass(frozen=True)
class StoredRouting:
    """The fleet's routing as read from the store."""

    revision: int
    document: dict[str, Any]
    updated_at: str
    changed_at: dict[str, float]
    """Per model: Unix time its routing last changed (when the current step started)."""


def engine_url(url: str) -> str:
    """The SQLAlchemy URL of a store URL (``postgresql://`` is served by psycopg 3)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return url
    raise InvalidInputError(
        f"routing store url: unsupported scheme in {url.split(':', 1)[0]!r} "
        "(use sqlite:///PATH or postgresql://...)"
    )


class RoutingStore:
    """The shared routing state behind a URL: ``sqlite:///PATH`` or ``postgresql://...``."""

    def __init__(self, url: str) -> None:
        target = engine_url(url)
        self.dialect = "sqlite" if target.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite":
            Path(target[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(target, connect_args={"timeout": 30.0})

            @sa.event.listens_for(engine, "connect")
            def _pragmas(conn: Any, _record: Any) -> None:
                # as the prediction log: readers never block the writer, commits are durable
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")

        else:
            engine = sa.create_engine(target, pool_pre_ping=True)
        self._engine: Engine = engine
        self._create_tables()

    def _create_tables(self) -> None:
        # replicas start together: one may create a table between another's check and create
        for attempt in range(3):
            try:
                _metadata.create_all(self._engine)
                return
            except sa.exc.OperationalError as exc:
                if self.dialect == "postgresql" and "connect" in str(exc).lower():
                    raise BackendUnavailableError(
                        "routing store: cannot connect to the PostgreSQL database"
                    ) from None
                if attempt == 2:
                    raise
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                if attempt == 2:
                    raise
            time.sleep(0.1)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """A database that is away answers 503, never a traceback."""
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            log.warning("routing store unavailable", extra={"reason": type(exc).__name__})
            raise BackendUnavailableError(
                f"routing store ({self.dialect}) is unavailable: {type(exc).__name__}"
            ) from None

    # -- reads ----------------------------------------------------------------------------

    def revision(self) -> int:
        """The current revision (0 before the first document); one cheap query."""
        with self._reachable(), self._engine.connect() as conn:
            found = conn.execute(
                sa.select(_document.c.revision).where(_document.c.id == _ROW)
            ).scalar_one_or_none()
        return int(found) if found is not None else 0

    def load(self) -> StoredRouting | None:
        """The fleet's document, revision and per-model step times (None before the first)."""
        with self._reachable(), self._engine.connect() as conn:
            row = conn.execute(sa.select(_document).where(_document.c.id == _ROW)).one_or_none()
            if row is None:
                return None
            changed = conn.execute(sa.select(_progress.c.model, _progress.c.changed_at)).all()
        return StoredRouting(
            revision=int(row.revision),
            document=json.loads(row.document),
            updated_at=str(row.updated_at),
            changed_at={str(m): float(t) for m, t in changed},
        )

    def audit(self) -> list[dict[str, Any]]:
        """The fleet's audit trail, oldest first."""
        with self._reachable(), self._engine.connect() as conn:
            rows = conn.execute(sa.select(_audit.c.entry).order_by(_audit.c.revision)).all()
        return [json.loads(r.entry) for r in rows]

    def progress(self) -> list[dict[str, Any]]:
        """Per model: the revision and time its current step started, and the last verdict."""
        with self._reachable(), self._engine.connect() as conn:
            rows = conn.execute(sa.select(_progress).order_by(_progress.c.model)).all()
        return [
            {
                "model": r.model,
                "revision": int(r.revision),
                "stepStartedAt": float(r.changed_at),
                "lastVerdict": json.loads(r.verdict) if r.verdict else None,
            }
            for r in rows
        ]

    # -- writes ---------------------------------------------------------------------------

    def commit(
        self,
        *,
        expected: int,
        document: Mapping[str, Any],
        updated_at: str,
        entry: Mapping[str, Any],
        changed: Mapping[str, float],
        inside: Callable[[], None] | None = None,
    ) -> int:
        """Move the revision from ``expected`` to ``expected + 1`` with ``document``, its audit
        ``entry`` and the models whose routing ``changed`` (model -> Unix time); returns the
        new revision.

        ``inside`` runs within the transaction, after the compare-and-set has succeeded and
        before the commit, so that a side effect (moving the registry's champion alias) happens
        for the one writer that wins; if it raises, nothing is written. Raises
        :class:`RevisionConflictError` when the revision is no longer ``expected``.
        """
        revision = expected + 1
        body = json.dumps(dict(document), sort_keys=True, separators=(",", ":"))
        record = json.dumps({**entry, "revision": revision}, sort_keys=True, separators=(",", ":"))
        with self._reachable(), self._engine.begin() as conn:
            if expected == 0:
                first = self._insert(_document).values(
                    id=_ROW, revision=revision, document=body, updated_at=updated_at
                )
                inserted = conn.execute(
                    first.on_conflict_do_nothing(index_elements=["id"]).returning(
                        _document.c.revision
                    )
                ).scalar_one_or_none()
                if inserted is None:
                    raise RevisionConflictError(self._current(conn), expected)
            else:
                moved = conn.execute(
                    _document.update()
                    .where(_document.c.id == _ROW, _document.c.revision == expected)
                    .values(revision=revision, document=body, updated_at=updated_at)
                )
                if moved.rowcount != 1:
                    raise RevisionConflictError(self._current(conn), expected)
            conn.execute(_audit.insert().values(revision=revision, entry=record))
            for model, at in changed.items():
                self._upsert_progress(conn, model, revision, at)
            if inside is not None:
                inside()
        return revision

    def record_verdict(self, model: str, verdict: Mapping[str, Any]) -> None:
        """Keep the last canary verdict of ``model`` (any replica's) for the fleet to read."""
        text = json.dumps(dict(verdict), sort_keys=True, separators=(",", ":"), default=str)
        with self._reachable(), self._engine.begin() as conn:
            conn.execute(_progress.update().where(_progress.c.model == model).values(verdict=text))

    def _current(self, conn: sa.Connection) -> int:
        found = conn.execute(
            sa.select(_document.c.revision).where(_document.c.id == _ROW)
        ).scalar_one_or_none()
        return int(found) if found is not None else 0

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which knows ON CONFLICT."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def _upsert_progress(self, conn: sa.Connection, model: str, revision: int, at: float) -> None:
        values = {"revision": revision, "changed_at": at, "verdict": None}
        insert = self._insert(_progress).values(model=model, **values)
        conn.execute(insert.on_conflict_do_update(index_elements=["model"], set_=values))
