"""``/v1/analyze`` on real LGG data: the masks equal the models' direct output, and every answer
format (JSON with RLE, PNG, NIfTI, DICOM SEG) carries the same mask."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import highdicom as hd
import httpx
import nibabel as nib
import numpy as np
import onnxruntime as ort
import pydicom
import pytest
import tifffile
from gateway_harness import GatewayThread, write_tiny_model
from gateway_support import CLASSIFIER_THRESHOLD, SIZE, make_settings, read_keys
from PIL import Image as PILImage

from medops.deid import UIDMap
from medops.imaging.dicom import write_dicom_series
from medops.imaging.lgg import lgg_patient_volume
from medops.modelspec import META_GATE_THRESHOLD, META_MIN_COMPONENT
from medops.rle import rle_decode_volume
from medops.transforms import drop_small_components, preprocess_slice, restore_mask
from pipelines.brain import CLASSIFIER, SEGMENTER


def direct(models: dict[str, Path], slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the models say without the gateway: tumour probabilities and masks (Z, H, W)."""
    h, w = slices.shape[-2:]
    x = np.stack([preprocess_slice(s, SIZE) for s in slices])
    probs = ort.InferenceSession(str(models[CLASSIFIER])).run(None, {"image": x})[0][:, 1]
    seg = ort.InferenceSession(str(models[SEGMENTER])).run(None, {"image": x})[0]
    masks = restore_mask((seg[:, 0] >= 0.5).astype(np.uint8), (h, w))
    return probs, masks


@pytest.fixture(scope="module")
def lgg_slice(lgg_patient: Path) -> Path:
    """A slice of the first patient that shows tumour (its mask file is not empty)."""
    for mask in sorted(lgg_patient.glob("*_mask.tif")):
        if tifffile.imread(mask).any():
            return Path(str(mask).replace("_mask.tif", ".tif"))
    raise AssertionError(f"no tumour slice in {lgg_patient.name}")


@pytest.fixture(scope="module")
def dicom_series(lgg_patient: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The patient as a DICOM series, with identifiers planted that must never come back."""
    volume = lgg_patient_volume(lgg_patient)
    paths = write_dicom_series(volume, tmp_path_factory.mktemp("dicom"), patient_id="MRN-123456")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PatientName = "Doe^Jane"
        ds.PatientBirthDate = "19700101"
        ds.save_as(p)
    return paths


def test_an_lgg_slice_gives_the_models_own_probability_and_mask(
    onnx_gateway: GatewayThread,
    tiny_models: dict[str, Path],
    lgg_slice: Path,
    client_headers: dict[str, str],
) -> None:
    pixels = tifffile.imread(lgg_slice).transpose(2, 0, 1)[None]  # (1, 3, H, W)
    probs, masks = direct(tiny_models, pixels)
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze?segment=always",
        content=lgg_slice.read_bytes(),
        headers={**client_headers, "content-type": "image/tiff"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["slices"][0]["probability"] == pytest.approx(float(probs[0]), abs=1e-5)
    mask = rle_decode_volume(doc["mask"]["slices"]).astype(np.uint8)
    assert mask.shape == (1, 256, 256) and 0 < mask.sum() < mask.size
    # the served decision is the two-stage answer's: a mask survived the rule
    assert doc["slices"][0]["tumour"] is True and doc["decision"] == "tumour"
    np.testing.assert_array_equal(mask, masks)
    assert doc["tumour_area_mm2"] == pytest.approx(float(masks.sum()) * 1.0)
    assert doc["tumour_volume_ml"] is None  # one slice: an area, not a volume
    assert doc["models"]["classifier"] == {
        "name": CLASSIFIER,
        "version": "1",
        "variant": "champion",
        "threshold": CLASSIFIER_THRESHOLD,
    }
    assert doc["models"]["segmenter"]["name"] == SEGMENTER
    assert doc["request_id"] == r.headers["x-request-id"]

    png = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze?segment=always",
        files={"file": ("slice.tif", lgg_slice.read_bytes(), "image/tiff")},
        headers={**client_headers, "accept": "image/png"},
        timeout=60,
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(
        np.asarray(PILImage.open(io.BytesIO(png.content))) > 0, masks[0] > 0
    )


def _zip(paths: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in paths:
            z.write(p, arcname=f"series/{p.name}")
    return buf.getvalue()


def test_a_dicom_series_of_an_lgg_patient_gives_the_models_own_masks_slice_by_slice(
    onnx_gateway: GatewayThread,
    tiny_models: dict[str, Path],
    lgg_patient: Path,
    dicom_series: list[Path],
    client_headers: dict[str, str],
) -> None:
    volume = lgg_patient_volume(lgg_patient)
    slices = np.moveaxis(volume.array, 1, 0)  # (Z, 3, H, W)
    probs, masks = direct(tiny_models, slices)
    positive = probs >= CLASSIFIER_THRESHOLD
    assert 0 < positive.sum() < len(positive), "the test needs positive and negative slices"
    expected = np.where(positive[:, None, None], masks, 0)

    multipart = [
        ("files", (f"{i}.dcm", p.read_bytes(), "application/dicom"))
        for i, p in enumerate(dicom_series)
    ]
    answers = [
        httpx.post(
            f"http://{onnx_gateway.url}/v1/analyze",
            files=multipart,
            headers=client_headers,
            timeout=120,
        ),
        httpx.post(
            f"http://{onnx_gateway.url}/v1/analyze",
            content=_zip(dicom_series),
            headers={**client_headers, "content-type": "application/zip"},
            timeout=120,
        ),
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        doc = r.json()
        got = [s["probability"] for s in doc["slices"]]
        np.testing.assert_allclose(got, probs, atol=1e-5)
        assert [s["segmented"] for s in doc["slices"]] == positive.tolist()
        mask = rle_decode_volume(doc["mask"]["slices"]).astype(np.uint8)
        np.testing.assert_array_equal(mask, expected)
        voxel_ml = 1.0 * 1.0 * 2.5 / 1000.0
        assert doc["tumour_volume_ml"] == pytest.approx(expected.sum() * voxel_ml, rel=1e-4)
        assert doc["decision"] == "tumour"
        assert doc["image"]["series_instance_uid"] != str(
            pydicom.dcmread(dicom_series[0]).SeriesInstanceUID
        )
        assert "MRN-123456" not in r.text and "Doe" not in r.text

    nifti = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze",
        content=_zip(dicom_series),
        headers={**client_headers, "content-type": "application/zip", "accept": "application/gzip"},
        timeout=120,
    )
    assert nifti.status_code == 200 and nifti.content[:2] == b"\x1f\x8b"
    image = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(nifti.content))
    np.testing.assert_allclose(image.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), expected)


def test_the_dicom_seg_answer_reads_back_and_references_the_deidentified_source_series(
    onnx_gateway: GatewayThread,
    tiny_models: dict[str, Path],
    lgg_patient: Path,
    dicom_series: list[Path],
    client_headers: dict[str, str],
) -> None:
    volume = lgg_patient_volume(lgg_patient)
    _, masks = direct(tiny_models, np.moveaxis(volume.array, 1, 0))
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze?segment=always",
        content=_zip(dicom_series),
        headers={
            **client_headers,
            "content-type": "application/zip",
            "accept": "application/dicom",
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(r.content))
    originals = [pydicom.dcmread(p) for p in dicom_series]
    uids = UIDMap(b"test-deid-key")  # the gateway's deid_key in these tests
    series_uid = uids.uid(str(originals[0].SeriesInstanceUID))
    assert str(seg.StudyInstanceUID) == uids.uid(str(originals[0].StudyInstanceUID))
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series_uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        uids.uid(str(ds.SOPInstanceUID)) for ds in originals
    }
    assert str(seg.PatientID) != "MRN-123456" and "Doe" not in str(seg.PatientName)
    assert b"MRN-123456" not in r.content and b"Doe^Jane" not in r.content
    # The mask of every source slice comes back from the SEG.
    for k, ds in enumerate(originals):
        z = round(float(ds.ImagePositionPatient[2]) / 2.5)
        got = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uids.uid(str(ds.SOPInstanceUID))],
            segment_numbers=[1],
            assert_missing_frames_are_empty=True,
        )[0, :, :, 0]
        np.testing.assert_array_equal(got, masks[z], err_msg=f"slice file {k}")
    # The JSON answer for the same upload names the same de-identified series.
    doc = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze",
        content=_zip(dicom_series),
        headers={**client_headers, "content-type": "application/zip"},
        timeout=120,
    ).json()
    assert doc["image"]["series_instance_uid"] == series_uid


def test_segment_never_skips_the_segmenter_and_auto_segments_only_flagged_slices(
    onnx_gateway: GatewayThread, lgg_slice: Path, client_headers: dict[str, str]
) -> None:
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze?segment=never",
        content=lgg_slice.read_bytes(),
        headers={**client_headers, "content-type": "image/tiff"},
        timeout=60,
    )
    doc = r.json()
    assert doc["models"]["segmenter"] is None and doc["tumour_area_mm2"] == 0
    assert doc["mask"]["slices"] == [{"size": [256, 256], "counts": [256 * 256]}]


def test_a_nifti_volume_and_a_jpeg_picture_are_analysed_like_any_other_image(
    onnx_gateway: GatewayThread,
    tiny_models: dict[str, Path],
    lgg_patient: Path,
    fourclass_dir: Path,
    tmp_path: Path,
    client_headers: dict[str, str],
) -> None:
    from medops.imaging.formats import write_nifti

    volume = lgg_patient_volume(lgg_patient)
    nifti = write_nifti(volume, tmp_path / "volume.nii.gz")
    probs, masks = direct(tiny_models, np.moveaxis(volume.array, 1, 0))
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze?segment=always",
        files={"file": ("volume.nii.gz", nifti.read_bytes(), "application/gzip")},
        headers=client_headers,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["image"]["format"] == "nifti"
    np.testing.assert_allclose([s["probability"] for s in doc["slices"]], probs, atol=1e-5)
    np.testing.assert_array_equal(rle_decode_volume(doc["mask"]["slices"]).astype(np.uint8), masks)

    jpeg = sorted((fourclass_dir / "glioma").glob("*.jpg"))[0]
    picture = np.asarray(PILImage.open(jpeg).convert("RGB")).transpose(2, 0, 1)[None]
    probs, masks = direct(tiny_models, picture)
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze?segment=always",
        content=jpeg.read_bytes(),
        headers={**client_headers, "content-type": "image/jpeg"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["slices"][0]["probability"] == pytest.approx(float(probs[0]), abs=1e-5)
    np.testing.assert_array_equal(rle_decode_volume(doc["mask"]["slices"]).astype(np.uint8), masks)


def test_the_segmenters_stored_rule_decides_what_is_segmented_and_kept(
    tiny_models: dict[str, Path],
    lgg_patient: Path,
    dicom_series: list[Path],
    tmp_path: Path,
) -> None:
    """A segmenter version carries the two-stage rule chosen on validation: its gate threshold
    (here 0: every slice is segmented, whatever the classifier says) and its smallest kept
    component; the served decision is whether a mask survived."""
    slices = np.moveaxis(lgg_patient_volume(lgg_patient).array, 1, 0)
    probs, _ = direct(tiny_models, slices)
    binary = np.stack(
        [
            ort.InferenceSession(str(tiny_models[SEGMENTER])).run(
                None, {"image": preprocess_slice(s, SIZE)[None]}
            )[0][0, 0]
            >= 0.5
            for s in slices
        ]
    )
    smallest = int(np.percentile([m.sum() for m in binary if m.any()], 50)) + 1
    segmenter = write_tiny_model(
        SEGMENTER,
        tmp_path / "segmenter.onnx",
        size=SIZE,
        seed=1,
        metadata={META_GATE_THRESHOLD: "0.0", META_MIN_COMPONENT: str(smallest)},
    )
    files = tiny_models | {SEGMENTER: segmenter}
    with GatewayThread(make_settings(tmp_path / "home", files)) as gw:
        headers = {"authorization": f"Bearer {read_keys(tmp_path / 'home')['client']}"}
        r = httpx.post(
            f"http://{gw.url}/v1/analyze",
            content=_zip(dicom_series),
            headers={**headers, "content-type": "application/zip"},
            timeout=120,
        )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert all(s["segmented"] for s in doc["slices"])  # gate 0: every slice
    assert doc["rule"] == {"gate_threshold": 0.0, "min_component_px": smallest}
    expected = np.stack(
        [
            restore_mask(drop_small_components(b, smallest).astype(np.uint8), (256, 256))
            for b in binary
        ]
    )
    mask = rle_decode_volume(doc["mask"]["slices"]).astype(np.uint8)
    np.testing.assert_array_equal(mask, expected)
    assert expected.any() and not expected.all(axis=(1, 2)).all()
    assert [s["tumour"] for s in doc["slices"]] == expected.reshape(len(expected), -1).any(
        1
    ).tolist()
    # the classifier's own probabilities are answered unchanged
    np.testing.assert_allclose([s["probability"] for s in doc["slices"]], probs, atol=1e-5)
