"""A real Prometheus scraping the monitor and a gateway: metrics, dashboards, rules, alerts.

Prometheus (Debian's package), the monitor (``python -m services.monitor``, the real service)
and a serving app exposing :class:`GatewayMetrics` run as processes on loopback ports; every
Grafana panel query of the chart is run against the live Prometheus, the alert rules are
checked and unit-tested with promtool, and radiologists' corrections sent to the running
monitor make the quality alert's condition true and fire the retraining webhook once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from monitor_support import MODEL, Receiver, free_port, wait_http

from medops.monitoring.drift import Reference
from medops.monitoring.store import PredictionRecord, PredictionStore

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts" / "medops" / "files" / "alerts.yaml"
DASHBOARDS = sorted((ROOT / "charts" / "medops" / "files" / "dashboards").glob("*.json"))
RULE_TESTS = sorted((ROOT / "infra" / "prometheus" / "rules-tests").glob("*.yaml"))
# Triton's own series exist only where a Triton server is scraped; here their queries are
# checked for validity, not for data
TRITON_PREFIX = "nv_"

pytestmark = pytest.mark.integration


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: run infra/install-system-deps.sh (Debian prometheus)"
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _panel_queries() -> list[tuple[str, str]]:
    out = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str) and node["expr"].strip():
                out.append((where, node["expr"]))
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for path in DASHBOARDS:
        walk(json.loads(path.read_text()).get("panels", []), path.name)
    return out


def _grafana_to_promql(expr: str) -> str:
    # Grafana substitutes template variables before the query reaches Prometheus
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    expr = re.sub(r"\$\{?model\}?", ".*", expr)
    # Prometheus 3 normalises bucket bounds on ingestion (prometheus_client's le="1.0" is
    # stored as le="1"); Debian's 2.42 keeps the text, so match both spellings here
    return re.sub(r'le="([0-9.]+?)"', lambda m: f'le=~"{m.group(1)}(\\\\.0)?"', expr)


@pytest.fixture
def stack(
    tmp_path: Path,
    lgg_reference: Reference,
    heldout_features: list[dict[str, float]],
    receiver: Receiver,
) -> Iterator[dict[str, Any]]:
    store_url = f"sqlite:///{tmp_path}/predictions.db"
    with PredictionStore(store_url) as store:
        for i, feats in enumerate(heldout_features):
            store.record(
                PredictionRecord(
                    request_id=f"r{i}", model=MODEL, version="1", variant="champion",
                    probabilities={"no_tumour": 0.2, "tumour": 0.8}, features=feats,
                    decision="tumour", confidence=0.8,
                )
            )  # fmt: skip
    mon_port, gw_port, prom_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MEDOPS_MONITOR_HOST": "127.0.0.1",
        "MEDOPS_MONITOR_PORT": str(mon_port),
        "MEDOPS_MONITOR_HOME": str(lgg_reference.path.parents[3]),
        "MEDOPS_MONITOR_STORE_URL": store_url,
        "MEDOPS_MONITOR_MODELS": json.dumps([MODEL]),
        "MEDOPS_MONITOR_INTERVAL_S": "1",
        "MEDOPS_MONITOR_MIN_WINDOW": "30",
        "MEDOPS_MONITOR_TRIGGERS": '["webhook"]',
        "MEDOPS_MONITOR_WEBHOOK_URL": receiver.url,
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "monitor", "static_configs": [{"targets": [f"127.0.0.1:{mon_port}"]}]},
            {"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{gw_port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    procs = [
        subprocess.Popen([sys.executable, "-m", "services.monitor"], cwd=ROOT, env=env),
        subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("gateway_like.py")), str(gw_port)],
            cwd=ROOT,
        ),
        subprocess.Popen(
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        prom = f"http://127.0.0.1:{prom_port}"
        for url in (f"{prom}/-/ready", f"http://127.0.0.1:{gw_port}/metrics"):
            wait_http(url, timeout=60)
        wait_http(f"http://127.0.0.1:{mon_port}/health/live", timeout=120)
        yield {"prom": prom, "monitor": f"http://127.0.0.1:{mon_port}",
               "gateway": f"http://127.0.0.1:{gw_port}", "receiver": receiver}  # fmt: skip
    finally:
        for proc in procs:
            _stop(proc)


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _until(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    return predicate()


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = _promtool()
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert RULE_TESTS, "no promtool rule tests under infra/prometheus/rules-tests"
    alerts = {
        r["alert"]
        for g in yaml.safe_load(ALERTS.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    tested = set()
    for path in RULE_TESTS:
        run = subprocess.run(
            [promtool, "test", "rules", str(path)], capture_output=True, text=True, cwd=ROOT
        )
        assert run.returncode == 0, run.stdout + run.stderr
        for t in yaml.safe_load(path.read_text())["tests"]:
            tested |= {a["alertname"] for a in t.get("alert_rule_test", [])}
    assert alerts <= tested, f"alerts without a promtool test: {sorted(alerts - tested)}"


def test_live_prometheus_sees_every_metric_every_dashboard_query_and_the_quality_alert(
    stack: dict[str, Any],
) -> None:
    prom, gateway, monitor = stack["prom"], stack["gateway"], stack["monitor"]
    receiver = stack["receiver"]
    # reviewers correct 40 of the 80 logged predictions through the running monitor
    for i in range(80):
        label = "tumour" if i < 20 else "no_tumour" if i < 60 else None
        if label:
            r = httpx.post(f"{monitor}/v1/feedback", json={"request_id": f"r{i}", "label": label})
            assert r.status_code == 200, r.text
    # traffic over several scrapes, so rates and quantiles have two points or more
    with httpx.Client(base_url=gateway, timeout=10) as client:
        for _ in range(6):
            for i in range(20):
                variant = "challenger" if i % 4 == 0 else "champion"
                status = 503 if i % 10 == 3 else 400 if i % 10 == 7 else 200
                client.post("/v1/analyze", params={"variant": variant, "status": status})
            time.sleep(1.0)
    names = [
        "medops_requests_total", "medops_request_duration_seconds_bucket",
        "medops_predictions_total", "medops_prediction_confidence_bucket",
        "medops_drift_share", "medops_drift_detected", "medops_quality_accuracy",
        "medops_quality_score", "medops_retrain_triggers_total",
    ]  # fmt: skip
    for name in names:
        assert _until(lambda n=name: _query(prom, n)), f"{name} never appeared in Prometheus"
    assert _until(lambda: _query(prom, f'medops_quality_accuracy{{model="{MODEL}"}} < 0.8'))

    queries = _panel_queries()
    assert len(queries) >= 10, "expected the chart's Grafana dashboards"
    empty = []
    for where, expr in queries:
        promql = _grafana_to_promql(expr)
        syntax = subprocess.run(
            [_promtool(), "query", "instant", "-o", "json", prom, promql],
            capture_output=True,
            text=True,
        )
        assert syntax.returncode == 0, f"{where}: invalid PromQL {promql!r}: {syntax.stderr}"
        if TRITON_PREFIX not in promql and not _until(lambda q=promql: _query(prom, q), 20):
            empty.append(f"{where}: {promql}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    models = httpx.get(
        f"{prom}/api/v1/label/model/values", params={"match[]": "medops_requests_total"}
    ).json()["data"]
    assert models == [MODEL]  # the dashboards' $model variable

    # the corrections made the quality alert's condition true: active in Prometheus
    def quality_alert() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "MedopsQualityDrop"]

    active = _until(quality_alert)
    assert active, "MedopsQualityDrop never became active"
    # `for: 30m` keeps it pending here; the promtool tests show it firing after 30 minutes
    assert active[0]["state"] in ("pending", "firing")
    assert active[0]["labels"]["metric"] == "accuracy"
    # many evaluation rounds (one a second) went by: one retraining trigger for the episode
    assert len(receiver.bodies) == 1, receiver.bodies
    assert receiver.bodies[0]["reason"] == "quality"
    assert _query(prom, f'medops_retrain_triggers_total{{model="{MODEL}"}} == 1')
