"""The review queue: which predictions a reviewer should look at first, and the de-identified
studies kept so that they can.

:class:`ReviewCache` keeps, for a limited time, what the review page needs to reopen an
analysis: its JSON answer and each slice as shown (``medops.clinical.preview``), both made from
the de-identified upload, never the uploaded files. Off by default (``retention_s = 0``); when
on, an entry older than the retention is gone (purged whenever the cache is written or read).
:func:`review_queue` ranks the logged predictions that no reviewer has seen yet: first those
where a shadow variant (a challenger answering copies) decided otherwise than the served
version, then the least confident (the ones whose label teaches the monitor most).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from medops.errors import InvalidInputError, NotFoundError

from .encoders import to_json
from .feedback import FeedbackStore
from .preview import slice_png
from .types import Analysis

log = logging.getLogger("medops.clinical.review")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,100}$")


class WindowStore(Protocol):
    def window(
        self,
        model: str,
        *,
        since: float | None = None,
        limit: int | None = None,
        variant: str | None = None,
    ) -> pd.DataFrame: ...

    def shadows(self, model: str, *, since: float | None = None) -> pd.DataFrame: ...


class PredictionLog(FeedbackStore, WindowStore, Protocol):
    """What the review endpoints need of the prediction log: feedback in, windows out."""


class ReviewCache:
    """De-identified analyses kept on disk for ``retention_s`` seconds (0: nothing is kept)."""

    def __init__(self, folder: Path, retention_s: float) -> None:
        self.folder = folder
        self.retention_s = max(0.0, float(retention_s))

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0

    def _path(self, request_id: str) -> Path:
        if not _ID.match(request_id):
            raise InvalidInputError("request_id: expected an analysis request id")
        return self.folder / f"{request_id}.json"

    def keep(self, analysis: Analysis) -> bool:
        """Keep one analysis (its JSON answer and slice previews); False when off or the
        analysis has no usable request id."""
        if not self.enabled or not analysis.request_id or not _ID.match(analysis.request_id):
            return False
        read = analysis.image
        doc = {
            "kept_at": time.time(),
            "analysis": to_json(analysis),
            "previews": [
                "data:image/png;base64," + base64.b64encode(slice_png(read, k)).decode()
                for k in range(read.image.num_slices)
            ],
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".kept-")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._path(analysis.request_id))
        self.purge()
        return True

    def get(self, request_id: str) -> dict[str, Any]:
        """The kept analysis; 404 when never kept, expired, or keeping is off."""
        self.purge()
        path = self._path(request_id)
        if not self.enabled or not path.is_file():
            why = "keeping studies for review is off" if not self.enabled else "not kept"
            raise NotFoundError(f"no study kept for review under this request id ({why})")
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc

    def has(self, request_id: str) -> bool:
        return (
            self.enabled and _ID.match(request_id) is not None and self._path(request_id).is_file()
        )

    def purge(self, now: float | None = None) -> int:
        """Delete entries older than the retention (all of them when keeping is off)."""
        if not self.folder.is_dir():
            return 0
        limit = (time.time() if now is None else now) - self.retention_s
        gone = 0
        for path in self.folder.glob("*.json"):
            try:
                if not self.enabled or path.stat().st_mtime < limit:
                    path.unlink()
                    gone += 1
            except FileNotFoundError:  # another replica purged it first
                continue
        return gone


def review_queue(
    store: WindowStore, model: str, cache: ReviewCache | None, *, limit: int = 20
) -> list[dict[str, Any]]:
    """The unreviewed predictions of ``model`` among its newest 1000: those a shadow variant
    decided otherwise first, then least confident first: ``{prediction_id, request_id, slice,
    decision, confidence, version, variant, time, kept, shadow, disagrees}`` (``kept``: the
    study can be reopened from the review cache; ``shadow``: ``{variant, version, decision,
    confidence}`` of a shadow's answer on the same slice, or None)."""
    if limit < 1 or limit > 500:
        raise InvalidInputError(f"limit: expected 1 to 500, got {limit}")
    window = store.window(model, limit=1000)
    if window.empty:
        return []
    pending = window[window["feedback_time"].isna() & window["confidence"].notna()]
    shadows = store.shadows(model, since=_seconds(pending["time"].min())) if len(pending) else None
    shadow_of: dict[str, Any] = {}
    if shadows is not None and not shadows.empty:
        # where several shadows answered, the one that disagrees (the newest if more do)
        served = dict(zip(pending["request_id"], pending["decision"], strict=True))
        for row in shadows.itertuples(index=False):
            kept = shadow_of.get(row.request_id)
            if kept is None or kept.decision == served.get(row.request_id):
                shadow_of[row.request_id] = row
    pending = pending.assign(
        disagrees=[
            pid in shadow_of and shadow_of[pid].decision != decision
            for pid, decision in zip(pending["request_id"], pending["decision"], strict=True)
        ]
    )
    pending = pending.sort_values(
        ["disagrees", "confidence", "time"], ascending=[False, True, False]
    ).head(limit)
    out = []
    for row in pending.itertuples(index=False):
        prediction_id = str(row.request_id)
        base, _, index = prediction_id.rpartition(".")
        request_id = base if index.isdigit() else prediction_id
        shadow = shadow_of.get(prediction_id)
        out.append(
            {
                "prediction_id": prediction_id,
                "request_id": request_id,
                "slice": int(index) if index.isdigit() else None,
                "decision": row.decision,
                "confidence": round(float(row.confidence), 6),
                "version": row.version,
                "variant": row.variant,
                "time": round(_seconds(row.time), 3),
                "kept": cache is not None and cache.has(request_id),
                "shadow": None
                if shadow is None
                else {
                    "variant": shadow.variant,
                    "version": shadow.version,
                    "decision": shadow.decision,
                    "confidence": round(float(shadow.confidence), 6),
                },
                "disagrees": bool(row.disagrees),
            }
        )
    return out


def _seconds(value: Any) -> float:
    """Unix seconds of the log's ``time`` column (a pandas Timestamp, or seconds)."""
    return float(value.timestamp()) if hasattr(value, "timestamp") else float(value)
