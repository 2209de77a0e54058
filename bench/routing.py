"""Routing overhead per request: ``Router.route`` for every strategy against a bare dict lookup.

Each call is timed on its own (perf_counter_ns), so the figures include the timer's cost; the
baseline pays the same cost, and the ratio to it is printed beside p50/p99. Target: p99 < 50 µs.

    python bench/routing.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from array import array
from collections.abc import Callable, Mapping
from typing import Any

from services.gateway.routing import Router

MODEL = "brain-tumor-classifier"
TARGET_P99_US = 50.0


def _two(strategy: str, challenger: int, **extra: Any) -> dict[str, Any]:
    return {
        "models": {
            MODEL: {
                "strategy": strategy,
                "variants": [
                    {"name": "champion", "alias": "champion", "weight": 100 - challenger},
                    {"name": "challenger", "alias": "challenger", "weight": challenger},
                ],
                **extra,
            }
        }
    }


CASES: list[tuple[str, dict[str, Any] | None, str]] = [
    ("single (default)", None, "none"),
    ("canary 10% random", _two("canary", 10), "none"),
    ("ab 50% sticky key", _two("ab", 50), "key"),
    ("override header", _two("canary", 10), "override"),
    ("shadow 100%", _two("shadow", 0, shadow={"variant": "challenger", "percent": 100}), "none"),
    ("canary 10% + shadow 50%", _two("canary", 10, shadow={"variant": "challenger"}), "key"),
    ("bandit 2 arms", _two("bandit", 50), "none"),
    (
        "bluegreen",
        {
            "models": {
                MODEL: {
                    "strategy": "bluegreen",
                    "active": "green",
                    "variants": [
                        {"name": "blue", "alias": "champion", "weight": 0},
                        {"name": "green", "alias": "challenger", "weight": 100},
                    ],
                }
            }
        },
        "none",
    ),
    (
        "progressive canary",
        _two("canary", 5, progressive={"variant": "challenger", "steps": [5, 25, 50, 100]}),
        "key",
    ),
]


def _headers(kind: str) -> list[Mapping[str, str]]:
    if kind == "key":
        return [{"x-medops-route-key": f"study-{i:05d}"} for i in range(1024)]
    if kind == "override":
        return [{"x-medops-variant": "challenger"}]
    return [{}]


def _measure(
    call: Callable[[Mapping[str, str]], object], headers: list[Mapping[str, str]], n: int
) -> tuple[float, float]:
    """p50 and p99 of one call, in µs."""
    samples = array("q", bytes(8 * n))
    count = len(headers)
    clock = time.perf_counter_ns
    for i in range(n):
        h = headers[i % count]
        t0 = clock()
        call(h)
        samples[i] = clock() - t0
    ordered = sorted(samples)
    return ordered[n // 2] / 1000, ordered[min(n - 1, int(n * 0.99))] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    n = args.calls

    table = {MODEL: ("champion", "champion", None)}
    base50, base99 = _measure(lambda h: table[MODEL], [{}], n)
    print(f"routing overhead per request, {n} calls each (µs; timer cost included)")
    print(f"{'case':28s} {'p50':>8s} {'p99':>8s} {'p99/baseline':>13s}")
    print(f"{'baseline: dict lookup':28s} {base50:8.2f} {base99:8.2f} {1.0:13.1f}")
    worst = 0.0
    for name, doc, kind in CASES:
        router = Router(rng=random.Random(0))
        if doc is not None:
            router.replace(doc, actor="bench")
        p50, p99 = _measure(functools.partial(router.route, MODEL), _headers(kind), n)
        worst = max(worst, p99)
        print(f"{name:28s} {p50:8.2f} {p99:8.2f} {p99 / base99:13.1f}")
    verdict = "meets" if worst < TARGET_P99_US else "MISSES"
    print(f"worst p99 {worst:.2f} µs: {verdict} the target p99 < {TARGET_P99_US:.0f} µs")


if __name__ == "__main__":
    main()
