"""Metrics by subgroup (sex, age band, institution) from the per-patient clinical table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medops.evaluation import metrics
from medops.evaluation.classifier import ClassifierEvaluation
from medops.evaluation.segmenter import SegmenterEvaluation
from medops.evaluation.two_stage import TwoStageEvaluation

AGE_BANDS: tuple[tuple[float, str], ...] = ((40, "<40"), (60, "40-59"), (float("inf"), "60+"))
"""Upper bounds (exclusive) and names of the age bands."""
UNKNOWN = "unknown"


def age_band(age: Any) -> str:
    """'<40', '40-59', '60+' or 'unknown'."""
    try:
        value = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    if np.isnan(value):
        return UNKNOWN
    return next(name for bound, name in AGE_BANDS if value < bound)


def _group(patient: Mapping[str, Any] | None, by: str) -> str:
    if patient is None:
        return UNKNOWN
    if by == "age_band":
        return age_band(patient.get("age"))
    value = patient.get(by)
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return UNKNOWN
    return str(value)


def subgroup_metrics(
    results: ClassifierEvaluation
    | SegmenterEvaluation
    | TwoStageEvaluation
    | Sequence[Mapping[str, Any]],
    patients: Mapping[str, Mapping[str, Any]],
    by: Sequence[str] = ("sex", "age_band", "institution"),
) -> dict[str, dict[str, dict[str, float]]]:
    """``{attribute: {group: {metric: value}}}`` for each attribute in ``by``.

    ``patients`` maps patient id to its clinical fields (sex, age, institution, ...; age_band is
    derived from age). A classifier evaluation gives auc, sensitivity, specificity, accuracy and
    n (slices) per group; a segmenter (or two-stage) one gives the per-patient Dice/IoU means and
    n (patients); plain rows (dicts with patient_id) give the mean of each numeric field and n.
    Group keys are attribute values, never patient identifiers.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    if isinstance(results, TwoStageEvaluation):
        results = results.gated
    for attribute in by:
        groups: dict[str, list[int]] = defaultdict(list)
        if isinstance(results, ClassifierEvaluation):
            for i, pid in enumerate(results.patient_ids):
                groups[_group(patients.get(pid), attribute)].append(i)
            out[attribute] = {
                g: _classifier_group(results, np.array(rows)) for g, rows in sorted(groups.items())
            }
            continue
        rows_all = (
            results.per_patient() if isinstance(results, SegmenterEvaluation) else list(results)
        )
        for i, row in enumerate(rows_all):
            groups[_group(patients.get(str(row["patient_id"])), attribute)].append(i)
        out[attribute] = {
            g: _mean_rows([rows_all[i] for i in members]) for g, members in sorted(groups.items())
        }
    return out


def _classifier_group(ev: ClassifierEvaluation, rows: np.ndarray) -> dict[str, float]:
    labels, preds = ev.labels[rows], ev.predictions[rows]
    result = {"n": float(len(rows)), "accuracy": float((labels == preds).mean())}
    if ev.binary:
        truth = labels == ev.positive_class
        positive = preds == ev.positive_class
        result |= {
            "auc": metrics.roc_auc(truth, ev.probs[rows, ev.positive_class]),
            "sensitivity": float(positive[truth].mean()) if truth.any() else float("nan"),
            "specificity": float((~positive[~truth]).mean()) if (~truth).any() else float("nan"),
        }
    return result


def _mean_rows(rows: list[Mapping[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    result = {k: float(np.nanmean([float(r[k]) for r in rows])) for k in keys}
    result["n"] = float(len(rows))
    return result
