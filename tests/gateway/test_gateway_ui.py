"""The web pages as served (no browser): files, a strict CSP, nothing inline or from another host;
the endpoints they call stay keyed; feedback with a corrected mask reaches the prediction log."""

from __future__ import annotations

import http.client
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from gateway_harness import GatewayThread

from medops.monitoring.store import PredictionStore
from medops.rle import rle_decode, rle_encode
from pipelines.brain import SEGMENTER
from services.gateway.ui import PAGES

PAGE_FILES = sorted(p.name for p in PAGES.iterdir() if p.is_file())


class _Inline(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, styles, handlers, other hosts."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            self._in_script = "src" not in named
        if tag == "style":
            self.problems.append("<style> element")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"{tag} {name}=")
            if name in ("src", "href") and value and re.match(r"^(https?:)?//", value):
                self.problems.append(f"{tag} {name}={value}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script")


def test_the_pages_are_served_with_a_strict_csp_and_nothing_inline(
    onnx_gateway: GatewayThread,
) -> None:
    assert {"index.html", "console.html", "review.js", "console.js", "style.css"} <= set(PAGE_FILES)
    for name in [*PAGE_FILES, ""]:
        r = httpx.get(f"http://{onnx_gateway.url}/ui/{name}")
        assert r.status_code == 200, name
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "style-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp and r.headers["x-content-type-options"] == "nosniff"
        if name.endswith(".html") or name == "":
            parser = _Inline()
            parser.feed(r.text)
            assert parser.problems == [], (name, parser.problems)
        if name.endswith(".js"):
            assert not re.search(r"https?://", r.text), f"{name} names another host"
            assert "localStorage" not in r.text and "document.cookie" not in r.text
    plotly = httpx.get(f"http://{onnx_gateway.url}/ui/vendor/plotly.min.js")
    assert plotly.status_code == 200, "Plotly missing: run infra/install-ui-deps.sh"
    assert plotly.headers["content-type"].startswith("text/javascript")
    assert len(plotly.content) > 1_000_000
    # an unknown page is a 404 that still carries the policy
    r = httpx.get(f"http://{onnx_gateway.url}/ui/nothing-here.html")
    assert r.status_code == 404 and "content-security-policy" in r.headers


def test_the_endpoints_the_pages_call_stay_keyed(onnx_gateway: GatewayThread) -> None:
    url = f"http://{onnx_gateway.url}"
    for method, path in [
        ("GET", "/v1/session"),
        ("GET", "/v1/models/registry"),
        ("GET", "/v1/monitor/history?model=x"),
        ("GET", "/v1/monitor/report?model=x"),
        ("GET", "/v1/console/links"),
        ("POST", "/v1/feedback"),
        ("POST", "/v1/preview"),
        ("POST", "/v1/explain"),
        ("POST", "/v1/analyze"),
    ]:
        r = httpx.request(method, url + path)
        assert r.status_code == 401, (path, r.status_code)
        r = httpx.request(method, url + path, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 403 and r.json()["error"] == "API key not recognised"
    # the open page prefix opens nothing else, however the path is spelled
    host, port = onnx_gateway.url.split(":")
    for raw in ("/ui/../v1/session", "/ui/%2e%2e/v1/session", "/ui//v1/session"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", raw)
        answer = conn.getresponse()
        assert answer.status in (401, 404), (raw, answer.status)
        assert b'"role"' not in answer.read()
        conn.close()


def test_session_names_the_role_and_the_registry_lists_the_served_files(
    onnx_gateway: GatewayThread, keys: dict[str, str]
) -> None:
    url = f"http://{onnx_gateway.url}"
    for role in ("client", "reviewer", "admin"):
        r = httpx.get(f"{url}/v1/session", headers={"authorization": f"Bearer {keys[role]}"})
        assert r.status_code == 200 and r.json() == {"role": role}
    r = httpx.get(
        f"{url}/v1/models/registry", headers={"authorization": f"Bearer {keys['client']}"}
    )
    names = {m["name"] for m in r.json()["models"]}
    assert names and all(m["source"] == "file" for m in r.json()["models"])
    r = httpx.get(
        f"{url}/v1/monitor/history?model=x", headers={"authorization": f"Bearer {keys['client']}"}
    )
    assert r.status_code == 404 and "MEDOPS_GATEWAY_MONITOR_URL" in r.json()["error"]
    r = httpx.get(
        f"{url}/v1/monitor/report?model=x", headers={"authorization": f"Bearer {keys['client']}"}
    )
    assert r.status_code == 404 and "MEDOPS_GATEWAY_MONITOR_URL" in r.json()["error"]
    r = httpx.get(f"{url}/v1/console/links", headers={"authorization": f"Bearer {keys['client']}"})
    assert r.json() == {"grafana": [], "evidently_report": False}


def test_the_console_links_every_dashboard_the_chart_ships(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from gateway_support import make_settings, read_keys

    from services.gateway.rest import GRAFANA_DASHBOARDS

    chart = Path(__file__).resolve().parents[2] / "charts" / "medops" / "files" / "dashboards"
    shipped = {}
    for path in chart.glob("*.json"):
        doc = json.loads(path.read_text())
        shipped[doc["uid"]] = doc["title"]
    assert {uid: f"medops / {title}" for uid, title in GRAFANA_DASHBOARDS} == shipped

    home = tmp_path / "home"
    settings = make_settings(home, tiny_models, grafana_url="https://grafana.example/")
    with GatewayThread(settings) as gw:
        headers = {"authorization": f"Bearer {read_keys(home)['client']}"}
        links = httpx.get(f"http://{gw.url}/v1/console/links", headers=headers).json()
    urls = {d["url"] for d in links["grafana"]}
    assert urls == {f"https://grafana.example/d/{uid}" for uid in shipped}


@pytest.fixture(scope="module")
def tumour_slice(lgg_patient: Path) -> Path:
    for mask in sorted(lgg_patient.glob("*_mask.tif")):
        if tifffile.imread(mask).any():
            return Path(str(mask).replace("_mask.tif", ".tif"))
    raise AssertionError(f"no tumour slice in {lgg_patient.name}")


def test_a_corrected_mask_from_the_page_is_stored_and_bad_ones_are_refused(
    onnx_gateway: GatewayThread,
    gateway_home: Path,
    client_headers: dict[str, str],
    keys: dict[str, str],
    tumour_slice: Path,
) -> None:
    url = f"http://{onnx_gateway.url}"
    files = {"files": ("slice.tif", tumour_slice.read_bytes(), "image/tiff")}
    analysis = httpx.post(
        f"{url}/v1/analyze?segment=always", files=files, headers=client_headers, timeout=60
    )
    assert analysis.status_code == 200, analysis.text
    prediction_id = analysis.json()["slices"][0]["prediction_id"]
    preview = httpx.post(f"{url}/v1/preview", files=files, headers=client_headers, timeout=60)
    assert preview.status_code == 200
    assert preview.json()["shape"] == [1, 256, 256]
    assert preview.json()["slices"][0]["png"].startswith("data:image/png;base64,")

    truth = tifffile.imread(str(tumour_slice).replace(".tif", "_mask.tif")) > 0
    reviewer = {"authorization": f"Bearer {keys['reviewer']}"}
    r = httpx.post(
        f"{url}/v1/feedback",
        json={"request_id": prediction_id, "label": "tumour", "mask_rle": rle_encode(truth)},
        headers=reviewer,
    )
    assert r.status_code == 200 and r.json() == {"request_id": prediction_id, "stored": True}
    store = PredictionStore(f"sqlite:///{gateway_home.resolve() / 'monitoring' / 'predictions.db'}")
    try:
        window = store.window(SEGMENTER, limit=1000)
        row = window[window["request_id"] == prediction_id].iloc[0]
        assert np.array_equal(rle_decode(json.loads(row["feedback_mask_rle"])), truth)
    finally:
        store.close()

    wrong_size = rle_encode(np.zeros((128, 128), bool))
    r = httpx.post(
        f"{url}/v1/feedback",
        json={"request_id": prediction_id, "mask_rle": wrong_size},
        headers=reviewer,
    )
    assert r.status_code == 400 and "mask_rle.size" in r.json()["error"]
    r = httpx.post(
        f"{url}/v1/feedback",
        json={"request_id": "no-such-id.0", "label": "tumour"},
        headers=reviewer,
    )
    assert r.status_code == 404 and "no logged prediction" in r.json()["error"]
    r = httpx.post(
        f"{url}/v1/feedback",
        json={"request_id": prediction_id, "label": "tumour", "extra": 1},
        headers=reviewer,
    )
    assert r.status_code == 400 and "extra" in r.json()["error"]
    r = httpx.post(f"{url}/v1/feedback", content=b"{", headers=reviewer)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
