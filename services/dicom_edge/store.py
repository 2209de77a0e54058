"""Durable files: the spool of received instances and the outbox of results to send.

A result file is written to a temporary name, flushed and fsynced, renamed into place, and its
directory fsynced, so once a write returns the file survives a crash or a kill -9 and a
reader never sees half of one. A received instance costs one sync instead of two: it is
appended to its listener thread's journal and fdatasynced (then it is acknowledged), and
written to its own file without a sync; a checkpoint (before each analysis round) syncs those
files and empties the journals, and a restart replays whatever a journal still holds. Names
are hashes of UIDs: nothing on disk names a patient outside the DICOM files themselves (which
hold patient data, as on any PACS).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUFFIX = ".dcm"


def key_of(uid: str) -> str:
    """A file-system name for a UID that says nothing about it."""
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) durably: each new entry's parent is fsynced."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


def write_durably(path: Path, data: bytes) -> None:
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_unsynced(path: Path, data: bytes) -> None:
    """Whole or absent for readers (a rename), durable only once synced (or replayed)."""
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


_RECORD = struct.Struct(">II")
"""A journal record's head: the length of its relative path, then of its data."""


class _Journal:
    """One listener thread's append-only record of the instances it acknowledged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_dir(path.parent)
        self.owner = threading.current_thread()
        self.lock = threading.Lock()
        self.unsynced: list[Path] = []

    def append(self, relative: str, data: bytes) -> None:
        name = relative.encode()
        record = _RECORD.pack(len(name), len(data)) + name + data
        view = memoryview(record)
        while view:
            view = view[os.write(self.fd, view) :]
        os.fdatasync(self.fd)


def _replay(journal: Path, root: Path) -> int:
    """Write every whole record of a journal durably into place; a torn last record was
    never acknowledged and is dropped."""
    data = journal.read_bytes()
    pos = count = 0
    while pos + _RECORD.size <= len(data):
        name_len, size = _RECORD.unpack_from(data, pos)
        start = pos + _RECORD.size
        if start + name_len + size > len(data):
            break
        relative = data[start : start + name_len].decode()
        target = (root / relative).resolve()
        if root.resolve() not in target.parents:
            break  # not a record this spool wrote
        write_durably(target, data[start + name_len : start + name_len + size])
        pos, count = start + name_len + size, count + 1
    return count


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.parent.exists():
        fsync_dir(path.parent)


@dataclass(frozen=True)
class SpooledSeries:
    key: str
    path: Path
    files: tuple[Path, ...]
    last_arrival: float


class Spool:
    """Received instances by series: ``incoming/<series>/<instance>.dcm``; refused series
    (with the reason) under ``refused/``; instances kept unanalysed under ``kept/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.refused = root / "refused"
        self.kept = root / "kept"
        self.journals = root / "journal"
        for d in (self.incoming, self.refused, self.kept, self.journals):
            ensure_dir(d)
        self.replayed = 0
        """Instances a previous process acknowledged and this one put back from its journals."""
        for journal in sorted(self.journals.glob("*.wal")):
            self.replayed += _replay(journal, root)
            journal.unlink()
            fsync_dir(self.journals)
        self._triggered: set[str] = set()
        self._lock = threading.Lock()
        """Serialises writers (listener threads, the poller) with the analysis removing files."""
        self._local = threading.local()
        self._open: list[_Journal] = []
        self._open_lock = threading.Lock()

    def _journal(self) -> _Journal:
        journal: _Journal | None = getattr(self._local, "journal", None)
        if journal is None:
            journal = _Journal(self.journals / f"{uuid.uuid4().hex}.wal")
            self._local.journal = journal
            with self._open_lock:
                self._open.append(journal)
        return journal

    def put(self, series_uid: str, sop_uid: str, data: bytes, *, analyse: bool = True) -> Path:
        """Store one instance durably (journal, one sync) before returning."""
        folder = self.incoming if analyse else self.kept
        path = folder / key_of(series_uid) / (key_of(sop_uid) + SUFFIX)
        journal = self._journal()
        with journal.lock:
            journal.append(str(path.relative_to(self.root)), data)
            with self._lock:
                _write_unsynced(path, data)
            journal.unsynced.append(path)
        return path

    def checkpoint(self) -> int:
        """Sync the files the journals hold and empty them; returns how many were synced."""
        with self._open_lock:
            journals = list(self._open)
        synced = 0
        for journal in journals:
            with journal.lock:
                folders = set()
                for path in journal.unsynced:
                    try:
                        fd = os.open(path, os.O_RDONLY)
                    except FileNotFoundError:
                        continue  # analysed and forgotten since
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    folders.add(path.parent)
                    synced += 1
                for folder in folders:
                    if folder.exists():
                        fsync_dir(folder)
                os.ftruncate(journal.fd, 0)
                os.fsync(journal.fd)
                journal.unsynced.clear()
                if not journal.owner.is_alive():  # its association ended: drop the file
                    os.close(journal.fd)
                    journal.path.unlink(missing_ok=True)
                    with self._open_lock:
                        self._open.remove(journal)
        return synced

    def series(self) -> list[SpooledSeries]:
        found = []
        for d in sorted(self.incoming.iterdir()):
            if not d.is_dir():
                continue
            files = tuple(sorted(d.glob("*" + SUFFIX)))
            if not files:
                continue
            last = max(f.stat().st_mtime for f in files)
            found.append(SpooledSeries(d.name, d, files, last))
        return found

    def complete(self, quiet_s: float, now: float | None = None) -> list[SpooledSeries]:
        """The series quiet for ``quiet_s`` seconds, or triggered explicitly."""
        now = time.time() if now is None else now
        return [
            s for s in self.series() if s.key in self._triggered or now - s.last_arrival >= quiet_s
        ]

    def trigger(self) -> int:
        """Mark every spooled series complete now (the explicit trigger)."""
        keys = [s.key for s in self.series()]
        self._triggered.update(keys)
        return len(keys)

    def trigger_series(self, series_uid: str) -> None:
        """Mark one series complete now (it arrived whole, e.g. fetched by WADO-RS)."""
        self._triggered.add(key_of(series_uid))

    def done(self, series: SpooledSeries) -> None:
        """Forget the files analysed; instances that arrived since stay for the next round."""
        with self._lock:
            self._done(series)

    def _done(self, series: SpooledSeries) -> None:
        for f in series.files:
            f.unlink(missing_ok=True)
        fsync_dir(series.path)
        self._triggered.discard(series.key)
        if not any(series.path.iterdir()):
            series.path.rmdir()
            fsync_dir(series.path.parent)

    def refuse(self, series: SpooledSeries, reason: str) -> None:
        """Keep a series that cannot be analysed, with the reason, out of the analysis loop."""
        with self._lock:
            self._refuse(series, reason)

    def _refuse(self, series: SpooledSeries, reason: str) -> None:
        target = self.refused / series.key
        if target.exists():
            _remove_tree(target)
        os.replace(series.path, target)
        fsync_dir(self.incoming)
        fsync_dir(self.refused)
        write_durably(target / "reason.json", json.dumps({"reason": reason}).encode())
        self._triggered.discard(series.key)

    def refusals(self) -> list[dict[str, Any]]:
        """The series kept out of the analysis, with why (hashed keys, no identifier)."""
        found = []
        for d in sorted(self.refused.iterdir()):
            try:
                reason = json.loads((d / "reason.json").read_text())["reason"]
            except (OSError, ValueError, KeyError):
                reason = "unknown"
            found.append(
                {"series": d.name, "instances": len(list(d.glob("*" + SUFFIX))), "reason": reason}
            )
        return found

    def pending_instances(self) -> int:
        return sum(len(s.files) for s in self.series())


@dataclass
class DeliveryState:
    created: float
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    last_attempt: float | None = None
    delivered: list[str] = field(default_factory=list)
    """Files of the entry already accepted by the destination."""


@dataclass(frozen=True)
class OutboxEntry:
    id: str
    path: Path
    state: DeliveryState

    @property
    def files(self) -> list[Path]:
        return sorted(self.path.glob("*" + SUFFIX))


class Outbox:
    """Results waiting for delivery: ``outbox/<id>/{*.dcm, state.json}``, written whole
    (a temporary folder renamed into place) so an entry is either absent or complete."""

    STATE = "state.json"

    def __init__(self, root: Path) -> None:
        self.root = root / "outbox"
        ensure_dir(self.root)

    def put(self, entry_id: str, files: dict[str, bytes]) -> bool:
        """Store an entry; False when it is already there (the same result analysed again)."""
        target = self.root / entry_id
        if target.exists():
            return False
        tmp = self.root / f".{entry_id}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        self._write_state(tmp, DeliveryState(created=time.time()))
        fsync_dir(tmp)
        os.replace(tmp, target)
        fsync_dir(self.root)
        return True

    def _write_state(self, folder: Path, state: DeliveryState) -> None:
        write_durably(folder / self.STATE, json.dumps(asdict(state)).encode())

    def entries(self) -> list[OutboxEntry]:
        found = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            try:
                raw: dict[str, Any] = json.loads((d / self.STATE).read_text())
                state = DeliveryState(**raw)
            except (OSError, ValueError, TypeError):
                state = DeliveryState(created=d.stat().st_mtime)
            found.append(OutboxEntry(d.name, d, state))
        return found

    def due(self, now: float | None = None) -> list[OutboxEntry]:
        now = time.time() if now is None else now
        return [e for e in self.entries() if e.state.next_attempt <= now]

    def update(self, entry: OutboxEntry) -> None:
        self._write_state(entry.path, entry.state)

    def delivered(self, entry: OutboxEntry) -> None:
        _remove_tree(entry.path)

    def clear_temporary(self) -> None:
        """Drop half-written entries a crash left (their series is still in the spool)."""
        for d in self.root.glob(".*.tmp"):
            _remove_tree(d)
