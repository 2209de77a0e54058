"""Prometheus view of the Router: per-variant counters and gauges, read at scrape time.

Kept apart from the routing core so that only an exporter imports ``prometheus_client``:
``prometheus_client.REGISTRY.register(RoutingCollector(router))``. Labels are model, variant
and decision names only.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .router import Router

_COUNTERS = (
    ("routed", "medops_routing_routed", "Requests routed to the variant as the answering one."),
    ("shadowed", "medops_routing_shadow_copies", "Shadow copies sent to the variant."),
    ("requests", "medops_routing_variant_requests", "Answers of the variant (primary and shadow)."),
    ("errors", "medops_routing_variant_errors", "Failed answers of the variant."),
    (
        "latencySecondsSum",
        "medops_routing_variant_latency_seconds",
        "Total seconds the variant took to answer.",
    ),
    ("compared", "medops_routing_variant_compared", "Answers compared with the champion's."),
    ("disagreements", "medops_routing_variant_disagreements", "Compared answers that differed."),
)


class RoutingCollector(Collector):
    """Exports ``Router.stats()``, the revision and the analysis decisions of one Router."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        rows = self._router.stats()
        labels = ["model", "variant"]
        for key, name, doc in _COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=labels)
            for row in rows:
                counter.add_metric([row["model"], row["variant"]], float(row[key]))
            yield counter
        weight = GaugeMetricFamily(
            "medops_routing_weight_percent", "Effective traffic share of the variant.", None, labels
        )
        ready = GaugeMetricFamily(
            "medops_routing_variant_ready", "1 when the variant may get traffic.", labels=labels
        )
        posterior = GaugeMetricFamily(
            "medops_routing_bandit_posterior_mean",
            "Mean of the bandit arm's Beta posterior (expected reward).",
            labels=labels,
        )
        for row in rows:
            at = [row["model"], row["variant"]]
            weight.add_metric(at, float(row["weight"]))
            ready.add_metric(at, 1.0 if row["ready"] else 0.0)
            if "alpha" in row:
                posterior.add_metric(at, row["alpha"] / (row["alpha"] + row["beta"]))
        yield weight
        yield ready
        yield posterior
        yield GaugeMetricFamily(
            "medops_routing_revision",
            "Revision of the running routing document.",
            value=float(self._router.revision),
        )
        decisions = CounterMetricFamily(
            "medops_routing_decisions",
            "Progressive delivery decisions (start, step, promote, rollback, wait, hold).",
            labels=["model", "decision"],
        )
        for (model, decision), count in sorted(self._router.decision_counts().items()):
            decisions.add_metric([model, decision], float(count))
        yield decisions
