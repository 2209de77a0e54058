"""The append-only audit trail of routing changes: who (a role), when, what changed, why.

Entries hold model names, variant names, targets, weights and reasons, never routing keys,
request contents or credentials. With a path they are JSON lines appended to a file (so the
trail outlives the process); without one they stay in memory.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from medops.errors import InvalidInputError, MedopsError

from .config import ModelRouting, RoutingConfig


class AuditTrail:
    """Append-only JSON-lines trail; ``entries()`` reads it back in order."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._memory: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry so far, oldest first."""
        if self._path is None:
            with self._lock:
                return [dict(e) for e in self._memory]
        if not self._path.exists():
            return []
        out = []
        for number, line in enumerate(self._path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise InvalidInputError(
                    f"audit trail {self._path.name} line {number} is not JSON"
                ) from None
        return out

    def last_revision(self) -> int:
        """The highest revision recorded so far (0 for an empty trail)."""
        return max((int(e.get("revision", 0)) for e in self.entries()), default=0)

    def append(self, entry: dict[str, Any]) -> None:
        """Record one entry (a JSON object)."""
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        with self._lock:
            if self._path is None:
                self._memory.append(json.loads(line))
                return
            try:
                with self._path.open("a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            except OSError as exc:
                raise MedopsError(
                    f"routing audit trail {self._path.name} cannot be written ({exc.strerror})",
                    status_code=503,
                ) from None


def diff(old: RoutingConfig | None, new: RoutingConfig) -> list[dict[str, Any]]:
    """What changed between two configurations, per model, in plain terms."""
    changes: list[dict[str, Any]] = []
    if old is None:
        if new.mode != "gateway":
            changes.append({"mode": new.mode})
        return changes + [
            {"model": m, "change": "set", **_summary(r)} for m, r in sorted(new.models.items())
        ]
    if old.mode != new.mode:
        changes.append({"mode": [old.mode, new.mode]})
    for model in sorted(set(old.models) | set(new.models)):
        before, after = old.models.get(model), new.models.get(model)
        if before == after:
            continue
        if after is None:
            changes.append({"model": model, "change": "removed (default single champion)"})
        elif before is None:
            changes.append({"model": model, "change": "set", **_summary(after)})
        else:
            changes.append({"model": model, "change": "modified", **_delta(before, after)})
    return changes


def _summary(r: ModelRouting) -> dict[str, Any]:
    out: dict[str, Any] = {
        "strategy": r.strategy,
        "weights": {v.name: v.weight for v in r.variants},
        "targets": {v.name: _target(v.alias, v.version) for v in r.variants},
    }
    if r.shadow is not None:
        out["shadow"] = r.shadow.model_dump(by_alias=True)
    if r.active is not None:
        out["active"] = r.active
    if r.progressive is not None:
        out["progressive"] = r.progressive.model_dump(by_alias=True)
    return out


def _delta(a: ModelRouting, b: ModelRouting) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if a.strategy != b.strategy:
        out["strategy"] = [a.strategy, b.strategy]
    wa = {v.name: v.weight for v in a.variants}
    wb = {v.name: v.weight for v in b.variants}
    weights = {n: [wa.get(n), wb.get(n)] for n in {**wa, **wb} if wa.get(n) != wb.get(n)}
    if weights:
        out["weights"] = weights
    ta = {v.name: _target(v.alias, v.version) for v in a.variants}
    tb = {v.name: _target(v.alias, v.version) for v in b.variants}
    targets = {n: [ta.get(n), tb.get(n)] for n in {**ta, **tb} if ta.get(n) != tb.get(n)}
    if targets:
        out["targets"] = targets
    for field in ("shadow", "active", "progressive"):
        x, y = getattr(a, field), getattr(b, field)
        if x != y:
            out[field] = [_plain(x), _plain(y)]
    return out


def _target(alias: str | None, version: str | None) -> str:
    return f"alias:{alias}" if alias is not None else f"version:{version}"


def _plain(value: Any) -> Any:
    return value.model_dump(by_alias=True) if hasattr(value, "model_dump") else value
