"""Routers of several replicas sharing one routing store (a SQLite file or a real PostgreSQL):
one document and revision, compare-and-set writes, one audit trail, a canary step taken once.

In-process and on a fake clock; the three-process version is test_routing_fleet.py.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from routing_support import MODEL, FakeClock, canary_doc

from medops.errors import InvalidInputError
from services.gateway.routing import RevisionConflictError, Router, RoutingStore

INTERVAL = 10.0
_databases = itertools.count()


def progressive_doc() -> dict[str, Any]:
    spec = {
        "variant": "challenger",
        "steps": [50, 100],
        "intervalSeconds": INTERVAL,
        "minRequests": 5,
        "maxErrorRate": 0.05,
        "maxLatencySeconds": 1.0,
    }
    return canary_doc(0, progressive=spec)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store: a SQLite file, or a new database in the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'predictions.db'}"
    server: str = request.getfixturevalue("postgres_url")
    name = f"routing_{next(_databases)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def stores(store_url: str) -> Iterator[list[RoutingStore]]:
    """Three replicas' connections to the one store."""
    opened = [RoutingStore(store_url) for _ in range(3)]
    yield opened
    for store in opened:
        store.close()


def replica(store: RoutingStore, clock: FakeClock, **kwargs: Any) -> Router:
    return Router(store=store, clock=clock, wall_clock=clock, rng=random.Random(3), **kwargs)


def test_a_change_on_one_replica_is_served_by_the_others_after_a_refresh(
    stores: list[RoutingStore], clock: FakeClock
) -> None:
    a, b, c = (replica(s, clock) for s in stores)
    assert a.revision == b.revision == c.revision == 1  # the first seeds, the others join
    accepted = a.replace(canary_doc(20), actor="admin")
    assert accepted["revision"] == 2
    assert b.revision == 1, "a replica serves its own copy until it refreshes"
    assert b.refresh() and c.refresh()
    assert b.document() == c.document() == a.document()
    assert not b.refresh(), "nothing new: no reload"
    trail = c.audit()
    assert [e["revision"] for e in trail] == [1, 2]
    assert trail[-1]["actor"] == "admin" and trail[-1]["changes"][0]["weights"] == {
        "champion": 80,
        "challenger": 20,
    }


def test_a_replica_joining_a_fleet_serves_the_fleet_document_not_its_own_file(
    stores: list[RoutingStore], clock: FakeClock
) -> None:
    from services.gateway.routing import RoutingConfig

    first = replica(stores[0], clock, config=RoutingConfig.from_document(canary_doc(10)))
    first.replace(canary_doc(30), actor="admin")
    late = replica(stores[1], clock, config=RoutingConfig.from_document(canary_doc(90)))
    weights = {v["name"]: v["weight"] for v in late.document()["models"][MODEL]["variants"]}
    assert weights == {"champion": 70, "challenger": 30}
    assert late.revision == first.revision == 2
    assert [e["action"] for e in late.audit()] == ["load", "replace"]


def test_a_write_on_a_stale_revision_is_refused_and_names_both_revisions(
    stores: list[RoutingStore], clock: FakeClock
) -> None:
    a, b = replica(stores[0], clock), replica(stores[1], clock)
    read = b.revision
    a.replace(canary_doc(20), actor="admin", expected_revision=read)
    with pytest.raises(RevisionConflictError) as refused:
        b.replace(canary_doc(40), actor="admin", expected_revision=read)
    assert refused.value.status_code == 409
    assert "revision 1 is stale: the current revision is 2" in refused.value.message
    # the loser now serves the winner's document; its own was applied nowhere
    for router in (a, b):
        router.refresh()
        weights = {v["name"]: v["weight"] for v in router.document()["models"][MODEL]["variants"]}
        assert weights == {"champion": 80, "challenger": 20}
        assert router.revision == 2
    assert len(a.audit()) == 2


def test_a_refused_document_leaves_every_replica_on_its_revision(
    stores: list[RoutingStore], clock: FakeClock
) -> None:
    a, b = replica(stores[0], clock), replica(stores[1], clock)
    a.replace(canary_doc(20), actor="admin")
    b.refresh()
    before = b.document()
    bad = canary_doc(20)
    bad["models"][MODEL]["variants"][0]["weight"] = 90
    with pytest.raises(InvalidInputError, match="weights must sum to 100"):
        a.replace(bad, actor="admin")
    assert stores[2].revision() == 2
    assert not b.refresh() and b.document() == before
    assert a.document() == before


def test_a_canary_step_is_decided_once_for_the_fleet_and_promoted_once(
    stores: list[RoutingStore], clock: FakeClock
) -> None:
    promoted: list[str] = []
    fleet = [
        replica(s, clock, on_promote=lambda m, v: promoted.append(v), ready_by_default=False)
        for s in stores
    ]
    fleet[0].replace(progressive_doc(), actor="admin")
    for router in fleet:
        router.refresh()
        router.set_ready(MODEL, "challenger", True)  # the first starts it; the others adopt
    for _ in range(4):  # judged every interval: step to 100, then promote
        for _ in range(int(INTERVAL)):
            clock.advance(1.0)
            for router in fleet:
                router.observe(MODEL, "challenger", ok=True, latency_s=0.01)
                router.observe(MODEL, "champion", ok=True, latency_s=0.01)
        for router in fleet:
            router.refresh()
    moves = [(e["action"], e.get("reason", "").split(":")[0]) for e in fleet[2].audit()]
    assert moves == [
        ("load", ""),
        ("replace", ""),
        ("progressive", "start challenger to 50%"),
        ("progressive", "step challenger to 100%"),
        ("promote", "promote challenger to 100%"),
    ]
    assert promoted == ["challenger"], "the alias hook ran for the one replica that won"
    superseded = [d for r in fleet for d in r.decisions(MODEL) if "superseded" in d["decision"]]
    assert superseded, "the other replicas were due too and found the step already taken"
    assert {r.revision for r in fleet} == {5}
    assert all(r.config.for_model(MODEL).strategy == "single" for r in fleet)
    (progress,) = fleet[1].progress()
    assert progress["revision"] == 5 and progress["model"] == MODEL


def test_a_failed_promotion_in_the_fleet_changes_nothing_and_is_retried(
    stores: list[RoutingStore], clock: FakeClock
) -> None:
    calls: list[str] = []

    def flaky(model: str, variant: str) -> None:
        calls.append(variant)
        if len(calls) == 1:
            raise InvalidInputError("registry said no")

    doc = progressive_doc()
    doc["models"][MODEL]["variants"][0]["weight"] = 0
    doc["models"][MODEL]["variants"][1]["weight"] = 100
    router = replica(stores[0], clock, on_promote=flaky)
    router.replace(doc, actor="admin")
    for _ in range(2):
        for _ in range(int(INTERVAL) + 1):
            clock.advance(1.0)
            router.observe(MODEL, "challenger", ok=True, latency_s=0.01)
        if len(calls) == 1:
            assert router.decisions(MODEL)[-1]["decision"] == "promote-failed"
            assert stores[1].revision() == 2, "the failed promotion wrote nothing"
    assert calls == ["challenger", "challenger"]
    assert [e["action"] for e in router.audit()] == ["load", "replace", "promote"]


def test_without_a_store_a_stale_revision_is_refused_too(clock: FakeClock) -> None:
    router = Router(clock=clock)
    router.replace(canary_doc(20), actor="admin", expected_revision=1)
    with pytest.raises(RevisionConflictError, match="revision 1 is stale"):
        router.replace(canary_doc(30), actor="admin", expected_revision=1)
    assert router.revision == 2


def test_an_unsupported_store_url_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match="unsupported scheme in 'mysql'"):
        RoutingStore("mysql://somewhere/db")


def test_a_store_that_cannot_be_reached_answers_503_by_name() -> None:
    from fleet_support import free_port

    from medops.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="cannot connect") as refused:
        RoutingStore(f"postgresql://medops@127.0.0.1:{free_port()}/nowhere")
    assert refused.value.status_code == 503
