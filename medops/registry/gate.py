"""The promotion gate: may a challenger replace the champion?

A pure decision over headline metrics. Both dictionaries must come from the SAME held-out
patients (the pipeline re-evaluates the champion's ONNX on the new test split), so the
comparison is like with like. Recording the decision is the registry's job
(:meth:`medops.registry.Registry.record_gate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from medops.errors import InvalidInputError

LOWER_IS_BETTER: frozenset[str] = frozenset(
    {"ece", "hd95", "hd95_patient_mean", "area_error", "volume_error", "brier", "loss"}
)
"""Metrics where smaller is better; every other gated metric is larger-is-better."""


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict, its reasons (one line per check) and the numbers it saw."""

    promote: bool
    reasons: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    """The reasons of the checks that failed (empty when promoted)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _better(metric: str, a: float, b: float) -> float:
    """How much ``a`` beats ``b`` (positive: better), whatever the metric's direction."""
    return (b - a) if metric in LOWER_IS_BETTER else (a - b)


def promotion_gate(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    *,
    minimums: Mapping[str, float],
    tolerance: Mapping[str, float] | float = 0.0,
) -> GateDecision:
    """Decide whether ``challenger`` becomes champion.

    ``minimums`` are absolute floors (ceilings for lower-is-better metrics such as ``ece``) the
    challenger must meet. Against an existing ``champion``, every metric named in
    ``tolerance`` (a mapping), or every minimum's metric (a single float tolerance), may be worse
    by at most the tolerance. A missing or NaN metric fails its check.
    """
    if not minimums and not tolerance:
        raise InvalidInputError("promotion_gate: give at least one minimum or tolerance to check")
    reasons: list[str] = []
    failures: list[str] = []

    def check(reason: str, passed: bool) -> None:
        reasons.append(reason)
        if not passed:
            failures.append(reason)

    checks: dict[str, dict[str, Any]] = {}

    for metric, floor in minimums.items():
        value = challenger.get(metric)
        if value is None or not math.isfinite(value):
            check(f"{metric}: missing from the challenger's evaluation", False)
            checks[f"minimum:{metric}"] = {"value": value, "limit": floor, "passed": False}
            continue
        passed = _better(metric, float(value), float(floor)) >= 0
        word = "at most" if metric in LOWER_IS_BETTER else "at least"
        verdict = "meets" if passed else "fails"
        check(f"{metric} = {value:.4f} {verdict} the minimum ({word} {floor:g})", passed)
        checks[f"minimum:{metric}"] = {"value": value, "limit": floor, "passed": passed}

    if champion is None:
        reasons.append("no champion yet: the challenger is compared with the minimums only")
    else:
        if isinstance(tolerance, Mapping):
            tolerances = {k: float(v) for k, v in tolerance.items()}
        else:
            tolerances = dict.fromkeys(minimums, float(tolerance))
        for metric, tol in tolerances.items():
            new, old = challenger.get(metric), champion.get(metric)
            if new is None or not math.isfinite(new):
                check(f"{metric}: missing from the challenger's evaluation", False)
                checks[f"versus:{metric}"] = {"challenger": new, "champion": old, "passed": False}
                continue
            if old is None or not math.isfinite(old):
                reasons.append(f"{metric}: the champion has no value; not compared")
                continue
            margin = _better(metric, float(new), float(old))
            passed = margin >= -tol
            check(
                f"{metric}: challenger {new:.4f} vs champion {old:.4f} "
                f"({'within' if passed else 'beyond'} tolerance {tol:g})",
                passed,
            )
            checks[f"versus:{metric}"] = {
                "challenger": new,
                "champion": old,
                "tolerance": tol,
                "passed": passed,
            }

    evidence = {
        "challenger": dict(challenger),
        "champion": dict(champion) if champion is not None else None,
        "minimums": dict(minimums),
        "tolerance": dict(tolerance) if isinstance(tolerance, Mapping) else tolerance,
        "checks": checks,
    }
    return GateDecision(promote=not failures, reasons=reasons, evidence=evidence, failures=failures)
