"""Per-variant metrics as Prometheus reads them from the Router."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from routing_support import MODEL, canary_doc

from services.gateway.routing import Router
from services.gateway.routing.prometheus import RoutingCollector

MakeRouter = Callable[..., Router]


def scrape(router: Router) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    registry = CollectorRegistry()
    registry.register(RoutingCollector(router))
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def at(variant: str) -> tuple[tuple[str, str], ...]:
    return (("model", MODEL), ("variant", variant))


def test_the_exporter_shows_split_shadow_answers_and_weights_per_variant(
    make_router: MakeRouter,
) -> None:
    router = make_router(canary_doc(10, shadow={"variant": "challenger", "percent": 100}))
    secret = "study-1.2.840.99999"
    for _ in range(200):
        router.route(MODEL, {"x-medops-route-key": secret})
    for ok in (True, True, False):
        router.observe(MODEL, "challenger", ok=ok, latency_s=0.5, disagreed=not ok)
    text, samples = scrape(router)
    stats = {r["variant"]: r for r in router.stats()}
    for variant in ("champion", "challenger"):
        routed = samples[("medops_routing_routed_total", at(variant))]
        assert routed == stats[variant]["routed"]
    assert (
        samples[("medops_routing_routed_total", at("champion"))]
        + samples[("medops_routing_routed_total", at("challenger"))]
        == 200
    )
    assert samples[("medops_routing_variant_errors_total", at("challenger"))] == 1
    assert samples[("medops_routing_variant_latency_seconds_total", at("challenger"))] == 1.5
    assert samples[("medops_routing_variant_disagreements_total", at("challenger"))] == 1
    assert samples[("medops_routing_weight_percent", at("challenger"))] == 10
    assert samples[("medops_routing_variant_ready", at("champion"))] == 1
    assert samples[("medops_routing_revision", ())] == router.revision
    assert secret not in text


def test_the_exporter_counts_progressive_decisions(make_router: MakeRouter) -> None:
    doc = canary_doc(0, progressive={"variant": "challenger", "intervalSeconds": 10})
    router = make_router(doc)
    router.flag_drift(MODEL, "challenger")
    _, samples = scrape(router)
    decisions = {
        dict(labels)["decision"]: value
        for (name, labels), value in samples.items()
        if name == "medops_routing_decisions_total"
    }
    assert decisions == {"start": 1.0, "rollback": 1.0}
    assert samples[("medops_routing_weight_percent", at("challenger"))] == 0
