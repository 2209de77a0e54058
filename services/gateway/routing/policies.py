"""Routing policies as small pure functions: buckets, split tables and Thompson sampling.

A split is a table of 100 slots, one per percent: variant ``i`` owns a contiguous run of
``weight_i`` slots, laid out in document order. A request draws a slot (from the hash of its
routing key, or at random) and gets the slot's variant. Because the runs are contiguous and in a
fixed order, raising a challenger's weight only moves slots (and so keys) from its neighbour,
the champion, to the challenger: assignment is monotone.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

BUCKETS = 100


def bucket(key: str) -> int:
    """The stable slot in [0, 100) of a routing key: sha256, so the raw key is never kept."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    # 2**64 mod 100 is 16: the bias of the modulo is below 1e-18 per slot
    return int.from_bytes(digest[:8], "big") % BUCKETS


def split_table(weights: Sequence[int]) -> tuple[int, ...]:
    """Slot -> variant index for integer percent weights summing to 100."""
    if sum(weights) != BUCKETS or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative and sum to {BUCKETS}, got {list(weights)}")
    table: list[int] = []
    for index, weight in enumerate(weights):
        table.extend([index] * weight)
    return tuple(table)


def gate_unready(table: Sequence[int], unready: set[int], baseline: int) -> tuple[int, ...]:
    """Give the slots of unready variants to the baseline; every other slot keeps its variant."""
    return tuple(baseline if i in unready else i for i in table)


def effective_weights(table: Sequence[int], count: int) -> list[int]:
    """Percent of traffic each of ``count`` variants gets from a split table."""
    weights = [0] * count
    for i in table:
        weights[i] += 1
    return weights


def thompson_pick(
    arms: Sequence[int], posteriors: Sequence[Sequence[float]], rng: random.Random
) -> int:
    """Thompson sampling: draw from each arm's Beta(alpha, beta) and take the best draw.

    ``posteriors[i]`` belongs to ``arms[i]``; returns the chosen arm (a variant index).
    """
    best_arm, best_draw = arms[0], -1.0
    for arm, posterior in zip(arms, posteriors, strict=True):
        draw = rng.betavariate(posterior[0], posterior[1])
        if draw > best_draw:
            best_arm, best_draw = arm, draw
    return best_arm
