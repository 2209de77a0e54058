"""What a pipeline run left in the registry, in words: the gate's verdicts and a summary table.

The verdict is read from what ``Registry.record_gate`` stored on the version (the ``gate.promote``
tag and the ``gate.json`` evidence), never recomputed.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medops.errors import MedopsError
from medops.registry import GATE_PATH, Registry, VersionSummary
from medops.registry.gate import LOWER_IS_BETTER

TAG_GATE = "gate.promote"
HEADLINE = (
    ("auc", "auc"),
    ("sensitivity", "sens"),
    ("specificity", "spec"),
    ("ece", "ece"),
    ("dice_patient_mean", "dice"),
    ("two_stage_dice_patient_mean", "2-stage dice"),
    ("accuracy", "acc"),
)
"""Test metrics shown for a version (registered as ``test_<name>``), with their short labels."""


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class Check:
    """One failed check of the gate, in words."""

    text: str
    """``dice_patient_mean = 0.512, below the floor 0.6``."""
    short: str
    """``dice_patient_mean 0.512 < 0.6``."""


def _failed(
    key: str, check: Mapping[str, Any], overridden: Mapping[str, Any] | None = None
) -> Check | None:
    """``overridden``: the metrics whose floor this run set (``--floor``), so named."""
    if check.get("passed"):
        return None
    kind, _, metric = key.partition(":")
    lower = metric in LOWER_IS_BETTER
    if kind == "minimum":
        value, limit = _number(check.get("value")), _number(check.get("limit"))
        if value is None or limit is None:
            return Check(f"{metric} is missing from the evaluation", f"{metric} missing")
        bound, side, sign = ("ceiling", "above", ">") if lower else ("floor", "below", "<")
        note = " set for this run" if metric in (overridden or {}) else ""
        return Check(
            f"{metric} = {value:.3f}, {side} the {bound} {limit:g}{note}",
            f"{metric} {value:.3f} {sign} {limit:g}",
        )
    if kind == "versus":
        new, old = _number(check.get("challenger")), _number(check.get("champion"))
        tolerance = _number(check.get("tolerance")) or 0.0
        if new is None or old is None:
            return Check(f"{metric} is missing from the evaluation", f"{metric} missing")
        return Check(
            f"{metric} = {new:.3f}, worse than the champion's {old:.3f} by more than {tolerance:g}",
            f"{metric} {new:.3f} vs champion {old:.3f}",
        )
    return Check(f"check {key} failed", key)


@dataclass(frozen=True)
class GateVerdict:
    """The promotion gate's recorded decision on one version."""

    recorded: bool
    promote: bool = False
    failed: tuple[Check, ...] = ()
    promoted_by: str | None = None
    """``gate`` (the gate moved ``champion``) or ``live canary`` (promotion left to it)."""

    def sentence(self) -> str:
        if not self.recorded:
            return "no gate decision recorded"
        if self.promote:
            if self.promoted_by == "live canary":
                return "passed; the live canary decides on promotion"
            return "passed"
        if not self.failed:
            return "kept out (no evidence recorded)"
        return "kept out: " + "; ".join(c.text for c in self.failed)

    def short(self) -> str:
        if not self.recorded:
            return "-"
        if self.promote:
            return "passed" + (" (canary decides)" if self.promoted_by == "live canary" else "")
        return "kept out: " + ", ".join(c.short for c in self.failed) if self.failed else "kept out"


def read_gate(registry: Registry, name: str, version: str) -> GateVerdict:
    """The verdict ``record_gate`` stored on ``name`` ``version`` (tag and ``gate.json``)."""
    verdict = registry.version_tags(name, version).get(TAG_GATE)
    if verdict is None:
        return GateVerdict(recorded=False)
    document: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medops-gate-") as tmp:
        try:
            path = registry.download_artifact(name, version, GATE_PATH, Path(tmp))
            document = json.loads(path.read_text())
        except (MedopsError, OSError, ValueError):
            document = {}
    evidence = document.get("evidence") or {}
    checks = evidence.get("checks") or {}
    overridden = evidence.get("floor_overrides")
    overridden = overridden if isinstance(overridden, Mapping) else {}
    failed = tuple(
        c
        for key, check in checks.items()
        if isinstance(check, Mapping) and (c := _failed(key, check, overridden)) is not None
    )
    promoted_by = evidence.get("promoted_by")
    return GateVerdict(
        recorded=True,
        promote=verdict == "true",
        failed=failed,
        promoted_by=promoted_by if isinstance(promoted_by, str) else None,
    )


def headline(metrics: Mapping[str, float]) -> str:
    """``auc 0.912  sens 0.810``: the test figures a version was registered with."""
    shown = []
    for metric, label in HEADLINE:
        value = _number(metrics.get(f"test_{metric}"))
        if value is not None:
            shown.append(f"{label} {value:.3f}")
    return "  ".join(shown) or "-"


Versions = dict[tuple[str, str], VersionSummary]


def versions(registry: Registry) -> Versions:
    """Every registered (model, version) and its summary."""
    return {(m.name, v.version): v for m in registry.list_models() for v in m.versions}


@dataclass
class Row:
    model: str
    version: str
    aliases: str
    gate: str
    headline: str
    served: str


@dataclass
class Summary:
    """What the demo did, for its closing table."""

    rows: dict[tuple[str, str], Row] = field(default_factory=dict)
    served: dict[tuple[str, str], str] = field(default_factory=dict)
    """(model, version) -> how it was served (``champion``, ``canary: 12 requests``)."""
    skipped: list[str] = field(default_factory=list)
    verdicts: dict[tuple[str, str], GateVerdict] = field(default_factory=dict)

    def add_versions(self, registry: Registry, keys: Iterable[tuple[str, str]]) -> None:
        """Rows for these versions (kept in order of first mention), with the gate's verdict."""
        for name, version in keys:
            if (name, version) not in self.rows:
                verdict = read_gate(registry, name, version)
                self.verdicts[name, version] = verdict
                self.rows[name, version] = Row(name, f"v{version}", "", verdict.short(), "", "")

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def table(self, registry: Registry) -> list[str]:
        """The rows with the registry's current aliases and headline figures, as text lines."""
        current = versions(registry)
        header = Row("model", "version", "aliases", "gate", "test figures", "served")
        rows = [header]
        for key, row in self.rows.items():
            summary = current.get(key)
            row.aliases = ",".join(summary.aliases) if summary and summary.aliases else "-"
            row.headline = headline(summary.metrics) if summary else "-"
            row.served = self.served.get(key, "no")
            rows.append(row)
        columns = ("model", "version", "aliases", "gate", "headline", "served")
        widths = [max(len(str(getattr(r, c))) for r in rows) for c in columns]
        lines = []
        for i, r in enumerate(rows):
            cells = [str(getattr(r, c)).ljust(w) for c, w in zip(columns, widths, strict=True)]
            lines.append("  " + "  ".join(cells).rstrip())
            if i == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        return lines
