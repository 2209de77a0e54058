"""The routing document: validation with exact reasons, revisions and the audit trail."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from routing_support import MODEL, canary_doc

from medops.errors import InvalidInputError, MedopsError
from services.gateway.routing import Router, RoutingConfig

MakeRouter = Callable[..., Router]

CONTRACT_EXAMPLE = """
mode: gateway
models:
  brain-tumor-classifier:
    strategy: canary
    variants:
      - name: champion
        alias: champion
        weight: 90
      - name: challenger
        alias: challenger
        weight: 10
    shadow: null
    active: null
    progressive:
      variant: challenger
      steps: [5, 25, 50, 100]
      intervalSeconds: 60
      minRequests: 50
      maxErrorRate: 0.02
      maxLatencySeconds: 1.0
      maxDisagreement: 0.15
"""


def _edit(doc: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    change(doc["models"][MODEL])
    return doc


def _variants(m: dict[str, Any]) -> Any:
    return m["variants"]


BAD: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    (
        "weights not summing to 100",
        lambda m: _variants(m)[1].update(weight=20),
        f"models.{MODEL}: variant weights must sum to 100, got 110 (champion 90, challenger 20)",
    ),
    (
        "a negative weight",
        lambda m: _variants(m)[1].update(weight=-10),
        f"models.{MODEL}.variants[1].weight: Input should be greater than or equal to 0",
    ),
    (
        "a weight above 100",
        lambda m: _variants(m)[1].update(weight=110),
        f"models.{MODEL}.variants[1].weight: Input should be less than or equal to 100",
    ),
    (
        "a fractional weight",
        lambda m: _variants(m)[1].update(weight=10.5),
        f"models.{MODEL}.variants[1].weight: Input should be a valid integer",
    ),
    (
        "duplicate variant names",
        lambda m: _variants(m)[1].update(name="champion"),
        "variant names must be unique, repeated: champion",
    ),
    (
        "both alias and version",
        lambda m: _variants(m)[1].update(version="3"),
        "variant 'challenger' needs exactly one of alias or version (got both)",
    ),
    (
        "neither alias nor version",
        lambda m: _variants(m)[1].pop("alias"),
        "variant 'challenger' needs exactly one of alias or version (got neither)",
    ),
    (
        "a variant name that is no DNS label",
        lambda m: _variants(m)[1].update(name="Challenger_1"),
        f"models.{MODEL}.variants[1].name: String should match pattern",
    ),
    (
        "a misspelt key",
        lambda m: _variants(m)[1].update(wieght=10),
        f"models.{MODEL}.variants[1].wieght: Extra inputs are not permitted",
    ),
    (
        "a missing shadow variant",
        lambda m: m.update(shadow={"variant": "ghost", "percent": 50}),
        "shadow.variant 'ghost' is not one of the variants (champion, challenger)",
    ),
    (
        "a negative shadow percent",
        lambda m: m.update(shadow={"variant": "challenger", "percent": -5}),
        f"models.{MODEL}.shadow.percent: Input should be greater than or equal to 0",
    ),
    (
        "an unknown strategy",
        lambda m: m.update(strategy="roulette"),
        f"models.{MODEL}.strategy: Input should be 'single', 'canary', 'ab', 'shadow', 'bandit'",
    ),
    (
        "a single strategy with two variants",
        lambda m: m.update(strategy="single"),
        "strategy single takes exactly one variant",
    ),
    (
        "a shadow strategy without shadow",
        lambda m: m.update(strategy="shadow"),
        "strategy shadow needs shadow: {variant, percent}",
    ),
    (
        "bluegreen without an active variant",
        lambda m: m.update(strategy="bluegreen"),
        "strategy bluegreen needs active",
    ),
    (
        "bluegreen whose active variant lacks 100 %",
        lambda m: m.update(strategy="bluegreen", active="challenger"),
        "its weight must be 100, got 10",
    ),
    (
        "active outside bluegreen",
        lambda m: m.update(active="champion"),
        "active is only for strategy bluegreen, not canary",
    ),
    (
        "a bandit with one arm",
        lambda m: (
            m.update(strategy="bandit"),
            _variants(m)[0].update(weight=100),
            _variants(m)[1].update(weight=0),
        ),
        "strategy bandit needs at least 2 variants with weight > 0",
    ),
    (
        "a missing progressive variant",
        lambda m: m.update(progressive={"variant": "ghost"}),
        "progressive.variant 'ghost' is not one of the variants",
    ),
    (
        "progressive steps not increasing",
        lambda m: m.update(progressive={"variant": "challenger", "steps": [5, 50, 25]}),
        "steps must be strictly increasing, got [5, 50, 25]",
    ),
    (
        "a progressive step of 0",
        lambda m: m.update(progressive={"variant": "challenger", "steps": [0, 50]}),
        "steps must lie in (0, 100], got [0, 50]",
    ),
    (
        "a negative progressive threshold",
        lambda m: m.update(progressive={"variant": "challenger", "maxErrorRate": -0.1}),
        f"models.{MODEL}.progressive.maxErrorRate: Input should be greater than or equal to 0",
    ),
    (
        "progressive on the baseline",
        lambda m: m.update(progressive={"variant": "champion"}),
        "progressive.variant 'champion' is the champion; name the challenger",
    ),
    (
        "progressive with an A/B split",
        lambda m: m.update(strategy="ab", progressive={"variant": "challenger"}),
        "progressive needs strategy canary with exactly 2 variants (got ab with 2)",
    ),
    ("no variants", lambda m: m.update(variants=[]), "List should have at least 1 item"),
]


@pytest.mark.parametrize(("fault", "change", "reason"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_document_is_refused_with_its_reason_and_the_running_config_is_kept(
    make_router: MakeRouter,
    fault: str,
    change: Callable[[dict[str, Any]], object],
    reason: str,
) -> None:
    router = make_router(canary_doc(10))
    before, trail = router.document(), router.audit()
    with pytest.raises(InvalidInputError) as caught:
        router.replace(_edit(canary_doc(10), change), actor="admin")
    assert caught.value.status_code == 400
    assert reason in caught.value.message, caught.value.message
    assert router.document() == before
    assert router.audit() == trail


def test_an_unknown_model_is_refused_by_name(make_router: MakeRouter) -> None:
    router = make_router(known_models=[MODEL])
    doc = {"models": {"brain-tumour-classifer": canary_doc(10)["models"][MODEL]}}
    with pytest.raises(InvalidInputError, match=r"models: unknown model\(s\) 'brain-tumour-clas"):
        router.replace(doc, actor="admin")
    assert router.revision == 1


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([1, 2], "routing document must be an object, got list"),
        ({"mode": "istio"}, "mode: Input should be 'gateway' or 'mesh'"),
        ({"models": {MODEL: {"variants": "champion"}}}, f"models.{MODEL}.variants"),
        ({"models": {MODEL: None}}, f"models.{MODEL}: Input should be a valid dictionary"),
    ],
)
def test_malformed_documents_are_refused(
    make_router: MakeRouter, document: Any, reason: str
) -> None:
    router = make_router()
    with pytest.raises(InvalidInputError) as caught:
        router.replace(document, actor="admin")
    assert reason in caught.value.message


def test_the_known_models_are_injectable() -> None:
    router = Router(known_models=("toy",))
    doc = canary_doc(50)
    doc["models"] = {"toy": doc["models"][MODEL]}
    assert router.replace(doc, actor="admin")["models"]["toy"]["strategy"] == "canary"
    with pytest.raises(InvalidInputError, match="unknown model"):
        router.replace(canary_doc(50), actor="admin")


def test_the_contract_example_validates_and_round_trips(make_router: MakeRouter) -> None:
    router = make_router()
    served = router.replace(yaml.safe_load(CONTRACT_EXAMPLE), actor="admin")
    assert served["revision"] == 2 and served["updatedAt"]
    progressive = served["models"][MODEL]["progressive"]
    assert progressive["intervalSeconds"] == 60 and progressive["maxDisagreement"] == 0.15
    # a GET-edit-PUT round trip sends revision and updatedAt back: they are accepted
    again = router.replace(served, actor="admin")
    assert again["revision"] == 3
    assert {k: v for k, v in again.items() if k not in ("revision", "updatedAt")} == {
        k: v for k, v in served.items() if k not in ("revision", "updatedAt")
    }


def test_snake_case_keys_and_integer_versions_are_accepted() -> None:
    config = RoutingConfig.from_document(
        {
            "models": {
                MODEL: {
                    "strategy": "canary",
                    "variants": [
                        {"name": "champion", "alias": "champion", "weight": 95},
                        {"name": "candidate", "version": 12, "weight": 5},
                    ],
                    "progressive": {"variant": "candidate", "interval_seconds": 5},
                }
            }
        }
    )
    routing = config.models[MODEL]
    assert routing.variant("candidate").version == "12"
    assert routing.progressive is not None and routing.progressive.interval_seconds == 5
    assert config.to_document()["models"][MODEL]["progressive"]["intervalSeconds"] == 5


def test_a_routing_file_as_the_helm_chart_mounts_it_loads(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    config = RoutingConfig.from_file(path)
    assert [v.weight for v in config.models[MODEL].variants] == [90, 10]
    path.write_text("models: {brain-tumor-classifier: {variants: []}}", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"routing file routing.yaml: invalid routing"):
        RoutingConfig.from_file(path)


def test_every_accepted_replace_increments_the_revision_and_is_audited(
    make_router: MakeRouter,
) -> None:
    router = make_router()
    assert router.revision == 1
    router.replace(canary_doc(10), actor="admin")
    router.replace(canary_doc(25), actor="release-manager")
    assert router.document()["revision"] == 3
    trail = router.audit()
    assert [e["revision"] for e in trail] == [1, 2, 3]
    assert [e["actor"] for e in trail] == ["system", "admin", "release-manager"]
    assert all(e["time"].endswith("+00:00") for e in trail)
    assert trail[2]["changes"] == [
        {
            "model": MODEL,
            "change": "modified",
            "weights": {"champion": [90, 75], "challenger": [10, 25]},
        }
    ]


def test_the_audit_trail_is_append_only_json_lines_without_keys(
    make_router: MakeRouter, tmp_path: Path
) -> None:
    path = tmp_path / "audit" / "routing.jsonl"
    router = make_router(canary_doc(10), audit_path=path)
    secret = "study-1.2.840.113619.2.55.3.604688119"
    for _ in range(10):
        router.route(MODEL, {"x-medops-route-key": secret})
    router.replace(canary_doc(50), actor="admin")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["revision"] for line in lines] == [1, 2, 3]
    text = path.read_text(encoding="utf-8")
    assert secret not in text and hashlib.sha256(secret.encode()).hexdigest() not in text
    # a restarted gateway continues the trail and the revision numbers
    restarted = Router(audit_path=path)
    assert restarted.revision == 4
    assert [e["action"] for e in restarted.audit()] == ["load", "replace", "replace", "load"]
    assert path.read_text(encoding="utf-8").startswith(text)


def test_the_served_document_validates_against_the_helm_charts_routing_schema(
    make_router: MakeRouter,
) -> None:
    chart_schema = Path(__file__).resolve().parents[2] / "charts/medops/values.schema.json"
    schema = json.loads(chart_schema.read_text(encoding="utf-8"))["properties"]["routing"]
    pinned = canary_doc(0, strategy="shadow", shadow={"variant": "challenger", "percent": 50})
    pinned["models"][MODEL]["variants"][1] = {"name": "challenger", "version": "4", "weight": 0}
    router = make_router(ready_by_default=False)
    for doc in (yaml.safe_load(CONTRACT_EXAMPLE), pinned, canary_doc(50, strategy="bandit")):
        served = router.replace(doc, actor="admin")
        body = {k: v for k, v in served.items() if k not in ("revision", "updatedAt")}
        jsonschema.validate(body, schema)


def test_a_change_that_cannot_be_audited_is_not_made(
    make_router: MakeRouter, tmp_path: Path
) -> None:
    path = tmp_path / "routing.jsonl"
    router = make_router(canary_doc(10), audit_path=path)
    before = router.document()
    path.unlink()
    path.mkdir()  # unwritable even for root
    with pytest.raises(MedopsError, match=r"routing audit trail routing\.jsonl cannot be written"):
        router.replace(canary_doc(50), actor="admin")
    assert router.document() == before
    assert router.revision == before["revision"]
