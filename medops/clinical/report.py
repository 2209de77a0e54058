"""Results for a PACS: a DICOM SEG and a TID 1500 Measurement Report SR over given source
datasets, with UIDs derived from the source series and the models, so analysing the same
series again with the same models yields the same objects (a resend is a harmless duplicate).

The caller chooses the sources: the gateway's answers use the de-identified ones; the DICOM
edge passes the originals, so the results display with the images the PACS holds."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from medops.imaging.upload import ReadUpload

from .encoders import NotAcceptableError, to_dicom_seg
from .types import Analysis

SEG_SERIES_NUMBER = 900
SR_SERIES_NUMBER = 901

MILLILITER = Code("mL", "UCUM", "milliliter")
SQUARE_MILLIMETER = Code("mm2", "UCUM", "square millimeter")


def stable_uid(*parts: str) -> str:
    """A ``2.25.`` UID (at most 44 characters) that is the same for the same parts."""
    digest = hashlib.sha256("\x00".join(("medops", *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass(frozen=True)
class Results:
    seg: Dataset
    sr: Dataset
    volume_ml: float
    """The mask's volume over the series (the SR's volumetric measurement)."""


def _models_key(a: Analysis) -> str:
    return "|".join(
        f"{p.info.name}@{p.route.version}" for p in (a.classifier, a.segmenter) if p is not None
    )


def build_results(a: Analysis, sources: Sequence[Dataset]) -> Results:
    """The SEG and the SR of analysis ``a`` over ``sources`` (one per slice, in the analysis's
    slice order)."""
    import io

    import pydicom

    if len(sources) != a.mask.shape[0]:
        raise NotAcceptableError(
            f"{len(sources)} source datasets for {a.mask.shape[0]} slices: cannot reference them"
        )
    series_uid = str(sources[0].SeriesInstanceUID)
    models = _models_key(a)
    on_sources = replace(a, image=ReadUpload(a.image.image, list(sources)))
    seg_bytes = to_dicom_seg(
        on_sources,
        series_instance_uid=stable_uid("seg-series", series_uid, models),
        sop_instance_uid=stable_uid("seg", series_uid, models),
    )
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    sr = _measurement_report(a, sources, seg, models)
    voxel_ml = a.image.image.voxel_volume_ml if a.image.image.num_slices > 1 else 0.0
    return Results(seg=seg, sr=sr, volume_ml=float(a.mask.sum()) * voxel_ml)


def _measurement_report(
    a: Analysis, sources: Sequence[Dataset], seg: Dataset, models: str
) -> Dataset:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    model = a.segmenter or a.first
    name, version = model.info.name, model.route.version
    series_uid = str(sources[0].SeriesInstanceUID)
    image = a.image.image
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=stable_uid("device", name, version),
            name=name,
            manufacturer_name="medops",
            model_name=name,
            serial_number=version,
        ),
    )
    algorithm = hd.sr.AlgorithmIdentification(name=name, version=version)
    finding = codes.SCT.Neoplasm
    category = codes.SCT.MorphologicallyAbnormalStructure
    volume_ml = float(a.mask.sum()) * image.voxel_volume_ml
    source_series = hd.sr.SourceSeriesForSegmentation(series_uid)
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=stable_uid("finding", series_uid, models), identifier="tumour volume"
            ),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=1,
                source_series=source_series,
            ),
            finding_type=finding,
            finding_category=category,
            algorithm_id=algorithm,
            measurements=[
                hd.sr.Measurement(
                    name=codes.SCT.Volume,
                    value=round(volume_ml, 6),
                    unit=MILLILITER,
                    algorithm_id=algorithm,
                )
            ],
        )
    ]
    frames = _frames_by_source(seg)
    area_px = a.mask.reshape(a.mask.shape[0], -1).sum(axis=1)
    for k in np.flatnonzero(area_px):
        source = sources[int(k)]
        uid = str(source.SOPInstanceUID)
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=stable_uid("finding", series_uid, models, uid),
                    identifier=f"tumour on slice {int(k) + 1}",
                ),
                referenced_segment=hd.sr.ReferencedSegmentationFrame(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    frame_number=frames[uid],
                    segment_number=1,
                    source_image=hd.sr.SourceImageForSegmentation(str(source.SOPClassUID), uid),
                ),
                finding_type=finding,
                finding_category=category,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.SCT.Area,
                        value=round(float(area_px[k]) * image.pixel_area_mm2, 4),
                        unit=SQUARE_MILLIMETER,
                        algorithm_id=algorithm,
                    )
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        # CID 100 (quantitative imaging procedures) has no brain MRI; its unspecified region
        procedure_reported=(
            codes.cid100.CTUnspecifiedBodyRegion
            if _modality(sources) == "CT"
            else codes.cid100.MRIUnspecifiedBodyRegion
        ),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg],
        content=report,
        series_instance_uid=stable_uid("sr-series", series_uid, models),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=stable_uid("sr", series_uid, models),
        instance_number=1,
        manufacturer="medops",
        is_complete=True,
        series_description=f"medops {model.info.classes[-1]} measurements",
    )
    _drop_segment_number_beside_frame(sr)
    return sr


def _drop_segment_number_beside_frame(ds: Dataset) -> None:
    """PS3.3 C.18.3 (Image SOP Instance Reference): Referenced Segment Number only when no
    Referenced Frame Number is given; highdicom writes both for a segmentation frame, which
    validators reject. A SEG frame belongs to one segment, so the frame alone says it."""
    for item in ds.get("ContentSequence", []):
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                del ref.ReferencedSegmentNumber
        _drop_segment_number_beside_frame(item)


def _modality(sources: Sequence[Dataset]) -> str:
    return str(sources[0].get("Modality", ""))


def _frames_by_source(seg: Dataset) -> dict[str, int]:
    """The SEG frame number (1-based) of each referenced source instance."""
    frames: dict[str, int] = {}
    for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        for derivation in item.DerivationImageSequence:
            for source in derivation.SourceImageSequence:
                frames.setdefault(str(source.ReferencedSOPInstanceUID), n)
    return frames
