"""Model cards: what a clinician or an auditor reads before trusting a model version."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medops.errors import InvalidInputError

SINGLE_SPLIT = "single-split"
CROSS_VALIDATED = "cross-validated"
EVALUATIONS = (SINGLE_SPLIT, CROSS_VALIDATED)
"""Values of a version's ``evaluation`` tag: how its figures were measured."""
CI_LOW = "_ci_low"
CI_HIGH = "_ci_high"
"""Suffixes of the metrics holding a figure's bootstrap 95% interval (``test_auc_ci_low``)."""

_EVALUATION_TEXT = {
    SINGLE_SPLIT: (
        "Metrics (single split, held-out test patients)",
        "every figure below is measured once on the held-out test patients of one split; "
        "with few patients such figures move between splits and machines",
    ),
    CROSS_VALIDATED: (
        "Metrics (patient-level cross-validation)",
        "every figure below is cross-validated by patient: each fold's patients are held out "
        "of its training, and figures are the mean (and spread) over folds",
    ),
}

GENERAL_LIMITS: tuple[str, ...] = (
    "Subgroup results below come from very few patients per group and have wide uncertainty.",
    "Probabilities are calibrated on the validation split only; recalibrate after any "
    "distribution shift flagged by monitoring.",
)
"""What every card says of its limits, after the task's own."""


def _shown(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(rows: Mapping[str, Any]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for key, value in rows.items():
        lines.append(f"| {key} | {_shown(value)} |")
    return "\n".join(lines)


def _interval_table(rows: Mapping[str, Any], intervals: Mapping[str, tuple[float, float]]) -> str:
    lines = ["| metric | value | 95% interval |", "|---|---|---|"]
    for key in [*rows, *(k for k in intervals if k not in rows)]:
        bounds = intervals.get(key)
        shown = f"{bounds[0]:.4f} - {bounds[1]:.4f}" if bounds else ""
        lines.append(f"| {key} | {_shown(rows.get(key, ''))} | {shown} |")
    return "\n".join(lines)


def intervals_from_metrics(metrics: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """``{name: (low, high)}`` from metric pairs ``<name>_ci_low`` / ``<name>_ci_high``."""
    out: dict[str, tuple[float, float]] = {}
    for key, low in metrics.items():
        if key.endswith(CI_LOW):
            base = key.removesuffix(CI_LOW)
            high = metrics.get(base + CI_HIGH)
            if high is not None:
                out[base] = (float(low), float(high))
    return out


def render_model_card(
    name: str,
    *,
    dataset_version: str,
    metrics: Mapping[str, float],
    subgroups: Mapping[str, Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    version: str | None = None,
    intended_use: str | None = None,
    limits: Sequence[str] = (),
    evaluation: str = SINGLE_SPLIT,
    intervals: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """A Markdown model card: intended use, data version, metrics, subgroups, known limits.

    ``subgroups`` maps a group label (``"sex=F"``, ``"age=40-59"``...) to its metrics and
    counts; it holds no patient identifiers. ``evaluation`` (``single-split`` or
    ``cross-validated``) says how the figures were measured; ``intervals`` maps a metric to
    its 95% interval (low, high), shown beside it.
    """
    if evaluation not in _EVALUATION_TEXT:
        raise InvalidInputError(
            f"evaluation: {evaluation!r} is not one of {', '.join(EVALUATIONS)}"
        )
    heading, how = _EVALUATION_TEXT[evaluation]
    if intervals:
        table = _interval_table(metrics, intervals)
        if evaluation == SINGLE_SPLIT:
            how += "; intervals are bootstrap 95% intervals over test patients"
    else:
        table = _table(metrics) if metrics else "No metrics were recorded."
    title = f"# Model card: {name}" + (f" (version {version})" if version else "")
    parts = [
        title,
        "## Intended use",
        intended_use or "Research use only.",
        "## Data",
        f"Dataset version `{dataset_version}`; split by patient into train, validation and "
        f"test sets; {how}.",
        f"## {heading}",
        table,
    ]
    if subgroups:
        keys = sorted({k for row in subgroups.values() for k in row})
        lines = ["| group | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for group, row in sorted(subgroups.items()):
            cells = []
            for k in keys:
                v = row.get(k)
                cells.append(f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v)))
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        parts += ["## Subgroup results", "\n".join(lines)]
    if params:
        parts += ["## Training configuration", _table(params)]
    parts += ["## Known limits", "\n".join(f"- {item}" for item in (*limits, *GENERAL_LIMITS))]
    return "\n\n".join(parts) + "\n"
