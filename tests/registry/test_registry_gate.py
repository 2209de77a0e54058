"""The promotion gate's decision logic."""

from __future__ import annotations

import math

import pytest

from medops.errors import InvalidInputError
from medops.registry import promotion_gate

MINIMUMS = {"auc": 0.85, "sensitivity": 0.8, "ece": 0.1}


def test_a_first_challenger_that_meets_every_minimum_is_promoted() -> None:
    decision = promotion_gate(
        {"auc": 0.9, "sensitivity": 0.85, "ece": 0.05}, None, minimums=MINIMUMS, tolerance=0.01
    )
    assert decision.promote
    assert any("no champion" in r for r in decision.reasons)
    assert decision.evidence["checks"]["minimum:ece"]["passed"]
    assert decision.failures == []


def test_a_challenger_below_a_minimum_is_kept_out_even_without_a_champion() -> None:
    decision = promotion_gate(
        {"auc": 0.9, "sensitivity": 0.7, "ece": 0.05}, None, minimums=MINIMUMS, tolerance=0.01
    )
    assert not decision.promote
    assert any("sensitivity" in r and "fails" in r for r in decision.reasons)


def test_a_lower_is_better_metric_above_its_ceiling_fails() -> None:
    decision = promotion_gate(
        {"auc": 0.9, "sensitivity": 0.9, "ece": 0.2}, None, minimums=MINIMUMS, tolerance=0.0
    )
    assert not decision.promote
    assert any(r.startswith("ece") and "at most" in r for r in decision.reasons)


def test_a_challenger_worse_than_the_champion_beyond_tolerance_is_kept_out() -> None:
    champion = {"auc": 0.95, "sensitivity": 0.9, "ece": 0.03}
    challenger = {"auc": 0.92, "sensitivity": 0.9, "ece": 0.03}
    decision = promotion_gate(challenger, champion, minimums=MINIMUMS, tolerance={"auc": 0.02})
    assert not decision.promote
    assert decision.evidence["checks"]["versus:auc"]["passed"] is False
    # only the failed check, for whoever is told why (every check stays in the reasons)
    assert decision.failures == [
        "auc: challenger 0.9200 vs champion 0.9500 (beyond tolerance 0.02)"
    ]
    assert len(decision.reasons) == 4


def test_a_slightly_worse_challenger_within_tolerance_and_a_better_one_are_promoted() -> None:
    champion = {"auc": 0.95, "sensitivity": 0.9, "ece": 0.03}
    within = promotion_gate(
        {"auc": 0.945, "sensitivity": 0.9, "ece": 0.035},
        champion,
        minimums=MINIMUMS,
        tolerance=0.01,
    )
    better = promotion_gate(
        {"auc": 0.97, "sensitivity": 0.92, "ece": 0.02},
        champion,
        minimums=MINIMUMS,
        tolerance=0.0,
    )
    assert within.promote and better.promote


def test_a_missing_or_nan_metric_fails_its_check() -> None:
    decision = promotion_gate({"auc": math.nan}, None, minimums={"auc": 0.5})
    assert not decision.promote
    assert "missing" in decision.reasons[0]


def test_a_gate_with_nothing_to_check_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        promotion_gate({"auc": 0.9}, None, minimums={}, tolerance=0.0)
