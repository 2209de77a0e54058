"""Mesh mode: the chart's routing values are a valid routing document (the gateway's own model
says so) and Istio receives exactly the document's split, per variant, plus the shadow mirror."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from deploy_support import CHART, PROFILES, find, profile_values, render, validate

from services.gateway.routing import RoutingConfig

GATEWAY_HOST = "medops-gateway.medops.svc.cluster.local"


def _mesh_values(routing: dict[str, Any]) -> dict[str, Any]:
    values = profile_values("mesh")
    values["routing"] = routing
    return values


def _model_routes(docs: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    (vs,) = find(docs, "VirtualService", name)
    return {route["name"]: route for route in vs["spec"]["http"]}


def _split(route: dict[str, Any]) -> dict[str | None, int]:
    """variant header -> weight of one HTTP route."""
    split: dict[str | None, int] = {}
    for dest in route["route"]:
        assert dest["destination"]["host"] == GATEWAY_HOST
        variant = dest.get("headers", {}).get("request", {}).get("set", {}).get("x-medops-variant")
        split[variant] = dest.get("weight", 100)
    return split


def _expected_split(model: Any) -> dict[str | None, int]:
    if model.strategy == "bandit":
        return {None: 100}  # the gateway draws the arm from live rewards
    return {v.name: v.weight for v in model.variants if v.weight > 0}


DOCUMENTS = {
    "canary with progressive steps": {
        "mode": "mesh",
        "models": {
            "brain-tumor-classifier": {
                "strategy": "canary",
                "variants": [
                    {"name": "champion", "alias": "champion", "weight": 95},
                    {"name": "challenger", "alias": "challenger", "weight": 5},
                ],
                "progressive": {"variant": "challenger", "steps": [5, 25, 50, 100]},
            }
        },
    },
    "a/b on pinned versions and a shadow": {
        "mode": "mesh",
        "models": {
            "brain-tumor-type-classifier": {
                "strategy": "ab",
                "variants": [
                    {"name": "a", "version": "7", "weight": 30},
                    {"name": "b", "version": "8", "weight": 70},
                ],
            },
            "brain-tumor-segmenter": {
                "strategy": "shadow",
                "variants": [
                    {"name": "champion", "alias": "champion", "weight": 100},
                    {"name": "challenger", "alias": "challenger", "weight": 0},
                ],
                "shadow": {"variant": "challenger", "percent": 25},
            },
        },
    },
    "blue/green and bandit": {
        "mode": "mesh",
        "models": {
            "brain-tumor-classifier": {
                "strategy": "bluegreen",
                "variants": [
                    {"name": "blue", "alias": "champion", "weight": 0},
                    {"name": "green", "alias": "challenger", "weight": 100},
                ],
                "active": "green",
            },
            "brain-tumor-segmenter": {
                "strategy": "bandit",
                "variants": [
                    {"name": "champion", "alias": "champion", "weight": 50},
                    {"name": "challenger", "alias": "challenger", "weight": 50},
                ],
            },
        },
    },
}


@pytest.mark.parametrize("profile", ["default", *PROFILES])
def test_chart_routing_values_are_a_valid_routing_document(profile: str) -> None:

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["routing"]
    routing = profile_values(profile).get("routing", defaults)
    config = RoutingConfig.from_document(routing)
    assert config.to_document()["mode"] == routing["mode"]


@pytest.mark.parametrize("case", ["mesh profile", *sorted(DOCUMENTS)])
def test_virtual_service_weights_equal_the_routing_document(case: str) -> None:
    routing = profile_values("mesh")["routing"] if case == "mesh profile" else DOCUMENTS[case]
    config = RoutingConfig.from_document(routing)
    docs = render(_mesh_values(copy.deepcopy(routing)))
    for vs_name in ("medops-gateway", "medops-gateway-ingress"):
        routes = _model_routes(docs, vs_name)
        for name, model in config.models.items():
            route = routes[name]
            assert _split(route) == _expected_split(model), f"{vs_name}: {name}"
            assert sum(_split(route).values()) == 100
            assert {"uri": {"prefix": f"/v2/models/{name}/"}} in route["match"]
            if model.shadow is not None:
                assert route["mirror"]["host"] == GATEWAY_HOST
                assert route["mirrorPercentage"]["value"] == model.shadow.percent
            else:
                assert "mirror" not in route
        # unlisted models, /v1/analyze and health fall through to the gateway itself
        assert _split(routes["default"]) == {None: 100}
    for doc in docs:
        validate(doc)


def test_explicit_variant_header_is_obeyed_before_any_split() -> None:
    docs = render(profile_values("mesh"))
    (vs,) = find(docs, "VirtualService", "medops-gateway")
    names = [r["name"] for r in vs["spec"]["http"]]
    assert names.index("variant-override") < names.index("brain-tumor-classifier")
    override = vs["spec"]["http"][names.index("variant-override")]
    assert override["match"] == [{"headers": {"x-medops-variant": {"regex": ".+"}}}]
    assert "headers" not in override["route"][0]


def test_requests_with_a_routing_key_stay_sticky_through_the_gateway() -> None:
    docs = render(profile_values("mesh"))
    (vs,) = find(docs, "VirtualService", "medops-gateway")
    names = [r["name"] for r in vs["spec"]["http"]]
    sticky = vs["spec"]["http"][names.index("sticky-route-key")]
    assert names.index("sticky-route-key") < names.index("brain-tumor-type-classifier")
    assert sticky["match"] == [{"headers": {"x-medops-route-key": {"regex": ".+"}}}]
    # no variant header: the gateway assigns the variant from the key's hash
    assert _split(sticky) == {None: 100}


def test_gateway_mode_leaves_the_split_to_the_gateway() -> None:
    values = profile_values("mesh")
    values["routing"]["mode"] = "gateway"
    docs = render(values)
    (vs,) = find(docs, "VirtualService", "medops-gateway")
    assert [r["name"] for r in vs["spec"]["http"]] == ["grpc", "default"]
    # the gateway still gets the same document to split with
    (cm,) = find(docs, "ConfigMap", "medops-gateway-routing")
    assert RoutingConfig.from_document(json.loads(cm["data"]["routing.json"])) == (
        RoutingConfig.from_document(values["routing"])
    )


def test_mesh_enforces_strict_mutual_tls() -> None:
    docs = render(profile_values("mesh"))
    (peer,) = find(docs, "PeerAuthentication")
    assert peer["spec"]["mtls"] == {"mode": "STRICT"}
    assert peer["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "medops"
    for rule in find(docs, "DestinationRule"):
        assert rule["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"
    (gateway,) = find(docs, "Gateway")
    assert gateway["spec"]["servers"][1]["tls"] == {
        "mode": "SIMPLE",
        "credentialName": "medops-tls",
    }
