"""A real Prometheus scraping the real gateway and monitor: metrics, dashboards, rules, alerts.

Prometheus (Debian's package) and the monitor (``python -m services.monitor``) run as
processes on loopback ports, the real gateway (tiny contract-abiding ONNX models) in a thread.
Real LGG slices go through ``POST /v1/analyze``; the gateway logs them, the monitor reads the
log. A small app exposing :class:`GatewayMetrics` adds the error statuses a healthy gateway
never answers, so every Grafana panel of the chart has series to show. Radiologists'
corrections of the gateway's predictions, sent to the running monitor, make the quality
alert's condition true and fire the retraining webhook exactly once.
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
from monitor_support import MODEL, LggSplit, Receiver, free_port, wait_http

from medops.monitoring.drift import build_reference
from medops.transforms import preprocess_slice
from pipelines.brain import CLASSIFIER, SEGMENTER

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts" / "medops" / "files" / "alerts.yaml"
DASHBOARDS = sorted((ROOT / "charts" / "medops" / "files" / "dashboards").glob("*.json"))
RULE_TESTS = sorted((ROOT / "infra" / "prometheus" / "rules-tests").glob("*.yaml"))
# Triton's own series exist only where a Triton server is scraped; here their queries are
# checked for validity, not for data
TRITON_PREFIX = "nv_"
GW_SIZE = 64

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
    return re.sub(r"\$\{?model\}?", ".*", expr)


@pytest.fixture
def stack(tmp_path: Path, lgg_split: LggSplit, receiver: Receiver) -> Iterator[dict[str, Any]]:
    from gateway_harness import GatewayThread, write_tiny_model

    from services.gateway.settings import GatewaySettings

    models = {
        CLASSIFIER: write_tiny_model(CLASSIFIER, tmp_path / "c.onnx", size=GW_SIZE, threshold=0.4),
        SEGMENTER: write_tiny_model(SEGMENTER, tmp_path / "s.onnx", size=GW_SIZE, seed=1),
    }
    # the reference of the served classifier, on the gateway's model input size
    raws, groups = lgg_split.reference_raw[::2], lgg_split.groups[::2]
    home = tmp_path / "home"
    build_reference(
        [preprocess_slice(im, GW_SIZE) for im in raws],
        model=CLASSIFIER,
        model_version="1",
        home=home,
        groups=groups,
        original_shapes=[im.shape for im in raws],
        calibration_window=30,  # the alarm's window: 30 predictions, fewer than the test sends
    )
    store_url = f"sqlite:///{tmp_path}/predictions.db"
    gateway = GatewayThread(
        GatewaySettings(
            home=tmp_path / "gateway-home", model_files=models, poll_seconds=0, onnx_threads=1,
            deid_key="test-deid-key", prediction_store_url=store_url,
        )
    )  # fmt: skip
    mon_port, sim_port, prom_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MEDOPS_MONITOR_HOST": "127.0.0.1",
        "MEDOPS_MONITOR_PORT": str(mon_port),
        "MEDOPS_MONITOR_HOME": str(home),
        "MEDOPS_MONITOR_STORE_URL": store_url,
        # the keys the gateway's local mode writes: one set for both services
        "MEDOPS_MONITOR_API_KEYS_FILE": str(
            tmp_path / "gateway-home" / "gateway" / "api-keys.json"
        ),
        "MEDOPS_MONITOR_CREDENTIALS_FILE": str(tmp_path / "gateway-home" / "credentials.json"),
        "MEDOPS_MONITOR_MODELS": json.dumps([CLASSIFIER]),
        "MEDOPS_MONITOR_INTERVAL_S": "1",
        "MEDOPS_MONITOR_MIN_WINDOW": "30",
        "MEDOPS_MONITOR_NEGATIVE_LABEL": "no_tumour",  # the tiny models' class name
        "MEDOPS_MONITOR_TRIGGERS": '["webhook"]',
        "MEDOPS_MONITOR_WEBHOOK_URL": receiver.url,
    }
    gw_target = gateway.url
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "monitor", "static_configs": [{"targets": [f"127.0.0.1:{mon_port}"]}]},
            {"job_name": "gateway", "static_configs": [{"targets": [gw_target]}]},
            {"job_name": "errors", "static_configs": [{"targets": [f"127.0.0.1:{sim_port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        gateway.start()
        procs += [
            subprocess.Popen([sys.executable, "-m", "services.monitor"], cwd=ROOT, env=env),
            subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("gateway_like.py")), str(sim_port)],
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
        prom = f"http://127.0.0.1:{prom_port}"
        for url in (f"{prom}/-/ready", f"http://127.0.0.1:{sim_port}/metrics"):
            wait_http(url, timeout=60)
        wait_http(f"http://127.0.0.1:{mon_port}/v2/health/live", timeout=120)
        keys = json.loads((tmp_path / "gateway-home" / "credentials.json").read_text())
        yield {
            "prom": prom,
            "monitor": f"http://127.0.0.1:{mon_port}",
            "gateway": f"http://{gw_target}",
            "gateway_auth": {"authorization": f"Bearer {keys['client']}"},
            "reviewer_auth": {"authorization": f"Bearer {keys['reviewer']}"},
            "errors": f"http://127.0.0.1:{sim_port}",
            "receiver": receiver,
        }
    finally:
        for proc in procs:
            _stop(proc)
        gateway.stop()


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
    stack: dict[str, Any], lgg_dir: Path
) -> None:
    prom, monitor, receiver = stack["prom"], stack["monitor"], stack["receiver"]
    # real LGG slices through the real gateway, over several scrapes
    held_out = sorted(p for p in lgg_dir.iterdir() if p.is_dir())[3::4]  # not in the reference
    slices = [
        f
        for patient in held_out
        for f in sorted(patient.glob("*.tif"))
        if not f.name.endswith("_mask.tif")
    ]
    answers = []
    with httpx.Client(base_url=stack["gateway"], headers=stack["gateway_auth"], timeout=60) as gw:
        for i, path in enumerate(slices[:40]):
            r = gw.post(
                "/v1/analyze", content=path.read_bytes(), headers={"content-type": "image/tiff"}
            )
            assert r.status_code == 200, r.text
            answers.append(r.json())
            if i % 10 == 9:
                bad = gw.post(
                    "/v1/analyze", content=b"not an image", headers={"content-type": "image/tiff"}
                )
                assert bad.status_code in (400, 415)
                time.sleep(1.0)
    # error statuses a healthy gateway never answers, from the GatewayMetrics app
    with httpx.Client(base_url=stack["errors"], timeout=10) as client:
        for _ in range(4):
            for i in range(20):
                variant = "challenger" if i % 4 == 0 else "champion"
                status = 503 if i % 10 == 3 else 400 if i % 10 == 7 else 200
                client.post("/v1/analyze", params={"variant": variant, "status": status})
            time.sleep(1.0)
    # reviewers confirm 10 of the gateway's answers and correct 20
    for i, doc in enumerate(answers[:30]):
        said = doc["decision"]
        label = said if i < 10 else ("tumour" if said == "no_tumour" else "no_tumour")
        body = {"request_id": doc["slices"][0]["prediction_id"], "label": label}
        r = httpx.post(f"{monitor}/v1/feedback", json=body, headers=stack["reviewer_auth"])
        assert r.status_code == 200, r.text
    names = [
        "medops_requests_total", "medops_request_duration_seconds_bucket",
        "medops_predictions_total", "medops_prediction_confidence_bucket",
        "medops_drift_share", "medops_drift_detected", "medops_quality_accuracy",
        "medops_quality_score", "medops_retrain_triggers_total",
    ]  # fmt: skip
    for name in names:
        assert _until(lambda n=name: _query(prom, n)), f"{name} never appeared in Prometheus"
    assert _until(lambda: _query(prom, f'medops_quality_accuracy{{model="{MODEL}"}} < 0.8'))
    # the real gateway's own series, and the monitor judged the window the gateway logged
    assert _query(prom, 'medops_requests_total{job="gateway",status="200"} >= 40')
    assert _query(prom, f'medops_drift_window_size{{model="{MODEL}"}} >= 30')

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
    assert MODEL in models  # the dashboards' $model variable

    # the corrections made the quality alert's condition true: active in Prometheus
    def accuracy_alert() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "MedopsQualityDrop"
            and a["labels"]["metric"] == "accuracy"
        ]

    active = _until(accuracy_alert)
    assert active, "MedopsQualityDrop never became active for accuracy"
    # `for: 30m` keeps it pending here; the promtool tests show it firing after 30 minutes
    assert active[0]["state"] in ("pending", "firing")
    # many evaluation rounds (one a second) went by: one retraining trigger for the episode
    assert len(receiver.bodies) == 1, receiver.bodies
    assert receiver.bodies[0]["reason"] == "quality"
    assert _query(prom, f'medops_retrain_triggers_total{{model="{MODEL}"}} == 1')
