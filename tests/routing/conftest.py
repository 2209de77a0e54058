"""Fixtures for routing tests: a fake clock, seeded randomness and document builders."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from routing_support import FakeClock

from services.gateway.routing import Router


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_router(clock: FakeClock) -> Callable[..., Router]:
    """Build a Router on the fake clock with a seeded RNG, optionally loaded with a document."""

    def build(document: dict[str, Any] | None = None, *, seed: int = 7, **kwargs: Any) -> Router:
        router = Router(clock=clock, rng=random.Random(seed), **kwargs)
        if document is not None:
            router.replace(document, actor="admin")
        return router

    return build
