"""Traffic split, sticky assignment, override, readiness, shadow, bandit and blue/green."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from routing_support import MODEL, canary_doc
from scipy.stats import binom

from medops.errors import InvalidInputError, NotFoundError
from services.gateway.routing import RouteDecision, Router
from services.gateway.routing.policies import bucket, split_table

N = 20_000

MakeRouter = Callable[..., Router]


def keys(count: int, prefix: str = "study") -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(count)]


@pytest.mark.parametrize("weight", [5, 10, 50])
def test_random_split_gives_the_challenger_its_weight_within_the_binomial_interval(
    make_router: MakeRouter, weight: int
) -> None:
    router = make_router(canary_doc(weight), seed=weight)
    hits = sum(router.route(MODEL, {}).variant == "challenger" for _ in range(N))
    low, high = binom.interval(0.999, N, weight / 100)
    assert low <= hits <= high, (hits, low, high)


@pytest.mark.parametrize("weight", [5, 10, 50])
def test_sticky_split_over_distinct_keys_gives_the_challenger_its_weight(
    make_router: MakeRouter, weight: int
) -> None:
    router = make_router(canary_doc(weight, strategy="ab"))
    hits = sum(
        router.route(MODEL, {"x-medops-route-key": k}).variant == "challenger" for k in keys(N)
    )
    low, high = binom.interval(0.999, N, weight / 100)
    assert low <= hits <= high, (hits, low, high)


def test_one_routing_key_always_gets_one_variant(make_router: MakeRouter) -> None:
    router = make_router(canary_doc(50, strategy="ab"))
    seen: dict[str, set[str]] = {}
    for _ in range(20):
        for key in keys(1000):
            variant = router.route(MODEL, {"x-medops-route-key": key}).variant
            seen.setdefault(key, set()).add(variant)
    assert all(len(v) == 1 for v in seen.values())
    both = Counter(next(iter(v)) for v in seen.values())
    assert both["champion"] > 400 and both["challenger"] > 400


def test_the_same_key_gets_the_same_variant_in_a_fresh_router(make_router: MakeRouter) -> None:
    first, second = make_router(canary_doc(30), seed=1), make_router(canary_doc(30), seed=2)
    for key in keys(500):
        headers = {"x-medops-route-key": key}
        assert first.route(MODEL, headers).variant == second.route(MODEL, headers).variant


@pytest.mark.parametrize("challenger_first", [False, True])
def test_raising_the_weight_only_moves_keys_from_champion_to_challenger(
    make_router: MakeRouter, challenger_first: bool
) -> None:
    router = make_router()
    sample = keys(5000)
    previous: set[str] = set()
    for weight in (0, 5, 10, 25, 50, 75, 100):
        router.replace(canary_doc(weight, challenger_first=challenger_first), actor="admin")
        on_challenger = {k for k in sample if _variant(router, k) == "challenger"}
        assert previous <= on_challenger, f"a key left the challenger when raising to {weight}"
        previous = on_challenger
    assert previous == set(sample)


def _variant(router: Router, key: str) -> str:
    return router.route(MODEL, {"x-medops-route-key": key}).variant


def test_buckets_are_a_stable_function_of_the_key() -> None:
    assert bucket("study-1") == bucket("study-1")
    assert 0 <= bucket("study-1") < 100
    spread = Counter(bucket(k) for k in keys(10_000))
    assert len(spread) == 100


def test_split_table_lays_variants_out_contiguously_in_document_order() -> None:
    assert split_table([90, 10]) == (0,) * 90 + (1,) * 10
    with pytest.raises(ValueError, match="sum to 100"):
        split_table([50, 40])


def test_override_header_forces_a_variant_even_at_zero_weight(make_router: MakeRouter) -> None:
    router = make_router(canary_doc(0))
    decision = router.route(MODEL, {"x-medops-variant": "challenger", "x-medops-route-key": "k"})
    assert decision == RouteDecision("challenger", "challenger", None, ())
    assert router.route(MODEL, {"x-medops-route-key": "k"}).variant == "champion"


def test_override_header_naming_no_variant_is_refused(make_router: MakeRouter) -> None:
    router = make_router(canary_doc(10))
    with pytest.raises(InvalidInputError, match="x-medops-variant: 'nope' is not a variant"):
        router.route(MODEL, {"x-medops-variant": "nope"})


def test_an_unconfigured_model_is_served_by_its_champion_alias(make_router: MakeRouter) -> None:
    router = make_router(canary_doc(10))
    decision = router.route("brain-tumor-segmenter", {"x-medops-route-key": "k"})
    assert decision == RouteDecision("champion", "champion", None, ())
    assert router.variants("brain-tumor-segmenter") == [("champion", "champion", None)]


def test_an_unknown_model_is_not_found(make_router: MakeRouter) -> None:
    with pytest.raises(NotFoundError, match="'no-such-model' is not known"):
        make_router(known_models=[MODEL]).route("no-such-model", {})


def test_variants_lists_every_target_the_gateway_must_load(make_router: MakeRouter) -> None:
    doc = canary_doc(10)
    doc["models"][MODEL]["variants"][1] = {"name": "challenger", "version": 7, "weight": 10}
    router = make_router(doc)
    assert router.variants(MODEL) == [("champion", "champion", None), ("challenger", None, "7")]
    assert router.route(MODEL, {"x-medops-variant": "challenger"}).version == "7"


def test_an_unready_challenger_gets_no_traffic_and_its_keys_go_to_the_champion(
    make_router: MakeRouter,
) -> None:
    router = make_router(canary_doc(50))
    sample = keys(2000)
    before = {k: _variant(router, k) for k in sample}
    router.set_ready(MODEL, "challenger", False)
    assert all(_variant(router, k) == "champion" for k in sample)
    assert all(router.route(MODEL, {}).variant == "champion" for _ in range(1000))
    router.set_ready(MODEL, "challenger", True)
    assert {k: _variant(router, k) for k in sample} == before


def test_without_ready_by_default_a_new_variant_waits_for_set_ready(
    make_router: MakeRouter,
) -> None:
    router = make_router(canary_doc(50), ready_by_default=False)
    assert {router.route(MODEL, {}).variant for _ in range(500)} == {"champion"}
    router.set_ready(MODEL, "challenger", True)
    assert {router.route(MODEL, {}).variant for _ in range(500)} == {"champion", "challenger"}


def test_shadow_never_changes_the_primary_decision(make_router: MakeRouter) -> None:
    plain = make_router(canary_doc(20))
    shadowed = make_router(canary_doc(20, shadow={"variant": "challenger", "percent": 100}))
    copies = 0
    for key in keys(3000):
        headers = {"x-medops-route-key": key}
        a, b = plain.route(MODEL, headers), shadowed.route(MODEL, headers)
        assert (a.variant, a.alias, a.version) == (b.variant, b.alias, b.version)
        if b.variant == "champion":
            assert b.shadow == (("challenger", "challenger", None),)
            copies += 1
        else:
            assert b.shadow == (), "the shadow variant never gets a copy of its own request"
    assert copies > 2000


def test_shadow_copies_the_configured_percent_of_requests(make_router: MakeRouter) -> None:
    doc = canary_doc(0, strategy="shadow", shadow={"variant": "challenger", "percent": 25})
    router = make_router(doc)
    decisions = [router.route(MODEL, {}) for _ in range(N)]
    assert {d.variant for d in decisions} == {"champion"}
    copies = sum(bool(d.shadow) for d in decisions)
    low, high = binom.interval(0.999, N, 0.25)
    assert low <= copies <= high


def test_mesh_mode_leaves_mirroring_to_istio_and_obeys_its_header(
    make_router: MakeRouter,
) -> None:
    doc = canary_doc(10, shadow={"variant": "challenger", "percent": 100}) | {"mode": "mesh"}
    router = make_router(doc)
    assert all(router.route(MODEL, {}).shadow == () for _ in range(500))
    assert router.route(MODEL, {"x-medops-variant": "challenger"}).variant == "challenger"


def test_bandit_converges_to_the_better_arm(make_router: MakeRouter) -> None:
    router = make_router(canary_doc(50, strategy="bandit"), seed=3)
    success = {"champion": 0.3, "challenger": 0.7}
    world = random.Random(11)
    picks = []
    for _ in range(2000):
        variant = router.route(MODEL, {}).variant
        picks.append(variant)
        router.reward(MODEL, variant, 1.0 if world.random() < success[variant] else 0.0)
    late = Counter(picks[-500:])
    assert late["challenger"] / 500 > 0.9, late
    arms = {row["variant"]: row for row in router.stats()}
    assert arms["challenger"]["alpha"] > arms["champion"]["alpha"]


def test_bandit_feedback_outside_zero_to_one_is_refused(make_router: MakeRouter) -> None:
    router = make_router(canary_doc(50, strategy="bandit"))
    with pytest.raises(InvalidInputError, match=r"reward must lie in \[0, 1\], got 1.5"):
        router.reward(MODEL, "challenger", 1.5)
    with pytest.raises(InvalidInputError, match="'nope' is not a variant"):
        router.reward(MODEL, "nope", 1.0)


def test_bluegreen_sends_everything_to_the_active_variant_and_switches(
    make_router: MakeRouter,
) -> None:
    doc = {
        "models": {
            MODEL: {
                "strategy": "bluegreen",
                "active": "blue",
                "variants": [
                    {"name": "blue", "alias": "champion", "weight": 100},
                    {"name": "green", "alias": "challenger", "weight": 0},
                ],
            }
        }
    }
    router = make_router(doc)
    assert {router.route(MODEL, {"x-medops-route-key": k}).variant for k in keys(500)} == {"blue"}
    revision = router.revision
    switched = router.switch(MODEL, "green", actor="admin")
    assert switched["revision"] == revision + 1
    assert switched["models"][MODEL]["active"] == "green"
    assert {router.route(MODEL, {"x-medops-route-key": k}).variant for k in keys(500)} == {"green"}
    with pytest.raises(InvalidInputError, match="'purple' is not a variant"):
        router.switch(MODEL, "purple", actor="admin")


def test_stats_count_routed_and_shadowed_requests_per_variant(make_router: MakeRouter) -> None:
    router = make_router(canary_doc(10, shadow={"variant": "challenger", "percent": 100}))
    for _ in range(1000):
        router.route(MODEL, {})
    router.observe(MODEL, "challenger", ok=False, latency_s=0.2, disagreed=True)
    rows = {r["variant"]: r for r in router.stats() if r["model"] == MODEL}
    assert rows["champion"]["routed"] + rows["challenger"]["routed"] == 1000
    assert rows["challenger"]["shadowed"] == rows["champion"]["routed"]
    assert rows["challenger"]["errors"] == 1 and rows["challenger"]["disagreements"] == 1
    assert (rows["champion"]["weight"], rows["challenger"]["weight"]) == (90, 10)


@given(
    low=st.integers(0, 100),
    high=st.integers(0, 100),
    key=st.text(min_size=1, max_size=64),
)
def test_any_weight_increase_keeps_every_challenger_key_on_the_challenger(
    low: int, high: int, key: str
) -> None:
    low, high = min(low, high), max(low, high)
    slot = bucket(key)
    for order in ((0, 1), (1, 0)):  # challenger listed last or first
        before = split_table([100 - low, low] if order == (0, 1) else [low, 100 - low])
        after = split_table([100 - high, high] if order == (0, 1) else [high, 100 - high])
        challenger = order[1]
        if before[slot] == challenger:
            assert after[slot] == challenger
