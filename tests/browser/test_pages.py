"""The review page and the operator console in a real browser: Debian's chromium driven by
Playwright against a real gateway (and a real monitor) on loopback. Screenshots go to
``.artifacts/browser/``. Run with ``make test-browser``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tifffile
import uvicorn
from gateway_harness import GatewayThread, export_contract_model, free_port
from known_models import BrightSpotClassifier, FixedMask
from playwright.sync_api import Browser, Page, sync_playwright
from scipy.ndimage import binary_dilation

from medops.imaging.dicom import write_dicom_series
from medops.imaging.lgg import lgg_patient_volume
from medops.monitoring.drift import build_reference
from medops.service.readiness import wait_until_ready
from medops.transforms import preprocess_slice
from pipelines.brain import CLASSIFIER, SEGMENTER
from services.gateway.settings import GatewaySettings
from services.monitor import MonitorSettings
from services.monitor.app import create_app as create_monitor_app

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
SIZE = 256


class ServerThread:
    """An ASGI app under uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, app: Any, port: int) -> None:
        self.port = port
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until_ready(f"http://127.0.0.1:{self.port}/v2/health/live", timeout_s=30)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def patient(lgg_dir: Path) -> Path:
    patients = sorted(p for p in lgg_dir.iterdir() if p.is_dir())
    assert patients, f"no patient folders in {lgg_dir}"
    return patients[0]


@pytest.fixture(scope="module")
def tumour_slice(patient: Path) -> tuple[Path, np.ndarray]:
    """A slice with tumour and its ground-truth mask."""
    for mask in sorted(patient.glob("*_mask.tif")):
        truth = tifffile.imread(mask) > 0
        if truth.sum() > 200:
            return Path(str(mask).replace("_mask.tif", ".tif")), truth
    raise AssertionError(f"no tumour slice in {patient.name}")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tumour_slice: tuple[Path, np.ndarray]
) -> Iterator[dict[str, Any]]:
    """A gateway whose segmenter answers the slice's true mask, and a monitor on its log."""
    folder = tmp_path_factory.mktemp("browser")
    home = folder / "home"
    files = {
        CLASSIFIER: export_contract_model(
            BrightSpotClassifier(),
            folder / "classifier.onnx",
            size=64,
            task="classification",
            classes=["no_tumour", "tumour"],
        ),
        SEGMENTER: export_contract_model(
            FixedMask(tumour_slice[1]),
            folder / "segmenter.onnx",
            size=SIZE,
            task="segmentation",
            classes=["tumour"],
        ),
    }
    # the segmenter's drift reference, from slices of the same patient: the monitor then
    # compares its window with it and writes an Evidently report
    slices = sorted(p for p in tumour_slice[0].parent.glob("*.tif") if "_mask" not in p.name)
    build_reference(
        [preprocess_slice(tifffile.imread(p).transpose(2, 0, 1), SIZE) for p in slices],
        model=SEGMENTER,
        model_version="1",
        home=home,
        groups=[k % 5 for k in range(len(slices))],  # stand-ins for patients
        n_components=2,
        calibration_window=2,
        false_alarm_rate=0.1,
        draws=40,
    )
    monitor_port = free_port()
    settings = GatewaySettings(
        home=home,
        model_files=files,
        poll_seconds=0,
        onnx_threads=1,
        deid_key="browser-test",
        monitor_url=f"http://127.0.0.1:{monitor_port}",
        review_retention_s=600,
    )
    with GatewayThread(settings) as gw:
        keys = json.loads((home / "credentials.json").read_text())
        monitor = MonitorSettings(
            home=home,
            store_url=f"sqlite:///{home.resolve() / 'monitoring' / 'predictions.db'}",
            models=[CLASSIFIER, SEGMENTER],
            interval_s=0,
            min_window=1,
        )
        with ServerThread(create_monitor_app(monitor), monitor_port):
            yield {
                "gateway": f"http://{gw.url}",
                "monitor": f"http://127.0.0.1:{monitor_port}",
                "keys": keys,
            }


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium not installed: run infra/install-system-deps.sh"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (empty sessionStorage); fails the test on a script error or a CSP report."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and "Content Security Policy" in m.text
            else None
        ),
    )
    yield tab
    context.close()
    assert problems == []


def sign_in(page: Page, base: str, key: str, path: str = "/ui/") -> None:
    page.goto(base + path)
    page.fill("#api-key", key)
    page.click("#signin button[type=submit]")


def analyse(page: Page, files: list[Path], segment: str = "always") -> None:
    page.set_input_files("#files", [str(f) for f in files])
    page.select_option("#segment", segment)
    page.click("#analyse")


def layer_alpha(page: Page, layer: str) -> np.ndarray:
    """The alpha channel of one canvas layer, (rows, cols)."""
    doc = page.evaluate(
        """(id) => {
          const c = document.getElementById(id);
          const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
          const alpha = [];
          for (let i = 3; i < d.length; i += 4) alpha.push(d[i]);
          return {h: c.height, w: c.width, alpha};
        }""",
        layer,
    )
    return np.asarray(doc["alpha"], np.uint8).reshape(doc["h"], doc["w"])


def evaluate_quality(stack: dict[str, Any]) -> dict[str, Any]:
    admin = {"authorization": f"Bearer {stack['keys']['admin']}"}
    r = httpx.post(f"{stack['monitor']}/v1/evaluate", headers=admin, timeout=60)
    assert r.status_code == 200, r.text
    return {e["model"]: e["quality"] for e in r.json()["evaluations"]}


# ---------------------------------------------------------------------- the review page


def test_a_wrong_key_shows_a_clear_message_and_the_right_one_signs_in(
    page: Page, stack: dict[str, Any]
) -> None:
    sign_in(page, stack["gateway"], "medops-client-not-a-real-key")
    message = page.locator("#message")
    message.wait_for(state="visible")
    assert "The API key was refused (403)" in message.inner_text()
    assert page.locator("#upload-panel").is_hidden()
    page.screenshot(path=str(ARTIFACTS / "review-wrong-key.png"))

    page.fill("#api-key", stack["keys"]["client"])
    page.click("#signin button[type=submit]")
    page.wait_for_selector("text=Signed in as client")
    assert page.locator("#upload-panel").is_visible() and message.is_hidden()
    # the key lives in this tab's sessionStorage only: not in the URL, not in a cookie
    stored = page.evaluate("() => sessionStorage.getItem('medops.apiKey')")
    assert stored == stack["keys"]["client"]
    assert stack["keys"]["client"] not in page.url
    assert page.context.cookies() == []
    assert page.evaluate("() => localStorage.length") == 0


def test_the_overlay_is_where_the_true_mask_is_and_the_heat_map_shows(
    page: Page, stack: dict[str, Any], tumour_slice: tuple[Path, np.ndarray]
) -> None:
    image, truth = tumour_slice
    sign_in(page, stack["gateway"], stack["keys"]["client"])
    page.wait_for_selector("text=Signed in as client")
    analyse(page, [image])
    page.wait_for_selector("#viewer:not([hidden])")
    page.wait_for_selector("text=brain-tumor-segmenter v1 (champion)")

    alpha = layer_alpha(page, "mask-layer")
    assert alpha.shape == truth.shape
    assert (alpha[truth] > 0).all(), "the overlay covers the true mask"
    far = ~binary_dilation(truth, iterations=10)
    assert not (alpha[far] > 0).any(), "and nothing far from it"
    assert "slice 1 / 1" in page.inner_text("#slice-label")
    facts = page.inner_text("#facts")
    assert "area (mm²)" in facts and "volume (ml)" in facts and "request id" in facts

    page.select_option("#heat-target", "classifier")
    page.check("#show-heat")
    page.wait_for_selector("#heat-layer[data-shown=classifier]", timeout=60_000)
    heat = layer_alpha(page, "heat-layer")
    assert (heat > 0).sum() > 100, "the explanation is drawn"
    page.screenshot(path=str(ARTIFACTS / "review-overlay-heat.png"))
    # Grad-CAM needs the version's torch weights, which bare ONNX files lack: the page says so
    page.select_option("#heat-method", "gradcam")
    message = page.locator("#message")
    message.wait_for(state="visible")
    assert "torch weights" in message.inner_text()
    page.select_option("#heat-method", "occlusion")
    page.wait_for_selector("#heat-layer[data-shown=classifier]", timeout=60_000)

    # the mask overlay toggles off and fades
    page.uncheck("#show-mask")
    assert page.evaluate("() => document.getElementById('mask-layer').style.opacity") == "0"


def test_keyboard_arrows_and_buttons_change_the_slice(
    page: Page,
    stack: dict[str, Any],
    patient: Path,
    tmp_path: Path,
) -> None:
    series = write_dicom_series(lgg_patient_volume(patient), tmp_path / "dicom")
    sign_in(page, stack["gateway"], stack["keys"]["client"])
    page.wait_for_selector("text=Signed in as client")
    analyse(page, series)
    page.wait_for_selector("#viewer:not([hidden])", timeout=120_000)
    label = page.locator("#slice-label")
    start = int(label.inner_text().split()[1])
    total = len(series)
    assert label.inner_text() == f"slice {start} / {total}"
    assert start < total - 3
    page.focus("#stack")

    def picture() -> Any:
        return page.evaluate(
            """() => {
              const c = document.getElementById("image-layer");
              return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data
                .filter((_, i) => i % 4 === 1));
            }"""
        )

    shown = picture()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    assert label.inner_text() == f"slice {start + 3} / {total}"
    assert picture() != shown, "another slice is drawn"
    page.keyboard.press("ArrowLeft")
    assert label.inner_text() == f"slice {start + 2} / {total}"
    page.keyboard.press("ArrowDown")
    assert label.inner_text() == f"slice {start + 3} / {total}"
    page.click("#prev")
    assert label.inner_text() == f"slice {start + 2} / {total}"
    page.click("#next")
    assert label.inner_text() == f"slice {start + 3} / {total}"
    page.screenshot(path=str(ARTIFACTS / "review-series.png"))


def test_a_corrected_mask_reaches_the_monitor_and_changes_its_quality(
    page: Page, stack: dict[str, Any], tumour_slice: tuple[Path, np.ndarray]
) -> None:
    before = evaluate_quality(stack)[SEGMENTER]
    image, truth = tumour_slice
    sign_in(page, stack["gateway"], stack["keys"]["client"])
    page.wait_for_selector("text=Signed in as client")
    analyse(page, [image])
    page.wait_for_selector("#viewer:not([hidden])")

    # paint a region far from the tumour, then erase part of the predicted mask
    box = page.locator("#mask-layer").bounding_box()
    assert box is not None
    scale = box["width"] / truth.shape[1]
    far_row, far_col = (20, 20) if not truth[:60, :60].any() else (230, 230)
    page.check("#tool-brush")
    page.mouse.move(box["x"] + far_col * scale, box["y"] + far_row * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + (far_col + 15) * scale, box["y"] + far_row * scale, steps=5)
    page.mouse.up()
    edited = layer_alpha(page, "mask-layer") > 0
    assert edited[far_row, far_col] and not truth[far_row, far_col]

    page.click("#submit-correction")
    page.wait_for_selector("text=Correction stored")
    page.screenshot(path=str(ARTIFACTS / "review-correction.png"))

    after = evaluate_quality(stack)[SEGMENTER]
    assert after["masks"] == before["masks"] + 1
    assert after["dice"] is not None and after["dice"] < 1.0, "the correction differs"


def test_an_unsupported_upload_shows_the_gateways_message_and_the_page_stays_usable(
    page: Page,
    stack: dict[str, Any],
    tumour_slice: tuple[Path, np.ndarray],
    tmp_path: Path,
) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("just some text, not an image")
    sign_in(page, stack["gateway"], stack["keys"]["client"])
    page.wait_for_selector("text=Signed in as client")
    analyse(page, [junk])
    message = page.locator("#message")
    message.wait_for(state="visible")
    client = {"authorization": f"Bearer {stack['keys']['client']}"}
    direct = httpx.post(
        f"{stack['gateway']}/v1/analyze",
        files={"files": ("notes.txt", junk.read_bytes(), "text/plain")},
        headers=client,
    )
    assert direct.status_code == 415
    assert message.inner_text() == direct.json()["error"]
    page.screenshot(path=str(ARTIFACTS / "review-unsupported.png"))

    analyse(page, [tumour_slice[0]])
    page.wait_for_selector("#viewer:not([hidden])")
    assert message.is_hidden() and not page.locator("#analyse").is_disabled()

    # a feedback the gateway refuses (here: a mask of another size, altered on the wire)
    # shows the gateway's message, and the next one goes through
    def wrong_size(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        body["mask_rle"] = {"size": [128, 128], "counts": [128 * 128]}
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/feedback", wrong_size)
    page.click("#submit-correction")
    message.wait_for(state="visible")
    assert "mask_rle.size: [128, 128] differs from the predicted mask's [256, 256]" in (
        message.inner_text()
    )
    page.unroute("**/v1/feedback")
    page.click("#submit-correction")
    page.wait_for_selector("text=Correction stored")
    assert message.is_hidden()


def test_a_study_from_the_review_queue_opens_without_its_files(
    page: Page, stack: dict[str, Any], tumour_slice: tuple[Path, np.ndarray]
) -> None:
    client = {"authorization": f"Bearer {stack['keys']['client']}"}
    r = httpx.post(
        f"{stack['gateway']}/v1/analyze?segment=always",
        files={"files": ("s.tif", tumour_slice[0].read_bytes(), "image/tiff")},
        headers={**client, "x-request-id": "queued-study-1"},
        timeout=60,
    )
    assert r.status_code == 200
    sign_in(page, stack["gateway"], stack["keys"]["client"])
    page.wait_for_selector("text=Signed in as client")
    row = page.locator("#queue tr[data-prediction='queued-study-1.0']")
    row.wait_for()
    row.locator("button", has_text="Open").click()
    page.wait_for_selector("#viewer:not([hidden])")
    page.wait_for_selector("text=queued-study-1")
    alpha = layer_alpha(page, "mask-layer")
    assert (alpha[tumour_slice[1]] > 0).all(), "the kept mask is drawn"
    # its explanation needs the upload, and the page says so
    page.check("#show-heat")
    message = page.locator("#message")
    message.wait_for(state="visible")
    assert "upload it" in message.inner_text()
    page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=True)
    # feedback on the kept study is accepted like any other
    page.click("#agree")
    page.wait_for_selector("text=Agreement stored")


# ---------------------------------------------------------------------- the console


def test_the_console_lists_the_models_the_split_and_charts_drift(
    page: Page, stack: dict[str, Any], tumour_slice: tuple[Path, np.ndarray]
) -> None:
    client = {"authorization": f"Bearer {stack['keys']['client']}"}
    for _ in range(2):  # two segmented slices: the window the drift alarm is calibrated for
        r = httpx.post(
            f"{stack['gateway']}/v1/analyze?segment=always",
            files={"files": ("s.tif", tumour_slice[0].read_bytes(), "image/tiff")},
            headers=client,
            timeout=60,
        )
        assert r.status_code == 200
    evaluate_quality(stack)
    evaluate_quality(stack)
    sign_in(page, stack["gateway"], stack["keys"]["admin"], "/ui/console.html")
    page.wait_for_selector("text=Signed in as admin")
    for name in (CLASSIFIER, SEGMENTER):
        page.wait_for_selector(f"#models tr[data-model='{name}']")
        assert "READY" in page.inner_text(f"#models tr[data-model='{name}']")
    row = page.locator(f"#split tr[data-model='{CLASSIFIER}'][data-variant='champion']")
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[2] == "100" and int(cells[3]) >= 1 and cells[4] == "100.0 %"
    assert "revision" in page.inner_text("#revision")
    page.select_option("#drift-model", SEGMENTER)
    page.wait_for_selector("#drift-chart .main-svg", timeout=30_000)
    assert "evaluations" in page.inner_text("#drift-status")
    assert page.locator("#drift-chart .scatterlayer .trace").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
    # the monitor's Evidently report, fetched with the key and saved as a file
    with page.expect_download() as saving:
        page.click("#drift-report")
    saved = saving.value
    assert saved.suggested_filename == f"drift-report-{SEGMENTER}.html"
    report = Path(saved.path()).read_text(errors="replace")
    # Evidently's page on the window's columns (``noise``: one of the logged image statistics)
    assert "<html" in report and "Drift" in report and "noise" in report
    # no Grafana configured on this gateway: no dashboard links
    assert page.locator("#links-panel").is_hidden()


def test_a_refused_routing_change_names_the_field_and_changes_nothing(
    page: Page, stack: dict[str, Any]
) -> None:
    admin = {"authorization": f"Bearer {stack['keys']['admin']}"}
    before = httpx.get(f"{stack['gateway']}/v1/routing", headers=admin).json()
    sign_in(page, stack["gateway"], stack["keys"]["admin"], "/ui/console.html")
    page.wait_for_selector("text=Signed in as admin")
    page.wait_for_selector("#save-routing:not([hidden])")
    page.wait_for_function("() => document.getElementById('routing').value.includes('revision')")
    bad = {
        **before,
        "models": {
            CLASSIFIER: {
                "strategy": "ab",
                "variants": [
                    {"name": "champion", "alias": "champion", "weight": 150},
                    {"name": "challenger", "alias": "challenger", "weight": 0},
                ],
            }
        },
    }
    page.fill("#routing", json.dumps(bad, indent=2))
    page.click("#save-routing")
    page.locator("#message").wait_for(state="visible")
    field = page.inner_text("#routing-field")
    assert f"models.{CLASSIFIER}.variants[0].weight" in field
    assert "still revision" in page.inner_text("#routing-status")
    page.screenshot(path=str(ARTIFACTS / "console-routing-refused.png"), full_page=True)
    after = httpx.get(f"{stack['gateway']}/v1/routing", headers=admin).json()
    assert after == before

    # a client key sees the document but may not change it
    page.click("#signout")
    sign_in(page, stack["gateway"], stack["keys"]["client"], "/ui/console.html")
    page.wait_for_selector("text=Signed in as client")
    assert page.locator("#save-routing").is_hidden() and page.locator("#audit-panel").is_hidden()
