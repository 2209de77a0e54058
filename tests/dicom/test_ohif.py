"""The OHIF viewer (the prebuilt ``@ohif/app`` from npm, in headless Chromium) draws a medops
DICOM SEG where the ground-truth tumour is, on a real LGG slice served by a real Orthanc.

The SEG is made by the edge's own encoder (``medops.clinical.report.build_results``) from the
LGG ground-truth mask over the original series, so the check is about geometry: the pixels
OHIF paints with the segment (screenshot with the segmentation shown, minus one with it hidden)
are mapped back to image pixels through the viewport's own world-to-canvas transform and
compared with the mask. A left-right flip, the classic misplaced-SEG bug, must not match."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import MODALITY_AE
from dicom_harness import Orthanc
from dicomweb_client.api import DICOMwebClient
from ohif_harness import OhifServer
from PIL import Image as PILImage

from medops.clinical.report import build_results
from medops.clinical.types import Analysis, Prediction, Route
from medops.imaging.lgg import lgg_patient_mask, lgg_patient_volume
from medops.imaging.upload import TYPE2_PATIENT_STUDY, ReadUpload
from medops.modelspec import ModelInfo

pytestmark = pytest.mark.ohif

CHROMIUM = "/usr/bin/chromium"


def ground_truth_seg(patient: Path, files: list[Path]) -> tuple[Any, np.ndarray, list[Any]]:
    """The SEG of the patient's ground-truth mask over its original series."""
    mask = lgg_patient_mask(patient).array[0]
    z = mask.shape[0]
    originals = sorted(map(pydicom.dcmread, files), key=lambda d: float(d.ImagePositionPatient[2]))
    for ds in originals:
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
    info = ModelInfo("ground-truth", "1", "segmentation", 256, ("tumour",), 0.5)
    analysis = Analysis(
        request_id=None,
        image=ReadUpload(lgg_patient_volume(patient), None),
        probabilities=np.zeros(z),
        positive=mask.reshape(z, -1).any(axis=1),
        flagged=np.zeros(z, bool),
        mask=mask,
        segmented=np.ones(z, bool),
        classifier=None,
        segmenter=Prediction(np.zeros((z, 1)), Route(info, "1", "champion")),
        inputs=[],
        segment_max={},
    )
    return build_results(analysis, originals).seg, mask, originals


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def test_ohif_draws_the_seg_where_the_ground_truth_tumour_is(
    orthanc: Orthanc,
    make_series: Callable[[Path], list[Path]],
    patients: list[Path],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import FloatRect, sync_playwright

    patient = patients[0]
    files = make_series(patient)
    seg, mask, originals = ground_truth_seg(patient, files)
    k = int(mask.reshape(mask.shape[0], -1).sum(axis=1).argmax())  # the largest tumour slice
    assert mask[k].sum() > 500 and not np.array_equal(mask[k], mask[k][:, ::-1])
    r = subprocess.run(
        ["storescu", "-aet", MODALITY_AE, "-aec", orthanc.ae_title, "127.0.0.1",
         str(orthanc.dicom_port), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    DICOMwebClient(url=orthanc.dicomweb).store_instances([seg])
    study = str(originals[0].StudyInstanceUID)

    with OhifServer(orthanc.dicomweb) as viewer, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={study}")
            page.wait_for_function(
                "() => window.cornerstone && cornerstone.getEnabledElements().length > 0"
                " && cornerstone.getEnabledElements()[0].viewport.getCurrentImageId()",
                timeout=120_000,
            )
            for notice in ("Skip all", "Confirm and hide"):  # first-visit tour and notice
                button = page.get_by_text(notice)
                if button.count():
                    button.first.click()
            thumbnails = page.locator("[data-cy^='study-browser-thumbnail']")
            seg_thumbnail = thumbnails.filter(has_text="SEG")
            seg_thumbnail.first.dblclick()
            page.get_by_role("button", name="Yes").click(timeout=60_000)
            page.wait_for_function(
                "() => services.segmentationService.getSegmentations().length === 1",
                timeout=60_000,
            )
            uid = str(originals[k].SOPInstanceUID)
            geometry = page.evaluate(
                """async (uid) => {
                  const vp = cornerstone.getEnabledElements()[0].viewport;
                  const index = vp.getImageIds().findIndex(id => id.includes(uid));
                  await vp.setImageIdIndex(index);
                  vp.render();
                  await new Promise(done => setTimeout(done, 1500));
                  const imageId = vp.getCurrentImageId();
                  const at = (c, r) =>
                    vp.worldToCanvas(cornerstone.utilities.imageToWorldCoords(imageId, [c, r]));
                  const rect = vp.element.getBoundingClientRect();
                  return {index, shown: imageId.includes(uid), viewportId: vp.id,
                          origin: at(0, 0), column: at(1, 0), row: at(0, 1),
                          rect: [rect.x, rect.y, rect.width, rect.height]};
                }""",
                uid,
            )
            assert geometry["index"] >= 0 and geometry["shown"], geometry
            x, y, w, h = geometry["rect"]
            clip: FloatRect = {"x": x, "y": y, "width": w, "height": h}
            shown_path = tmp_path / "ohif-seg-shown.png"
            shown = page.screenshot(clip=clip, path=str(shown_path))
            page.evaluate(
                """async (viewportId) => {
                  const seg = services.segmentationService.getSegmentations()[0];
                  cornerstoneTools.segmentation.config.visibility
                    .setSegmentationRepresentationVisibility(
                      viewportId, {segmentationId: seg.segmentationId}, false);
                  cornerstone.getEnabledElements()[0].viewport.render();
                  await new Promise(done => setTimeout(done, 1500));
                }""",
                geometry["viewportId"],
            )
            hidden = page.screenshot(clip=clip, path=str(tmp_path / "ohif-seg-hidden.png"))
        finally:
            browser.close()

    on = np.asarray(PILImage.open(io.BytesIO(shown)).convert("RGB"), dtype=np.int16)
    off = np.asarray(PILImage.open(io.BytesIO(hidden)).convert("RGB"), dtype=np.int16)
    painted = np.abs(on - off).sum(axis=2) > 30
    assert painted.any(), "hiding the segmentation changed nothing on screen"
    # every image pixel's centre on the canvas, through the viewport's own transform
    origin, col, row = (np.asarray(geometry[key]) for key in ("origin", "column", "row"))
    rows, cols = np.mgrid[0 : mask.shape[1], 0 : mask.shape[2]] + 0.5
    canvas = origin + cols[..., None] * (col - origin) + rows[..., None] * (row - origin)
    px = np.clip(np.round(canvas[..., 0]).astype(int), 0, painted.shape[1] - 1)
    py = np.clip(np.round(canvas[..., 1]).astype(int), 0, painted.shape[0] - 1)
    drawn = painted[py, px]
    truth = mask[k].astype(bool)
    assert dice(drawn, truth) >= 0.9, (
        f"OHIF drew the segment off the tumour: Dice {dice(drawn, truth):.2f}"
    )
    assert dice(drawn, truth[:, ::-1]) < 0.5  # a left-right flip would not pass
    print(
        f"OHIF drew the SEG with Dice {dice(drawn, truth):.3f} against the ground truth "
        f"(flipped: {dice(drawn, truth[:, ::-1]):.3f}); screenshot {shown_path}"
    )
