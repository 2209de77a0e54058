"""The DICOM edge against a real PACS (Orthanc), a real modality (DCMTK's storescu/echoscu)
and a real validator (dciodvfy): series in over DIMSE, SEG and TID 1500 SR back by STOW-RS,
referencing the ORIGINAL study, series and instances; faults on either side."""

from __future__ import annotations

import io
import json
import os
import re
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
from pydicom.uid import MRImageStorage
from pynetdicom import AE

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


def pixelmed_sr_errors(ds: Dataset, folder: Path) -> list[str]:
    """PixelMed's DicomSRValidator errors on an SR, less one artefact: it checks every
    measurement group against both TID 1410 (planar) and TID 1411 (volumetric) and reports
    the one it does not follow, so a group's errors count only if it fails both."""
    path = folder / "sr-pixelmed.dcm"
    ds.save_as(path, enforce_file_format=True)
    # Java 17 caps XPath expressions below what the validator's stylesheets need
    limits = (
        "-Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathTotalOpLimit=0"
    )
    r = subprocess.run(
        ["DicomSRValidator", str(path)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "JDK_JAVA_OPTIONS": limits},
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert "IOD validation complete" in out, out[-2000:]
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    by_group: dict[str, set[str]] = {}
    for line in errors:
        m = re.search(r"Template (1410|1411) .*within (1\.9\.\d+)", line)
        if m:
            by_group.setdefault(m[2], set()).add(m[1])
    return [
        line
        for line in errors
        if not (m := re.search(r"Template (1410|1411) .*within (1\.9\.\d+)", line))
        or by_group[m[2]] == {"1410", "1411"}
    ]


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
    assert pixelmed_sr_errors(sr, tmp_path) == []

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


def test_a_calling_ae_title_off_the_allow_list_is_rejected_at_association(
    make_edge: Callable[..., EdgeProcess],
) -> None:
    edge = make_edge()
    allowed = subprocess.run(
        ["echoscu", "-aet", MODALITY_AE, "-aec", "MEDOPS", "127.0.0.1", str(edge.port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    refused = subprocess.run(
        ["echoscu", "-aet", "INTRUDER", "-aec", "MEDOPS", "127.0.0.1", str(edge.port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    assoc = ae.associate("127.0.0.1", edge.port, ae_title="MEDOPS")
    assert assoc.is_rejected


def test_a_truncated_instance_gets_a_failure_status_and_the_rest_of_the_series_is_analysed(
    make_edge: Callable[..., EdgeProcess],
    make_series: Callable[[Path], list[Path]],
    patients: list[Path],
    orthanc: Orthanc,
) -> None:
    files = make_series(patients[1])
    originals = by_position(files)
    edge = make_edge()
    first = min(files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    broken = pydicom.dcmread(first)
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 2]
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(MRImageStorage, broken.file_meta.TransferSyntaxUID)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1")  # CR: not analysed, not accepted
    assoc = ae.associate("127.0.0.1", edge.port, ae_title="MEDOPS")
    assert assoc.is_established
    try:
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        assert accepted == {str(MRImageStorage)}
        status = assoc.send_c_store(broken)
        assert status.Status == 0xC210
    finally:
        assoc.release()
    rest = [p for p in files if p != first]
    storescu(edge, rest)
    seg, _ = results_in(orthanc, str(originals[0].StudyInstanceUID))
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {i.ReferencedSOPInstanceUID for i in referenced} == {
        str(d.SOPInstanceUID) for d in originals[1:]
    }
    metrics = httpx.get(f"{edge.url}/metrics", timeout=10).text
    assert 'medops_dicom_instances_total{outcome="corrupt"} 1.0' in metrics


def test_results_wait_in_the_outbox_while_the_pacs_is_down_and_are_delivered_when_it_is_back(
    make_edge: Callable[..., EdgeProcess],
    make_series: Callable[[Path], list[Path]],
    patients: list[Path],
    orthanc: Orthanc,
    tmp_path: Path,
) -> None:
    files = make_series(patients[2])
    originals = by_position(files)
    predictions = tmp_path / "predictions.db"
    edge = make_edge(MEDOPS_DICOM_STORE_URL=f"sqlite:///{predictions}")
    admin = {"authorization": f"Bearer {edge_keys(edge)['admin']}"}
    orthanc.stop()
    try:
        storescu(edge, files)

        def failed_entry() -> list[dict[str, Any]]:
            listing = httpx.get(f"{edge.url}/v1/outbox", headers=admin, timeout=10).json()
            return [e for e in listing["entries"] if e["last_error"]]

        entries = wait_for("an undeliverable result in the outbox", failed_entry)
        assert entries[0]["files"] == ["seg.dcm", "sr.dcm"] and entries[0]["attempts"] >= 1
        assert "STOW-RS" in entries[0]["last_error"]
        metrics = httpx.get(f"{edge.url}/metrics", timeout=10).text
        assert "medops_dicom_outbox_undeliverable 1.0" in metrics
        assert httpx.get(f"{edge.url}/v1/outbox", timeout=10).status_code == 401
        client = {"authorization": f"Bearer {edge_keys(edge)['client']}"}
        assert httpx.get(f"{edge.url}/v1/outbox", headers=client, timeout=10).status_code == 403
        sweep_for_phi(edge, admin, files, predictions)
    finally:
        orthanc.start()
    seg, _ = results_in(orthanc, str(originals[0].StudyInstanceUID))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == originals[0].SeriesInstanceUID
    wait_for(
        "an empty outbox",
        lambda: (
            httpx.get(f"{edge.url}/v1/outbox", headers=admin, timeout=10).json()["pending"] == 0
        ),
    )


def sweep_for_phi(
    edge: EdgeProcess, admin: dict[str, str], files: list[Path], predictions: Path
) -> None:
    """No patient identifier, and no original UID, in the edge's logs, metrics, outbox listing
    or prediction log."""
    import sqlite3

    planted = {PATIENT_ID, PATIENT_NAME, "Roe", "19650412"}
    for ds in map(pydicom.dcmread, files):
        planted |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    surfaces = {
        "log": edge.log(),
        "metrics": httpx.get(f"{edge.url}/metrics", timeout=10).text,
        "outbox": httpx.get(f"{edge.url}/v1/outbox", headers=admin, timeout=10).text,
    }
    with sqlite3.connect(predictions) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [repr(row) for t in tables for row in db.execute(f'SELECT * FROM "{t}"')]
    assert any("dicom-" in row for row in rows), "the analysis was not logged"
    surfaces["prediction log"] = "\n".join(rows)
    assert "series analysed" in surfaces["log"]
    for name, text in surfaces.items():
        leaked = sorted(p for p in planted if p in text)
        assert not leaked, f"the edge's {name} carries identifiers: {leaked[:3]}"


ACKED = re.compile(r"Received Store Response \(Success\)")
SENDING = re.compile(r"Sending file: (\S+)")


def test_kill_9_during_a_c_store_burst_loses_no_acknowledged_instance(
    make_edge: Callable[..., EdgeProcess],
    make_series: Callable[[Path], list[Path]],
    patients: list[Path],
    orthanc: Orthanc,
) -> None:
    files = make_series(max(patients[3:6], key=lambda p: len(list(p.glob("*_mask.tif")))))
    originals = by_position(files)
    edge = make_edge(MEDOPS_DICOM_QUIET_S="30")
    spool = Path(edge.env["MEDOPS_DICOM_SPOOL_DIR"]) / "incoming"
    burst = subprocess.Popen(
        ["storescu", "-v", "-aet", MODALITY_AE, "-aec", "MEDOPS", "127.0.0.1", str(edge.port),
         *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for(
        "a few instances in the spool",
        lambda: sum(1 for _ in spool.glob("*/*.dcm")) >= len(files) // 3,
        interval_s=0.01,
    )
    edge.kill()
    output, _ = burst.communicate(timeout=60)
    acknowledged: list[str] = []
    current = None
    for line in output.splitlines():
        if m := SENDING.search(line):
            current = m.group(1)
        elif ACKED.search(line) and current is not None:
            acknowledged.append(current)
    assert 0 < len(acknowledged) < len(files), output[-2000:]
    acked_uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in acknowledged}

    make_edge(MEDOPS_DICOM_QUIET_S="1")  # same spool, same outbox
    seg, _ = results_in(orthanc, str(originals[0].StudyInstanceUID))
    referenced = {
        i.ReferencedSOPInstanceUID
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert acked_uids <= referenced
    print(
        f"{len(acknowledged)} of {len(files)} acknowledged before the kill, "
        f"{len(referenced)} analysed"
    )


def test_polling_finds_a_new_series_by_its_rule_analyses_it_once_and_not_again_after_restart(
    make_edge: Callable[..., EdgeProcess],
    make_series: Callable[[Path], list[Path]],
    patients: list[Path],
    orthanc: Orthanc,
) -> None:
    import datetime as dt

    wanted = make_series(patients[4])
    other = make_series(patients[5])
    today = f"{dt.date.today():%Y%m%d}"
    for p in wanted:
        ds = pydicom.dcmread(p)
        ds.SeriesDescription, ds.StudyDate = "FLAIR axial", today
        ds.save_as(p)
    for p in other:  # off the rule: another description
        ds = pydicom.dcmread(p)
        ds.SeriesDescription, ds.StudyDate = "T1 sagittal", today
        ds.save_as(p)
    for files in (wanted, other):  # the modality sends to the PACS, not to the edge
        r = subprocess.run(
            ["storescu", "-aet", MODALITY_AE, "-aec", orthanc.ae_title, "127.0.0.1",
             str(orthanc.dicom_port), *map(str, files)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
    polling = {
        "MEDOPS_DICOM_POLL_URL": orthanc.dicomweb,
        "MEDOPS_DICOM_POLL_INTERVAL_S": "0.5",
        "MEDOPS_DICOM_POLL_SERIES_DESCRIPTION": "FLAIR*",
        "MEDOPS_DICOM_POLL_DAYS": "7",
        "MEDOPS_DICOM_QUIET_S": "600",  # fetched series are complete at once, not by quiet time
    }
    edge = make_edge(**polling)
    study = str(pydicom.dcmread(wanted[0]).StudyInstanceUID)
    seg, _ = results_in(orthanc, study)
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(wanted[0]).SeriesInstanceUID
    )
    edge.stop()
    assert edge.log().count("series analysed") == 1

    again = make_edge(**polling)  # same spool: it remembers what it fetched
    wait_for(
        "a few polling rounds",
        lambda: (
            "medops_dicom_poll_failures_total 0.0"
            in (m := httpx.get(f"{again.url}/metrics", timeout=10).text)
            and 'medops_dicom_series_total{outcome="analysed"}' not in m
            and again.log().count("HTTP") >= 0
        ),
        timeout_s=10,
    )
    import time

    time.sleep(3)  # six polling intervals
    assert "series analysed" not in again.log() and "series fetched" not in again.log()
    assert len(series_in_study(orthanc, study, "SEG")) == 1
    other_study = str(pydicom.dcmread(other[0]).StudyInstanceUID)
    assert series_in_study(orthanc, other_study, "SEG") == []


def test_results_can_go_back_by_c_store_instead_of_stow(
    make_edge: Callable[..., EdgeProcess],
    make_series: Callable[[Path], list[Path]],
    patients: list[Path],
    orthanc: Orthanc,
) -> None:
    files = make_series(patients[6])
    edge = make_edge(
        MEDOPS_DICOM_DESTINATION="dimse",
        MEDOPS_DICOM_DEST_HOST="127.0.0.1",
        MEDOPS_DICOM_DEST_PORT=str(orthanc.dicom_port),
        MEDOPS_DICOM_DEST_AE_TITLE=orthanc.ae_title,
        MEDOPS_DICOM_STOW_URL="",
    )
    storescu(edge, files)
    seg, sr = results_in(orthanc, str(pydicom.dcmread(files[0]).StudyInstanceUID))
    assert seg.Modality == "SEG" and sr.Modality == "SR"


def test_a_series_of_mixed_image_sizes_is_refused_with_its_reason_and_listed(
    make_edge: Callable[..., EdgeProcess],
    make_series: Callable[[Path], list[Path]],
    patients: list[Path],
    orthanc: Orthanc,
) -> None:
    files = make_series(patients[7])
    odd = pydicom.dcmread(files[-1])
    pixels = odd.pixel_array[::2, ::2].copy()  # half the size
    odd.Rows, odd.Columns = pixels.shape[:2]
    odd.PixelData = pixels.tobytes()
    odd.save_as(files[-1])
    edge = make_edge()
    admin = {"authorization": f"Bearer {edge_keys(edge)['admin']}"}
    storescu(edge, files)

    def refused() -> list[dict[str, Any]]:
        listing = httpx.get(f"{edge.url}/v1/series/refused", headers=admin, timeout=10).json()
        found: list[dict[str, Any]] = listing["series"]
        return found

    [entry] = wait_for("the series refused", refused)
    assert entry["instances"] == len(files)
    assert "mixes image sizes" in entry["reason"]
    assert series_in_study(orthanc, str(odd.StudyInstanceUID), "SEG") == []
    metrics = httpx.get(f"{edge.url}/metrics", timeout=10).text
    assert 'medops_dicom_series_total{outcome="refused"} 1.0' in metrics


def test_a_series_sent_by_stow_rs_to_the_edge_is_analysed_and_a_garbled_part_is_named_failed(
    make_edge: Callable[..., EdgeProcess],
    make_series: Callable[[Path], list[Path]],
    patients: list[Path],
    orthanc: Orthanc,
) -> None:
    from requests import HTTPError

    files = make_series(patients[8])
    edge = make_edge()
    keys = edge_keys(edge)
    datasets = [pydicom.dcmread(p) for p in files]
    sender = DICOMwebClient(
        url=f"{edge.url}/dicom-web", headers={"authorization": f"Bearer {keys['client']}"}
    )
    answer = sender.store_instances(datasets)
    stored = {str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence}
    assert stored == {str(d.SOPInstanceUID) for d in datasets}
    seg, _ = results_in(orthanc, str(datasets[0].StudyInstanceUID))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID

    # a part that is no DICOM: 409 with the failure named, nothing stored
    boundary = "medops-test"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + b"DICM not really"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = httpx.post(
        f"{edge.url}/dicom-web/studies",
        content=body,
        headers={
            "authorization": f"Bearer {keys['client']}",
            "content-type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=30,
    )
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC210]
    # STOW-RS needs a client (or admin) key, and a DICOM multipart body
    unauthenticated = DICOMwebClient(url=f"{edge.url}/dicom-web")
    with pytest.raises(HTTPError) as refused:
        unauthenticated.store_instances(datasets[:1])
    assert refused.value.response.status_code == 401
    r = httpx.post(
        f"{edge.url}/dicom-web/studies",
        content=b"{}",
        headers={"authorization": f"Bearer {keys['client']}", "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 415 and "multipart/related" in r.json()["error"]
