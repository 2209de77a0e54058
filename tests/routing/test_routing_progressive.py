"""Progressive delivery on a fake clock: steps, promotion, rollback and readiness."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from routing_support import MODEL, FakeClock, canary_doc

from medops.errors import RegistryUnavailableError
from services.gateway.routing import Router, VariantWindow

MakeRouter = Callable[..., Router]

INTERVAL = 60.0
RPS = 10


def progressive_doc(weight: int = 0, **thresholds: Any) -> dict[str, Any]:
    spec = {
        "variant": "challenger",
        "steps": [5, 25, 50, 100],
        "intervalSeconds": INTERVAL,
        "minRequests": 20,
        "maxErrorRate": 0.05,
        "maxLatencySeconds": 0.5,
        "maxDisagreement": 0.2,
        **thresholds,
    }
    return canary_doc(weight, progressive=spec)


class Hooks:
    def __init__(self) -> None:
        self.promoted: list[tuple[str, str]] = []
        self.rolled_back: list[tuple[str, str, str]] = []

    def on_promote(self, model: str, variant: str) -> None:
        self.promoted.append((model, variant))

    def on_rollback(self, model: str, variant: str, reason: str) -> None:
        self.rolled_back.append((model, variant, reason))


def serve(
    router: Router,
    clock: FakeClock,
    seconds: float,
    *,
    error_rate: float = 0.0,
    latency_s: float = 0.05,
    disagreement: float = 0.0,
    seed: int = 5,
) -> None:
    """Send RPS requests a second; the challenger fails, lags and disagrees as told."""
    world = random.Random(seed)
    for _ in range(int(seconds * RPS)):
        clock.advance(1 / RPS)
        decision = router.route(MODEL, {})
        served = [decision.variant] + [v for v, _, _ in decision.shadow]
        for variant in served:
            canary = variant == "challenger"
            router.observe(
                MODEL,
                variant,
                ok=not (canary and world.random() < error_rate),
                latency_s=latency_s if canary else 0.05,
                disagreed=(world.random() < disagreement) if canary else None,
            )


def weight_of(router: Router, variant: str) -> int:
    routing = router.config.models.get(MODEL)
    return routing.variant(variant).weight if routing else 0


def test_a_healthy_canary_steps_5_25_50_100_and_is_promoted_once(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    hooks = Hooks()
    router = make_router(
        progressive_doc(), on_promote=hooks.on_promote, on_rollback=hooks.on_rollback
    )
    assert weight_of(router, "challenger") == 5, "a ready canary at 0 % starts at once"
    serve(router, clock, 5 * INTERVAL)
    moves = [(d["decision"], d["toWeight"]) for d in router.decisions(MODEL)]
    assert moves == [
        ("start", 5),
        ("step", 25),
        ("step", 50),
        ("step", 100),
        ("promote", 100),
    ]
    assert hooks.promoted == [(MODEL, "challenger")]
    assert hooks.rolled_back == []
    routing = router.config.models[MODEL]
    assert routing.strategy == "single"
    assert [v.target for v in routing.variants] == [("champion", "champion", None)]
    actions = [e["action"] for e in router.audit()]
    assert actions[-6:] == [
        "replace",
        "progressive",
        "progressive",
        "progressive",
        "progressive",
        "promote",
    ]
    serve(router, clock, 2 * INTERVAL)
    assert hooks.promoted == [(MODEL, "challenger")], "promotion happens exactly once"


def test_a_canary_of_a_version_the_gate_kept_out_is_rolled_back_before_it_takes_traffic(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    hooks = Hooks()
    refused = "the promotion gate kept m v2 out: sensitivity: challenger 0.75 vs champion 0.80"

    def vet(model: str, variant: str) -> str | None:
        return refused if variant == "challenger" else None

    router = make_router(
        progressive_doc(), on_promote=hooks.on_promote, on_rollback=hooks.on_rollback, vet=vet
    )
    [decision] = router.decisions(MODEL)
    assert (decision["decision"], decision["toWeight"], decision["reason"]) == (
        "rollback",
        0,
        refused,
    )
    assert hooks.rolled_back == [(MODEL, "challenger", refused)]
    assert router.config.models[MODEL].progressive is None
    assert router.audit()[-1]["action"] == "rollback"
    serve(router, clock, 3 * INTERVAL)
    assert weight_of(router, "challenger") == 0
    assert {router.route(MODEL, {}).variant for _ in range(200)} == {"champion"}
    assert hooks.promoted == []


def test_a_vet_that_cannot_judge_holds_the_step_and_a_later_refusal_rolls_back(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    answers: list[str | Exception | None] = [
        RegistryUnavailableError("registry unreachable"),
        None,
        "the promotion gate kept m v2 out",
    ]

    def vet(model: str, variant: str) -> str | None:
        answer = answers.pop(0) if answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer

    router = make_router(progressive_doc(), vet=vet)
    assert weight_of(router, "challenger") == 0, "no start while the vet cannot judge"
    assert "cannot be vetted now: registry unreachable" in router.decisions(MODEL)[-1]["reason"]
    serve(router, clock, INTERVAL + 1)
    assert weight_of(router, "challenger") == 5
    serve(router, clock, INTERVAL)
    moves = [(d["decision"], d["toWeight"]) for d in router.decisions(MODEL)]
    assert moves == [("wait", 0), ("start", 5), ("rollback", 0)]
    assert weight_of(router, "challenger") == 0


def test_each_step_is_taken_only_after_a_healthy_interval_with_enough_requests(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    router = make_router(progressive_doc(minRequests=1000))
    serve(router, clock, 3 * INTERVAL + 1)
    assert weight_of(router, "challenger") == 5
    waits = [d for d in router.decisions(MODEL) if d["decision"] == "wait"]
    assert len(waits) == 3
    assert "< minRequests 1000" in waits[0]["reason"]


def test_a_failing_canary_is_rolled_back_within_the_configured_window(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    hooks = Hooks()
    router = make_router(
        progressive_doc(), on_promote=hooks.on_promote, on_rollback=hooks.on_rollback
    )
    started = clock.now
    serve(router, clock, 3 * INTERVAL, error_rate=0.5)
    rollback = next(d for d in router.decisions(MODEL) if d["decision"] == "rollback")
    assert rollback["at"] - started <= INTERVAL + 1 / RPS
    assert rollback["metrics"]["errorRate"] > 0.05
    assert weight_of(router, "challenger") == 0 and weight_of(router, "champion") == 100
    assert router.config.models[MODEL].progressive is None, "a rolled back canary stays off"
    assert [h[:2] for h in hooks.rolled_back] == [(MODEL, "challenger")]
    assert "error rate" in hooks.rolled_back[0][2]
    assert hooks.promoted == []
    entry = router.audit()[-1]
    assert entry["action"] == "rollback" and entry["actor"] == "progressive"
    assert "error rate" in entry["reason"] and "> maxErrorRate 0.05" in entry["reason"]
    assert entry["changes"][0]["weights"] == {"champion": [95, 100], "challenger": [5, 0]}
    assert all(router.route(MODEL, {}).variant == "champion" for _ in range(500))


def test_a_slow_canary_is_rolled_back_on_its_p99_latency(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    router = make_router(progressive_doc())
    serve(router, clock, 2 * INTERVAL, latency_s=0.9)
    rollback = next(d for d in router.decisions(MODEL) if d["decision"] == "rollback")
    assert "p99 latency 0.900s > maxLatencySeconds 0.5" in rollback["reason"]


def test_a_canary_that_disagrees_with_the_champion_is_rolled_back(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    doc = progressive_doc()
    doc["models"][MODEL]["shadow"] = {"variant": "challenger", "percent": 100}
    router = make_router(doc)
    serve(router, clock, 2 * INTERVAL, disagreement=0.5)
    rollback = next(d for d in router.decisions(MODEL) if d["decision"] == "rollback")
    assert "> maxDisagreement 0.2" in rollback["reason"]
    assert rollback["metrics"]["compared"] > 500, "shadow copies feed the comparison"


def test_drift_flagged_on_the_canary_rolls_it_back_at_once(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    hooks = Hooks()
    router = make_router(progressive_doc(), on_rollback=hooks.on_rollback)
    serve(router, clock, 10)
    router.flag_drift(MODEL, "challenger")
    assert weight_of(router, "challenger") == 0
    assert hooks.rolled_back == [(MODEL, "challenger", "drift flagged for challenger")]


def test_an_unready_canary_waits_at_zero_and_starts_when_ready(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    router = make_router(ready_by_default=False)
    router.replace(progressive_doc(), actor="admin")
    serve(router, clock, 2 * INTERVAL)
    assert weight_of(router, "challenger") == 0
    assert router.decisions(MODEL)[-1]["reason"] == "challenger is not ready"
    router.set_ready(MODEL, "challenger", True)
    assert weight_of(router, "challenger") == 5
    assert router.decisions(MODEL)[-1]["decision"] == "start"


def test_a_failed_promotion_keeps_the_canary_at_100_and_retries(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    calls: list[str] = []

    def flaky_promote(model: str, variant: str) -> None:
        calls.append(variant)
        if len(calls) == 1:
            raise RegistryUnavailableError("registry unreachable")

    router = make_router(progressive_doc(weight=100), on_promote=flaky_promote)
    serve(router, clock, INTERVAL + 1)
    assert router.decisions(MODEL)[-1]["decision"] == "promote-failed"
    assert "registry unreachable" in router.decisions(MODEL)[-1]["reason"]
    assert weight_of(router, "challenger") == 100
    serve(router, clock, INTERVAL)
    assert calls == ["challenger", "challenger"]
    assert router.config.models[MODEL].strategy == "single"


def test_a_new_document_restarts_judgement_and_can_re_arm_a_rolled_back_canary(
    make_router: MakeRouter, clock: FakeClock
) -> None:
    router = make_router(progressive_doc())
    serve(router, clock, 2 * INTERVAL, error_rate=0.5)
    assert weight_of(router, "challenger") == 0
    router.replace(progressive_doc(), actor="admin")
    assert weight_of(router, "challenger") == 5
    serve(router, clock, INTERVAL + 1)
    assert weight_of(router, "challenger") == 25


def test_the_window_slides_so_old_answers_stop_counting() -> None:
    window = VariantWindow(span_s=10)
    for t in range(5):
        window.add(float(t), False, 2.0, True)
    for t in range(20, 30):
        window.add(float(t), True, 0.1, False)
    summary = window.summary(now=30.0)
    assert summary["requests"] == 10
    assert summary["errorRate"] == 0.0
    assert summary["p99LatencySeconds"] == pytest.approx(0.1)
    assert summary["disagreementRate"] == 0.0


def test_a_rollback_goes_ahead_even_when_the_audit_trail_cannot_be_written(
    make_router: MakeRouter, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "routing.jsonl"
    router = make_router(progressive_doc(), audit_path=path)
    serve(router, clock, 30)
    path.unlink()
    path.mkdir()  # the trail is now unwritable
    serve(router, clock, INTERVAL, error_rate=0.5)
    assert weight_of(router, "challenger") == 0
    assert router.decisions(MODEL)[-1]["decision"] == "rollback"


def test_a_step_that_cannot_be_audited_is_not_taken_and_is_retried(
    make_router: MakeRouter, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "routing.jsonl"
    router = make_router(progressive_doc(), audit_path=path)
    path.unlink()
    path.mkdir()
    serve(router, clock, INTERVAL + 1)
    assert weight_of(router, "challenger") == 5
    assert router.decisions(MODEL)[-1]["decision"] == "step-failed"
    path.rmdir()
    serve(router, clock, INTERVAL)
    assert weight_of(router, "challenger") == 25
