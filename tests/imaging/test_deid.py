"""De-identification: a PHI sweep over real pydicom files with planted identifiers."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medops.deid import UIDMap, deidentify_bytes, deidentify_dataset
from medops.deid_profile import BASIC_PROFILE, action_for
from medops.errors import PHIError
from medops.imaging import read_image

NAME = "Doe^Jane^Quincy"
MOTHER = "Doe^Martha"
PHYSICIAN = "House^Gregory"
PATIENT_ID = "MRN-99887766"
OTHER_ID = "SSN-123-45-6789"
ACCESSION = "ACC-5550123"
BIRTH_DATE = "19610412"
STUDY_DATE = "20210314"
ADDRESS = "42 Wallaby Way, Sydney"
INSTITUTION = "St Elsewhere General"
INSTITUTION_ADDRESS = "1 Hospital Road, Springfield"
PHONE = "555-0199-4242"
PRIVATE_NOTE = "private note about Jane Quincy"
NESTED_NAME = "Smith^Nested^Person"
NESTED_DATE = "19990101"

PLANTED = [
    NAME,
    "Quincy",
    MOTHER,
    PHYSICIAN,
    PATIENT_ID,
    OTHER_ID,
    ACCESSION,
    BIRTH_DATE,
    STUDY_DATE,
    ADDRESS,
    INSTITUTION,
    INSTITUTION_ADDRESS,
    PHONE,
    PRIVATE_NOTE,
    NESTED_NAME,
    NESTED_DATE,
]


def plant_phi(ds: Dataset) -> Dataset:
    """Plant identifiers at the top level, inside sequences and in private tags."""
    ds.PatientName = NAME
    ds.PatientID = PATIENT_ID
    ds.OtherPatientIDs = OTHER_ID
    ds.PatientMotherBirthName = MOTHER
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientAddress = ADDRESS
    ds.PatientTelephoneNumbers = PHONE
    ds.ReferringPhysicianName = PHYSICIAN
    ds.AccessionNumber = ACCESSION
    ds.InstitutionName = INSTITUTION
    ds.InstitutionAddress = INSTITUTION_ADDRESS
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"):
        setattr(ds, kw, STUDY_DATE)
    ds.StudyID = ACCESSION
    ds.StudyDescription = f"brain MRI of {NAME}"
    ds.ImageComments = f"call {PHONE}"

    # A sequence the profile removes, and one it keeps but must clean inside.
    request = Dataset()
    request.RequestedProcedureID = ACCESSION
    request.ScheduledProcedureStepStartDate = STUDY_DATE
    ds.RequestAttributesSequence = Sequence([request])
    inner = Dataset()
    inner.PatientName = NESTED_NAME
    inner.PatientAddress = ADDRESS
    inner.StudyDate = NESTED_DATE
    inner.CodeValue = "T-A0100"
    inner.CodingSchemeDesignator = "SRT"
    inner.CodeMeaning = "Brain"
    deeper = Dataset()
    deeper.PersonName = NAME
    deeper.ReferencedSOPInstanceUID = str(ds.SOPInstanceUID)
    inner.ReferencedImageSequence = Sequence([deeper])
    ds.AnatomicRegionSequence = Sequence([inner])

    block = ds.private_block(0x0099, "ACME PHI STORE", create=True)
    block.add_new(0x01, "LO", PRIVATE_NOTE)
    block.add_new(0x02, "PN", NAME)
    private_item = Dataset()
    private_item.PatientName = NESTED_NAME
    block.add_new(0x03, "SQ", Sequence([private_item]))
    return ds


def walk(ds: Dataset) -> Iterator[pydicom.DataElement]:
    """Every element, including file meta and everything inside sequences."""
    if hasattr(ds, "file_meta"):
        yield from ds.file_meta
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)


def planted(dicom_testfile: Callable[[str], Path], name: str) -> Dataset:
    return plant_phi(pydicom.dcmread(dicom_testfile(name)))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "693_J2KR.dcm"])
def test_no_planted_identifier_survives_anywhere_in_the_dataset_or_its_file(
    dicom_testfile: Callable[[str], Path], name: str
):
    ds = planted(dicom_testfile, name)
    original_uids = [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
    pixels = ds.pixel_array.copy()

    report = deidentify_dataset(ds)
    out = io.BytesIO()
    ds.save_as(out)
    written = out.getvalue()

    for elem in walk(ds):
        text = str(elem.value)
        for value in PLANTED + original_uids:
            assert value not in text, f"{value!r} survived in {elem.keyword or elem.tag}"
    for value in PLANTED + original_uids:
        assert value.encode() not in written, f"{value!r} survived in the written file"
    assert not any(elem.tag.is_private for elem in walk(ds))
    assert report.private_tags_removed >= 3
    # Pixels are untouched; the dataset says what was done.
    assert np.array_equal(pydicom.dcmread(io.BytesIO(written)).pixel_array, pixels)
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert "Basic" in ds.DeidentificationMethod


def test_report_names_changed_attributes_but_holds_no_original_value(
    dicom_testfile: Callable[[str], Path],
):
    ds = planted(dicom_testfile, "MR_small.dcm")
    report = deidentify_dataset(ds)
    text = json.dumps(report.to_dict())

    actions = {c.path: c.action for c in report.changes}
    assert actions["PatientName"] == "Z"
    assert actions["PatientAddress"] == "X"
    assert actions["PatientID"] == "D"
    assert actions["StudyInstanceUID"] == "U"
    assert actions["AnatomicRegionSequence[0].PatientName"] == "Z"
    deeper = "AnatomicRegionSequence[0].ReferencedImageSequence[0]."
    assert actions[deeper + "PersonName"] == "D"
    assert actions[deeper + "ReferencedSOPInstanceUID"] == "U"
    assert report.count("U") >= 4
    for value in PLANTED:
        assert value not in text


def test_uids_are_remapped_consistently_across_the_files_of_one_study(
    dicom_testfile: Callable[[str], Path],
):
    first = pydicom.dcmread(dicom_testfile("MR_small.dcm"))
    second = pydicom.dcmread(dicom_testfile("MR_small.dcm"))
    second.SOPInstanceUID = pydicom.uid.generate_uid()
    other_study = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    originals = {k: str(first[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID")}
    uid_map = UIDMap()

    for ds in (first, second, other_study):
        deidentify_dataset(ds, uid_map=uid_map)

    assert first.StudyInstanceUID == second.StudyInstanceUID != originals["StudyInstanceUID"]
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert other_study.StudyInstanceUID != first.StudyInstanceUID
    assert first.PatientID == second.PatientID  # one patient keeps one pseudonym
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    for uid in (first.StudyInstanceUID, first.SOPInstanceUID):
        assert pydicom.uid.UID(uid).is_valid
    # Another map (another key) gives other UIDs; the same key gives the same ones.
    fresh = pydicom.dcmread(dicom_testfile("MR_small.dcm"))
    deidentify_dataset(fresh, uid_map=UIDMap())
    assert fresh.StudyInstanceUID != first.StudyInstanceUID
    assert UIDMap(b"k").uid("1.2.3") == UIDMap(b"k").uid("1.2.3") != UIDMap(b"j").uid("1.2.3")


def test_burned_in_annotation_is_refused_or_flagged(dicom_testfile: Callable[[str], Path]):
    ds = planted(dicom_testfile, "MR_small.dcm")
    ds.BurnedInAnnotation = "YES"

    with pytest.raises(PHIError, match="BurnedInAnnotation"):
        deidentify_dataset(ds)
    assert ds.PatientName == NAME  # refused before changing anything

    report = deidentify_dataset(ds, burned_in="flag")
    assert report.burned_in_annotation is True
    assert report.to_dict()["burned_in_annotation"] is True
    assert ds.PatientName == ""


def test_read_image_metadata_holds_no_planted_identifier(
    dicom_testfile: Callable[[str], Path], tmp_path: Path
):
    path = tmp_path / "phi.dcm"
    planted(dicom_testfile, "CT_small.dcm").save_as(path)

    image = read_image(path)

    text = json.dumps(image.metadata)
    for value in PLANTED:
        assert value not in text
    assert image.metadata["patient_pseudonym"].startswith("ANON-")


def test_deidentify_bytes_returns_a_clean_readable_file(dicom_testfile: Callable[[str], Path]):
    buffer = io.BytesIO()
    planted(dicom_testfile, "MR_small.dcm").save_as(buffer)

    clean, report = deidentify_bytes(buffer.getvalue(), filename="upload.dcm")

    for value in PLANTED:
        assert value.encode() not in clean
    assert pydicom.dcmread(io.BytesIO(clean)).PatientIdentityRemoved == "YES"
    assert report.count("U") >= 3


def test_profile_table_covers_the_basic_profile_and_matches_the_dicom_dictionary():
    assert len(BASIC_PROFILE) > 600
    expected = {
        "PatientName": "Z",
        "PatientID": "Z/D",
        "PatientBirthDate": "Z",
        "PatientAddress": "X",
        "StudyInstanceUID": "U",
        "SOPInstanceUID": "U",
        "InstitutionName": "X/Z/D",
        "AccessionNumber": "Z",
        "ReferencedImageSequence": "X/Z/U*",
        "OtherPatientIDsSequence": "X",
    }
    by_keyword = {keyword_for_tag(tag): action for tag, action in BASIC_PROFILE.items()}
    for keyword, action in expected.items():
        assert by_keyword[keyword] == action, keyword
    assert action_for(0x60003000) == "X"  # overlay data in any 60xx group
    assert action_for(0x50020010) == "X"  # curve data
    assert action_for(0x00280010) is None  # Rows: not an identifier
    valid = {"X", "Z", "D", "U", "K", "C", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    assert set(BASIC_PROFILE.values()) <= valid


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the planted trailing NUL
def test_uid_read_with_unknown_vr_is_still_replaced_consistently():
    from pydicom.dataelem import DataElement

    ds = Dataset()
    ds.add(DataElement(0x0020000D, "UN", b"1.2.840.99999.1.2\x00"))
    uid_map = UIDMap(b"study-key")

    deidentify_dataset(ds, uid_map=uid_map)

    assert ds["StudyInstanceUID"].VR == "UI"
    assert ds.StudyInstanceUID == uid_map.uid("1.2.840.99999.1.2")
