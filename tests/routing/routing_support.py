"""Helpers shared by the routing tests: a fake clock and document builders."""

from __future__ import annotations

from typing import Any

MODEL = "brain-tumor-classifier"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def canary_doc(
    challenger_weight: int,
    *,
    strategy: str = "canary",
    challenger_first: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A routing document splitting MODEL between champion and challenger."""
    champion = {"name": "champion", "alias": "champion", "weight": 100 - challenger_weight}
    challenger = {"name": "challenger", "alias": "challenger", "weight": challenger_weight}
    variants = [challenger, champion] if challenger_first else [champion, challenger]
    return {"models": {MODEL: {"strategy": strategy, "variants": variants, **extra}}}
