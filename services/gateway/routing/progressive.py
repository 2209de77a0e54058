"""Progressive delivery: judge a canary on live metrics and decide step, promotion or rollback.

Pure logic: the controller sees observations and a clock and returns decisions as dicts
(``decision``, ``reason``, ``metrics``, weights); the Router applies them to the routing
configuration, calls the promotion and rollback hooks and records them in the audit trail.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from .config import ModelRouting, Progressive


class VariantWindow:
    """Observations of one variant over a sliding time window (bounded in count too)."""

    def __init__(self, span_s: float, max_samples: int = 100_000) -> None:
        self.span_s = span_s
        self._events: deque[tuple[float, bool, float, bool | None]] = deque(maxlen=max_samples)

    def add(self, now: float, ok: bool, latency_s: float, disagreed: bool | None) -> None:
        self._events.append((now, ok, latency_s, disagreed))

    def clear(self) -> None:
        self._events.clear()

    def summary(self, now: float) -> dict[str, Any]:
        """Requests, error rate, p99 latency and disagreement rate within the window."""
        horizon = now - self.span_s
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()
        requests = len(self._events)
        errors = sum(1 for e in self._events if not e[1])
        compared = [e[3] for e in self._events if e[3] is not None]
        latencies = sorted(e[2] for e in self._events)
        return {
            "requests": requests,
            "errors": errors,
            "errorRate": errors / requests if requests else 0.0,
            "p99LatencySeconds": _quantile(latencies, 0.99),
            "compared": len(compared),
            "disagreementRate": sum(compared) / len(compared) if compared else 0.0,
        }


def _quantile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank quantile of sorted samples (None when there are none)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class _Canary:
    spec: Progressive
    baseline: str
    weight: int
    window: VariantWindow
    next_due: float


class ProgressiveController:
    """Per-model canary state: a window of the canary's metrics and when to judge it next."""

    def __init__(self, *, max_samples: int = 100_000) -> None:
        self._max_samples = max_samples
        self._canaries: dict[str, _Canary] = {}
        self._drift: dict[tuple[str, str], bool] = {}

    def configure(self, model: str, routing: ModelRouting | None, now: float) -> None:
        """(Re)start judging ``model`` after its routing changed; no progressive stops it.

        A canary at 0 % is due at once (it starts as soon as it is ready); otherwise the first
        judgement comes one interval after the change.
        """
        spec = routing.progressive if routing is not None else None
        if routing is None or spec is None:
            self._canaries.pop(model, None)
            return
        weight = routing.variant(spec.variant).weight
        self._canaries[model] = _Canary(
            spec=spec,
            baseline=routing.baseline,
            weight=weight,
            window=VariantWindow(spec.interval_seconds, self._max_samples),
            next_due=now if weight == 0 else now + spec.interval_seconds,
        )

    def canary(self, model: str) -> str | None:
        """The variant under progressive delivery for ``model``, if any."""
        c = self._canaries.get(model)
        return c.spec.variant if c is not None else None

    def observe(
        self,
        model: str,
        variant: str,
        *,
        ok: bool,
        latency_s: float,
        disagreed: bool | None,
        now: float,
    ) -> None:
        """Record one answer of ``variant`` (only the canary's answers are judged)."""
        c = self._canaries.get(model)
        if c is not None and c.spec.variant == variant:
            c.window.add(now, ok, latency_s, disagreed)

    def flag_drift(self, model: str, variant: str, drifted: bool) -> None:
        """Mark (or clear) drift for a variant; a drifting canary is rolled back when judged."""
        self._drift[(model, variant)] = drifted
        c = self._canaries.get(model)
        if c is not None and c.spec.variant == variant and drifted:
            c.next_due = -math.inf

    def became_ready(self, model: str, variant: str, now: float) -> None:
        """A canary waiting at 0 % for readiness is due at once when it becomes ready."""
        c = self._canaries.get(model)
        if c is not None and c.spec.variant == variant and c.weight == 0:
            c.next_due = min(c.next_due, now)

    def next_due(self) -> float:
        """When the earliest judgement is due (inf when no canary is running)."""
        return min((c.next_due for c in self._canaries.values()), default=math.inf)

    def due(self, now: float) -> list[str]:
        """Models whose canary is due for judgement."""
        return [m for m, c in self._canaries.items() if c.next_due <= now]

    def analyse(self, model: str, now: float, *, ready: bool) -> dict[str, Any] | None:
        """Judge the canary of ``model`` now; returns the decision (None without a canary).

        Decisions: ``start`` (0 % -> first step), ``step``, ``promote``, ``rollback``, ``wait``
        (not ready or too few requests), ``hold`` (last step reached below 100 %).
        """
        c = self._canaries.get(model)
        if c is None:
            return None
        spec = c.spec
        metrics = c.window.summary(now)
        metrics["drift"] = self._drift.get((model, spec.variant), False)
        c.next_due = now + spec.interval_seconds

        def decide(decision: str, to: int, reason: str) -> dict[str, Any]:
            return {
                "model": model,
                "variant": spec.variant,
                "decision": decision,
                "fromWeight": c.weight,
                "toWeight": to,
                "reason": reason,
                "metrics": metrics,
                "at": now,
            }

        if metrics["drift"]:
            return decide("rollback", 0, f"drift flagged for {spec.variant}")
        if not ready:
            return decide("wait", c.weight, f"{spec.variant} is not ready")
        upcoming = [s for s in spec.steps if s > c.weight]
        if c.weight == 0:
            return decide("start", upcoming[0], f"{spec.variant} is ready")
        if metrics["requests"] < spec.min_requests:
            return decide(
                "wait",
                c.weight,
                f"{metrics['requests']} requests in the window < minRequests {spec.min_requests}",
            )
        unhealthy = self._unhealthy(spec, metrics)
        if unhealthy:
            return decide("rollback", 0, unhealthy)
        if upcoming:
            return decide("step", upcoming[0], "healthy")
        if c.weight == 100:
            return decide("promote", 100, "healthy at 100%")
        return decide("hold", c.weight, f"healthy at the last step {c.weight}% (< 100)")

    @staticmethod
    def _unhealthy(spec: Progressive, m: dict[str, Any]) -> str | None:
        if m["errorRate"] > spec.max_error_rate:
            return (
                f"error rate {m['errorRate']:.3f} > maxErrorRate {spec.max_error_rate} "
                f"({m['errors']}/{m['requests']})"
            )
        p99, limit = m["p99LatencySeconds"], spec.max_latency_seconds
        if limit is not None and p99 is not None and p99 > limit:
            return f"p99 latency {p99:.3f}s > maxLatencySeconds {limit}"
        rate, most = m["disagreementRate"], spec.max_disagreement
        if most is not None and m["compared"] and rate > most:
            return f"disagreement {rate:.3f} > maxDisagreement {most} ({m['compared']} compared)"
        return None
