"""Three real gateway processes and a monitor sharing one store (a SQLite file, then a real
PostgreSQL) and one real MLflow registry (SQLite): a prediction one replica logs takes a
reviewer's feedback at the monitor, a PUT on one replica is served by all three within
the poll interval, of two concurrent PUTs on one revision one wins and one gets 409, a refused
document changes no replica, and a progressive rollout driven through all three advances each
step once, survives the SIGKILL of a replica and moves the champion alias once.

The replicas serve small real ONNX classifiers with the in-process ONNX Runtime backend.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from fleet_support import Fleet, Replica, start_fleet
from routing_support import SIZE, tiny_classifier

from medops import modelspec
from medops.registry import Registry
from pipelines.brain import CLASSIFIER

pytestmark = pytest.mark.integration

POLL_S = 0.5
INFER = f"/v2/models/{CLASSIFIER}/infer"
_databases = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp(f"fleet-{request.param}")
    registry = Registry(f"sqlite:///{work / 'mlflow.db'}", cache_dir=work / "registry-cache")
    for bias, alias in ((0.0, "champion"), (0.5, "challenger")):
        registry.log_and_register(
            CLASSIFIER,
            onnx_path=tiny_classifier(work / f"{alias}.onnx", bias=bias),
            dataset_version="fleet-test",
            params={},
            metrics={},
            aliases=(alias,),
        )
    if request.param == "sqlite":
        store_url = f"sqlite:///{work / 'predictions.db'}"
    else:
        server: str = request.getfixturevalue("postgres_url")
        name = f"fleet_{next(_databases)}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        store_url = server.rsplit("/", 1)[0] + f"/{name}"
    running = start_fleet(
        work,
        count=3,
        tracking_uri=registry.tracking_uri,
        store_url=store_url,
        models=[CLASSIFIER],
        poll_s=POLL_S,
    )
    try:
        yield running
    finally:
        running.stop()


def get(replica: Replica, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(replica.url + path, headers=headers, timeout=10.0)


def document(fleet: Fleet, replica: Replica) -> dict[str, Any]:
    r = get(replica, "/v1/routing", fleet.client)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def weights(doc: dict[str, Any]) -> dict[str, int]:
    return {v["name"]: v["weight"] for v in doc["models"][CLASSIFIER]["variants"]}


def split(challenger: int) -> dict[str, Any]:
    return {
        "models": {
            CLASSIFIER: {
                "strategy": "canary",
                "variants": [
                    {"name": "champion", "alias": "champion", "weight": 100 - challenger},
                    {"name": "challenger", "alias": "challenger", "weight": challenger},
                ],
            }
        }
    }


def infer_body() -> dict[str, Any]:
    data = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    return {
        "inputs": [
            {
                "name": modelspec.INPUT_NAME,
                "shape": list(data.shape),
                "datatype": "FP32",
                "data": data.ravel().tolist(),
            }
        ]
    }


def wait_all_serve(fleet: Fleet, revision: int, timeout_s: float) -> float:
    """Seconds until every live replica serves ``revision`` (fails past ``timeout_s``)."""
    start = time.monotonic()
    while True:
        served = [document(fleet, r)["revision"] for r in fleet.alive()]
        if all(s == revision for s in served):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout_s, f"revision {revision} not served: {served}"
        time.sleep(0.05)


def test_a_put_on_one_replica_is_served_by_all_three_within_the_poll_interval(
    fleet: Fleet,
) -> None:
    first, second, third = fleet.replicas
    seen = get(first, "/v1/routing", fleet.client)
    revision = seen.json()["revision"]
    assert seen.headers["etag"] == f'"{revision}"'
    put = httpx.put(
        second.url + "/v1/routing",
        json=split(20),
        headers={**fleet.admin, "if-match": seen.headers["etag"]},
        timeout=30.0,
    )
    assert put.status_code == 200, put.text
    assert put.json()["revision"] == revision + 1
    # a replica adopts at its next poll; a GET takes a few ms on top
    took = wait_all_serve(fleet, revision + 1, timeout_s=POLL_S + 1.0)
    print(f"revision {revision + 1} served by all three {took:.2f} s after the PUT answered")
    docs = [document(fleet, r) for r in fleet.replicas]
    assert all(weights(d) == {"champion": 80, "challenger": 20} for d in docs)
    assert len({d["updatedAt"] for d in docs}) == 1
    # really served, not only stored: the third replica loaded the challenger it names
    deadline = time.monotonic() + 10
    while True:
        r = httpx.post(
            third.url + INFER,
            json=infer_body(),
            headers={**fleet.client, "x-medops-variant": "challenger"},
            timeout=30.0,
        )
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert r.headers["x-medops-model-version"] == "2"


def test_two_concurrent_puts_on_the_same_revision_one_wins_and_one_gets_409(
    fleet: Fleet,
) -> None:
    first, _, third = fleet.replicas
    revision = document(fleet, first)["revision"]
    trail_before = len(get(first, "/v1/routing/audit", fleet.admin).json()["entries"])
    barrier = threading.Barrier(2)
    answers: dict[int, httpx.Response] = {}

    def put(replica: Replica, challenger: int) -> None:
        barrier.wait()
        answers[challenger] = httpx.put(
            replica.url + "/v1/routing",
            json={**split(challenger), "revision": revision},
            headers=fleet.admin,
            timeout=30.0,
        )

    threads = [
        threading.Thread(target=put, args=(first, 30)),
        threading.Thread(target=put, args=(third, 40)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers.values()) == [200, 409], {
        k: a.text for k, a in answers.items()
    }
    (winner,) = [k for k, a in answers.items() if a.status_code == 200]
    (loser,) = [a for a in answers.values() if a.status_code == 409]
    assert (
        f"routing revision {revision} is stale: the current revision is {revision + 1}"
        in loser.json()["error"]
    )
    wait_all_serve(fleet, revision + 1, timeout_s=POLL_S + 1.0)
    for r in fleet.replicas:
        assert weights(document(fleet, r)) == {"champion": 100 - winner, "challenger": winner}
    trail = get(third, "/v1/routing/audit", fleet.admin).json()["entries"]
    assert len(trail) == trail_before + 1 and trail[-1]["revision"] == revision + 1


def test_a_refused_document_leaves_every_replica_on_its_running_revision(fleet: Fleet) -> None:
    first, second, _ = fleet.replicas
    before = [document(fleet, r) for r in fleet.replicas]
    bad = split(20)
    bad["models"][CLASSIFIER]["variants"][0]["weight"] = 90
    refused = httpx.put(second.url + "/v1/routing", json=bad, headers=fleet.admin, timeout=30.0)
    assert refused.status_code == 400
    assert "weights must sum to 100, got 110" in refused.json()["error"]
    garbled = httpx.put(
        first.url + "/v1/routing",
        json=split(10),
        headers={**fleet.admin, "if-match": "yesterday"},
        timeout=30.0,
    )
    assert garbled.status_code == 400 and "If-Match" in garbled.json()["error"]
    time.sleep(POLL_S * 2)  # every replica has polled since
    assert [document(fleet, r) for r in fleet.replicas] == before


def test_a_progressive_rollout_through_three_replicas_steps_once_survives_sigkill_and_promotes_once(
    fleet: Fleet,
) -> None:
    first, second, third = fleet.replicas
    registry = Registry(fleet.tracking_uri)
    assert registry.get_alias(CLASSIFIER, "champion") == "1"
    interval = 2.0
    doc = split(0)
    doc["models"][CLASSIFIER]["progressive"] = {
        "variant": "challenger",
        "steps": [50, 100],
        "intervalSeconds": interval,
        "minRequests": 3,
        "maxErrorRate": 0.05,
        "maxLatencySeconds": 5.0,
    }
    put = httpx.put(first.url + "/v1/routing", json=doc, headers=fleet.admin, timeout=30.0)
    assert put.status_code == 200, put.text
    # the challenger is loaded already: the canary may start within the PUT itself
    entries = get(second, "/v1/routing/audit", fleet.admin).json()["entries"]
    started = [e for e in entries if e["action"] == "replace"][-1]["revision"]

    def rollout() -> list[dict[str, Any]]:
        entries = get(second, "/v1/routing/audit", fleet.admin).json()["entries"]
        return [e for e in entries if e["revision"] > started]

    body = infer_body()
    killed = False
    deadline = time.monotonic() + 90
    with httpx.Client(timeout=30.0) as http:
        for n in itertools.count():
            live = fleet.alive()
            replica = live[n % len(live)]
            r = http.post(replica.url + INFER, json=body, headers=fleet.client)
            assert r.status_code == 200, r.text
            if n % 10 == 0:
                made = rollout()
                if not killed and made:  # the canary has started: kill a replica mid-rollout
                    third.kill()
                    killed = True
                if any(e["action"] == "promote" for e in made):
                    break
            assert time.monotonic() < deadline, rollout()
    steps = [(e["actor"], e["action"], e["reason"].split(":")[0]) for e in rollout()]
    assert steps == [
        ("progressive", "progressive", "start challenger to 50%"),
        ("progressive", "progressive", "step challenger to 100%"),
        ("progressive", "promote", "promote challenger to 100%"),
    ]
    assert not third.alive()
    assert registry.get_alias(CLASSIFIER, "champion") == "2"
    moved = sum(r.log().count("champion alias moved") for r in fleet.replicas)
    assert moved == 1, "the champion alias was moved by exactly one replica, once"
    # the survivors serve the new champion: the registry poll reloads the alias and the routing
    # poll the promoting revision (until then the challenger, version 2 too, takes the traffic)
    for replica in (first, second):
        deadline = time.monotonic() + 15
        while True:
            r = httpx.post(replica.url + INFER, json=body, headers=fleet.client, timeout=30.0)
            assert r.status_code == 200, r.text
            served = (r.headers["x-medops-variant"], r.headers["x-medops-model-version"])
            if served == ("champion", "2"):
                break
            assert time.monotonic() < deadline, f"the promoted version is not served: {served}"
            time.sleep(0.2)
    progress = get(first, "/v1/routing/decisions", fleet.admin).json()["progress"]
    assert [p["model"] for p in progress] == [CLASSIFIER]
    assert progress[0]["revision"] == started + 3


def test_the_monitor_reads_the_prediction_log_every_replica_writes(fleet: Fleet) -> None:
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE), 90, np.uint8)).save(png, format="PNG")
    ids = []
    # the replicas still running (the rollout test kills one of this module's fleet)
    live = fleet.alive()
    assert len(live) >= 2
    for i, replica in enumerate(live):
        r = httpx.post(
            f"{replica.url}/v1/analyze?segment=never",
            content=png.getvalue(),
            headers={**fleet.client, "content-type": "image/png", "x-request-id": f"study-{i}"},
            timeout=30.0,
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["slices"][0]["prediction_id"])
    feedback = f"{fleet.monitor.url}/v1/feedback"
    unauthenticated = httpx.post(feedback, json={"request_id": ids[0], "label": "tumour"})
    assert unauthenticated.status_code == 401
    for prediction_id in ids:
        r = httpx.post(
            feedback,
            json={"request_id": prediction_id, "label": "no_tumour"},
            headers=fleet.reviewer,
            timeout=10.0,
        )
        assert r.status_code == 200, r.text
    wrong = httpx.post(
        feedback, json={"request_id": ids[0], "label": "no tumour"}, headers=fleet.reviewer
    )
    assert wrong.status_code == 400
