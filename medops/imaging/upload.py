"""What a caller sends, read one way whoever receives it (HTTP, a DICOM listener, a web page).

An :class:`Upload` is one file (any format of :func:`~medops.imaging.io.read_image_bytes`,
including a ZIP) or the files of one DICOM series. :func:`read_upload` de-identifies as it
reads and, when asked, keeps the de-identified source datasets a DICOM answer (a SEG, a
report) must reference, one per slice in slice order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from medops.deid import UIDMap, deidentify_dataset
from medops.errors import ImageReadError, InvalidInputError
from medops.imaging.dicom import (
    LPS_TO_RAS,
    is_dicom_bytes,
    looks_like_raw_dicom,
    read_dataset,
    read_dicom_series_bytes,
)
from medops.imaging.image import Image
from medops.imaging.io import read_image_bytes, zip_members

_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
"""Type 2 attributes a derived object copies from its sources: present, empty after
de-identification."""
TYPE2_PATIENT_STUDY = _TYPE2_PATIENT_STUDY
"""The same names, for callers deriving objects from datasets they read themselves."""


@dataclass(frozen=True)
class Upload:
    """One file, or the files of one DICOM series, as received."""

    files: tuple[bytes, ...]
    filename: str | None = None
    """Names the upload in error messages only (it may identify someone: never logged)."""
    content_type: str | None = None


@dataclass(frozen=True)
class ReadUpload:
    image: Image
    sources: list[Dataset] | None
    """The de-identified DICOM datasets, one per slice in slice order; None when not asked
    for or when the upload is not DICOM."""


def read_upload(upload: Upload, uid_map: UIDMap, *, sources: bool = False) -> ReadUpload:
    """Decode and de-identify ``upload`` (with ``uid_map``, so that every UID a caller sees
    back, image or source dataset, is remapped the same way)."""
    name = "<upload>"
    if not upload.files or not any(upload.files):
        raise ImageReadError(f"{name}: the upload is empty")
    if len(upload.files) > 1:
        image = read_dicom_series_bytes(list(upload.files), uid_map=uid_map, name=name)
    else:
        image = read_image_bytes(
            upload.files[0],
            filename=upload.filename,
            content_type=upload.content_type,
            uid_map=uid_map,
        )
    dicoms = _dicom_files(upload) if sources else None
    if not dicoms:
        return ReadUpload(image, None)
    return ReadUpload(image, _source_datasets(dicoms, image, uid_map))


def _dicom_files(upload: Upload) -> list[bytes] | None:
    if len(upload.files) > 1:
        return list(upload.files)
    data = upload.files[0]
    if data.startswith(b"PK"):
        found = [b for b in zip_members(data, "<upload>").values() if is_dicom_bytes(b[:132])]
        return found or None
    media = (upload.content_type or "").split(";")[0].strip().lower()
    head = data[:132]
    if is_dicom_bytes(head) or looks_like_raw_dicom(head) or media == "application/dicom":
        return [data]
    return None


def _source_datasets(files: list[bytes], image: Image, uid_map: UIDMap) -> list[Dataset]:
    datasets = []
    for i, data in enumerate(files):
        ds = read_dataset(data, name=f"<upload>[{i}]")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InvalidInputError(
                "<upload>: a DICOM answer for multi-frame uploads is not supported"
            )
        deidentify_dataset(ds, uid_map=uid_map)
        for keyword in _TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
        datasets.append(ds)
    # each source at the slice index its position falls on in the image
    to_index = np.linalg.inv(image.affine)
    by_slice: dict[int, Dataset] = {}
    for ds in datasets:
        k = 0
        if "ImagePositionPatient" in ds and image.num_slices > 1:
            ras = LPS_TO_RAS @ np.array([*map(float, ds.ImagePositionPatient), 1.0])
            k = round(float((to_index @ ras)[2]))
        by_slice[k] = ds
    if sorted(by_slice) != list(range(image.num_slices)):
        raise InvalidInputError("<upload>: source files do not map one-to-one onto the slices")
    return [by_slice[k] for k in range(image.num_slices)]
