"""Model cards: what a clinician or an auditor reads before trusting a model version."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medops.modelspec import CLASSIFIER, SEGMENTER, TYPE_CLASSIFIER

INTENDED_USE: dict[str, str] = {
    CLASSIFIER: (
        "Flags axial brain MRI slices (pre-contrast, FLAIR, post-contrast stacked as RGB) that "
        "likely show a lower-grade glioma, to prioritise review. Decision support for "
        "radiologists only; not a diagnosis."
    ),
    SEGMENTER: (
        "Outlines the FLAIR abnormality of lower-grade gliomas on axial brain MRI slices, to "
        "speed up contouring and volume tracking. Every contour must be reviewed by a clinician."
    ),
    TYPE_CLASSIFIER: (
        "Suggests the tumour type (glioma, meningioma, pituitary, none) of a brain MRI slice "
        "for research and triage experiments; not validated for clinical use."
    ),
}

KNOWN_LIMITS: list[str] = [
    "Trained on a small public research cohort (TCGA-LGG, a few institutions); performance on "
    "other scanners, sequences, field strengths or tumour types is unknown.",
    "Slice-level 2D model: no 3D context; very small lesions and slices at the top and bottom "
    "of the brain are the hardest.",
    "Subgroup results below come from very few patients per group and have wide uncertainty.",
    "Probabilities are calibrated on the validation split only; recalibrate after any "
    "distribution shift flagged by monitoring.",
]


def _table(rows: Mapping[str, Any]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for key, value in rows.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


def render_model_card(
    name: str,
    *,
    dataset_version: str,
    metrics: Mapping[str, float],
    subgroups: Mapping[str, Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    version: str | None = None,
    intended_use: str | None = None,
    limits: list[str] | None = None,
) -> str:
    """A Markdown model card: intended use, data version, metrics, subgroups, known limits.

    ``subgroups`` maps a group label (``"sex=F"``, ``"age=40-59"``...) to its metrics and
    counts; it holds no patient identifiers.
    """
    title = f"# Model card: {name}" + (f" (version {version})" if version else "")
    parts = [
        title,
        "## Intended use",
        intended_use or INTENDED_USE.get(name, "Research use only."),
        "## Data",
        f"Dataset version `{dataset_version}`; split by patient into train, validation and "
        "test sets; every figure below is measured on held-out test patients.",
        "## Metrics (held-out test patients)",
        _table(metrics) if metrics else "No metrics were recorded.",
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
    parts += ["## Known limits", "\n".join(f"- {item}" for item in (limits or KNOWN_LIMITS))]
    return "\n\n".join(parts) + "\n"
