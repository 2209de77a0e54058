"""The audit trail of operator overrides of the registry's aliases (JSON lines).

Entries have the shape of the gateway's routing audit entries (``time``, ``actor``,
``action``, ``changes``, ``reason``) but no ``revision``, which only the gateway's router
assigns: pointing the gateway's ``routing_audit_file`` at the same file shows both in
``GET /v1/routing/audit`` without disturbing its revision count. Entries hold model names,
versions, user names and reasons, never credentials or patient data.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from medops.errors import InvalidInputError, MedopsError

AUDIT_FILE = Path("audit") / "routing.jsonl"
"""The trail's place under the medops home (``MEDOPS_HOME``)."""

_LOCK = threading.Lock()


def default_audit_path(home: Path) -> Path:
    """``<home>/audit/routing.jsonl``."""
    return home / AUDIT_FILE


def check_writable(path: Path) -> None:
    """Raise :class:`MedopsError` (503) unless ``path`` can be appended to, creating nothing
    but its folder: an override that cannot be audited is not made."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise MedopsError(
            f"audit trail {path} cannot be written ({exc.strerror})", status_code=503
        ) from None


def append_entry(path: Path, entry: dict[str, Any]) -> None:
    """Append one entry as one line (one ``write`` in append mode, so whole lines)."""
    line = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)
    check_writable(path)
    with _LOCK:
        try:
            with path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError as exc:
            raise MedopsError(
                f"audit trail {path} cannot be written ({exc.strerror})", status_code=503
            ) from None


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every entry, oldest first (none for a missing file)."""
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            raise InvalidInputError(f"audit trail {path.name} line {number} is not JSON") from None
    return out
