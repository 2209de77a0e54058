"""DICOM SEG answers built with highdicom, referencing the de-identified source series.

The upload's datasets are de-identified with the same :class:`UIDMap` as the image the models
saw, so the SEG's referenced study, series and instance UIDs are the remapped ones a client
gets back everywhere else, never the originals.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from medops.errors import MedopsError
from medops.imaging.image import Image

if TYPE_CHECKING:
    from medops.deid import UIDMap

    from .analyze import Upload


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


def read_with_sources(upload: Upload, uid_map: UIDMap) -> tuple[Image, list[Dataset]]:
    """The image and its de-identified source datasets, one per slice in slice order."""
    from medops.deid import deidentify_dataset
    from medops.imaging.dicom import (
        LPS_TO_RAS,
        is_dicom_bytes,
        looks_like_raw_dicom,
        read_dataset,
        read_dicom_series_bytes,
    )

    from .analyze import NotAcceptableError, zip_dicoms

    files = upload.files
    if not files and upload.data is not None:
        zipped = zip_dicoms(upload.data)
        if zipped is not None:
            files = zipped
        elif is_dicom_bytes(upload.data[:132]) or looks_like_raw_dicom(upload.data[:132]):
            files = [upload.data]
    if not files:
        raise NotAcceptableError("a DICOM SEG answer needs a DICOM upload (file, series or ZIP)")
    image = read_dicom_series_bytes(files, uid_map=uid_map, name="<upload>")
    sources = []
    for i, data in enumerate(files):
        ds = read_dataset(data, name=f"<upload>[{i}]")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise NotAcceptableError("a DICOM SEG answer for multi-frame uploads is not supported")
        deidentify_dataset(ds, uid_map=uid_map)
        for keyword in _TYPE2_PATIENT_STUDY:
            # highdicom copies these into the SEG and needs them present; empty is what the
            # de-identification profile leaves anyway.
            if keyword not in ds:
                setattr(ds, keyword, "")
        sources.append(ds)
    # Put each source at the slice index its position falls on in the image.
    to_index = np.linalg.inv(image.affine)
    by_slice: dict[int, Dataset] = {}
    for ds in sources:
        if "ImagePositionPatient" in ds and image.num_slices > 1:
            ras = LPS_TO_RAS @ np.array([*map(float, ds.ImagePositionPatient), 1.0])
            k = round(float((to_index @ ras)[2]))
        else:
            k = 0
        by_slice[k] = ds
    if sorted(by_slice) != list(range(image.num_slices)):
        raise MedopsError(
            "<upload>: source files do not map one-to-one onto the image slices", status_code=400
        )
    return image, [by_slice[k] for k in range(image.num_slices)]


def build_seg(
    mask: np.ndarray, image: Image, sources: list[Dataset], model: dict[str, Any] | None
) -> bytes:
    """A binary DICOM SEG of ``mask`` (Z, Y, X) over ``sources`` (one per slice)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    name = (model or {}).get("name") or "brain-tumor-segmenter"
    version = str((model or {}).get("version") or "0")
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=name, family=codes.DCM.ArtificialIntelligence, version=version
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medops",
        manufacturer_model_name=name,
        software_versions=version,
        device_serial_number="medops-gateway",
        series_description="medops tumour segmentation",
        omit_empty_frames=bool(mask.any()),
    )
    out = io.BytesIO()
    seg.save_as(out)
    return out.getvalue()
