"""The DICOM edge against a real PACS (Orthanc), a real modality (DCMTK's storescu/echoscu)
and a real validator (dciodvfy): series in over DIMSE, SEG and TID 1500 SR back by STOW-RS,
referencing the ORIGINAL study, series and instances; faults on either side."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from conftest import MODALITY_AE, PATIENT_ID, PATIENT_NAME
from dicom_harness import EdgeProcess, Orthanc, series_in_study, wait_for
from dicomweb_client.api import DICOMwebClient
from gateway_harness import GatewayThread
from pydicom.dataset import Dataset

from medops.rle import rle_decode_volume

pytestmark = pytest.mark.dicom

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def storescu(edge: EdgeProcess, files: list[Path], *, aet: str = MODALITY_AE) -> str:
    r = subprocess.run(
        ["storescu", "-v", "-aet", aet, "-aec", "MEDOPS", "127.0.0.1", str(edge.port),
         *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def edge_keys(edge: EdgeProcess) -> dict[str, str]:
    home = Path(edge.env["MEDOPS_DICOM_HOME"])
    keys: dict[str, str] = json.loads((home / "credentials.json").read_text())
    return keys


def results_in(orthanc: Orthanc, study_uid: str) -> tuple[Dataset, Dataset]:
    """The SEG and SR of a study, as stored by the PACS (WADO-RS)."""
    client = DICOMwebClient(url=orthanc.dicomweb)
    found = []
    for modality in ("SEG", "SR"):
        series = wait_for(
            f"a {modality} in the study", lambda m=modality: series_in_study(orthanc, study_uid, m)
        )
        assert len(series) == 1, series
        uid = series[0]["0020000E"]["Value"][0]
        instances = client.retrieve_series(study_uid, uid)
        assert len(instances) == 1
        found.append(instances[0])
    return found[0], found[1]


def dciodvfy(ds: Dataset, folder: Path, name: str) -> list[str]:
    """Validator warnings of one object; any error fails."""
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (r.stdout + r.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy errors on the {name}:\n" + "\n".join(lines)
    return [line for line in lines if line.startswith("Warning")]


def plane_mask(gateway: GatewayThread, files: list[Path], client_key: str) -> dict[str, Any]:
    r = httpx.post(
        f"http://{gateway.url}/v1/analyze",
        files=[("files", (f"{i}.dcm", p.read_bytes(), "application/dicom")) for i, p in
               enumerate(files)],
        headers={"authorization": f"Bearer {client_key}"},
        timeout=120,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def by_position(files: list[Path]) -> list[Dataset]:
    """The originals in slice order (the analysis's order: ascending position)."""
    datasets = [pydicom.dcmread(p) for p in files]
    return sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))


def test_a_series_sent_by_storescu_comes_back_as_a_valid_seg_and_sr_on_the_original_study(
    make_edge: Callable[..., EdgeProcess],
    make_series: Callable[[Path], list[Path]],
    patients: list[Path],
    orthanc: Orthanc,
    gateway: GatewayThread,
    keys: dict[str, str],
    tmp_path: Path,
) -> None:
    files = make_series(patients[0])
    originals = by_position(files)
    study_uid = str(originals[0].StudyInstanceUID)
    edge = make_edge()
    storescu(edge, files)
    seg, sr = results_in(orthanc, study_uid)

    # the ORIGINAL identifiers: the results display with the source series at the PACS
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study_uid
    assert seg.PatientID == PATIENT_ID and str(seg.PatientName) == PATIENT_NAME
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == originals[0].SeriesInstanceUID
    seg_sources = {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence}
    assert seg_sources == {str(d.SOPInstanceUID) for d in originals}

    # both objects pass the DICOM validator without errors
    warnings = {
        "SEG": dciodvfy(seg, tmp_path, "seg"),
        "SR": dciodvfy(sr, tmp_path, "sr"),
    }
    print("dciodvfy warnings:", json.dumps(warnings, indent=1))

    # the SEG holds the clinical plane's own mask for every slice
    doc = plane_mask(gateway, files, keys["client"])
    mask = rle_decode_volume(doc["mask"]["slices"]).astype(bool)
    assert mask.any(), "the test needs a slice with a mask"
    segmentation = hd.seg.segread(io.BytesIO(_bytes(seg)))
    for k, ds in enumerate(originals):
        got = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(ds.SOPInstanceUID)],
            segment_numbers=[1],
            assert_missing_frames_are_empty=True,
        )[0, :, :, 0]
        np.testing.assert_array_equal(got.astype(bool), mask[k], err_msg=f"slice {k}")

    # the SR is a TID 1500 report: the volume, one area per slice with tumour, the model
    report = hd.sr.srread(io.BytesIO(_bytes(sr)))
    assert report.SOPClassUID == COMPREHENSIVE_3D_SR
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    volume = _numeric(report, "Volume")
    assert volume == [pytest.approx(doc["tumour_volume_ml"], rel=1e-4, abs=1e-6)]
    areas = _numeric(report, "Area")
    expected_areas = [s["area_mm2"] for s in doc["slices"] if s["area_mm2"] > 0]
    assert sorted(areas) == pytest.approx(sorted(expected_areas), abs=1e-3)
    segmenter = doc["models"]["segmenter"]
    assert _texts(report, "Device Observer Name") == [segmenter["name"]]
    assert set(_texts(report, "Algorithm Version")) == {segmenter["version"]}
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for s in report.CurrentRequestedProcedureEvidenceSequence
        for series in s.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert str(seg.SOPInstanceUID) in evidence
    assert {str(d.SOPInstanceUID) for d in originals} <= evidence


def _bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _items(ds: Dataset, value_type: str, meaning: str) -> list[Dataset]:
    """Every content item of a type and concept name, at any depth of the SR tree."""
    found: list[Dataset] = []

    def walk(items: Any) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.get("ValueType") == value_type and name == meaning:
                found.append(item)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.ContentSequence)
    return found


def _numeric(ds: Dataset, meaning: str) -> list[float]:
    return [float(i.MeasuredValueSequence[0].NumericValue) for i in _items(ds, "NUM", meaning)]


def _texts(ds: Dataset, meaning: str) -> list[str]:
    return [str(i.TextValue) for i in _items(ds, "TEXT", meaning)]
