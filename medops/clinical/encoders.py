"""Answers of an :class:`~medops.clinical.types.Analysis`: JSON, or the mask as a PNG slice,
NIfTI or a DICOM SEG. One function per encoding, one :func:`encode` choosing among them."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medops.errors import MedopsError
from medops.imaging.image import Image
from medops.rle import rle_encode_volume

from .types import DICOM, JSON, NIFTI, NIFTI_GZ, OFFERED, PNG, Analysis, Encoded, Prediction


class NotAcceptableError(MedopsError):
    status_code = 406


def choose_media_type(accept: str | None) -> str:
    """The best offered media type for an ``Accept`` header (JSON when anything goes)."""
    if not accept:
        return JSON
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media, q = fields[0].lower(), 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        ranked.append((-q, i, media))
    for neg_q, _, media in sorted(ranked):
        if neg_q >= 0:
            continue
        if media in ("*/*", "application/*"):
            return JSON
        if media in OFFERED:
            return media
        if media == "image/*":
            return PNG
    raise NotAcceptableError(f"cannot answer with {accept!r}; offered: {', '.join(OFFERED)}")


def encode(a: Analysis, media_type: str) -> Encoded:
    if media_type == JSON:
        body = json.dumps(to_json(a), ensure_ascii=False, separators=(",", ":"))
        return Encoded(body.encode(), JSON)
    if media_type == PNG:
        return Encoded(to_png(a), PNG)
    if media_type in (NIFTI, NIFTI_GZ):
        gz = media_type == NIFTI_GZ
        return Encoded(to_nifti(a, gz), media_type, "mask.nii.gz" if gz else "mask.nii")
    if media_type == DICOM:
        return Encoded(to_dicom_seg(a), DICOM, "mask-seg.dcm")
    raise NotAcceptableError(f"cannot answer with {media_type!r}; offered: {', '.join(OFFERED)}")


def model_summary(p: Prediction | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "name": p.info.name,
        "version": p.route.version,
        "variant": p.route.variant,
        "threshold": p.info.threshold,
    }


def to_json(a: Analysis) -> dict[str, Any]:
    """The JSON answer. ``tumour`` (per slice), ``tumour_area_mm2`` and ``tumour_volume_ml``
    are the brain chain's legacy names, kept for its clients; ``positive``,
    ``mask_area_mm2`` and ``mask_volume_ml`` carry the same values under names that fit any
    task, and ``class`` is each slice's class name from the classifier."""
    image = a.image.image
    area_px = a.mask.reshape(a.mask.shape[0], -1).sum(axis=1)
    pixel_area = image.pixel_area_mm2
    volumetric = image.num_slices > 1
    area_mm2 = round(float(area_px.sum()) * pixel_area, 4)
    volume_ml = round(float(area_px.sum()) * image.voxel_volume_ml, 6) if volumetric else None
    first = a.first.info
    classes = a.classifier.info.classes if a.classifier is not None else None
    return {
        "request_id": a.request_id,
        "image": {
            "format": image.source_format,
            "shape": list(image.shape),
            "spacing_mm": [round(s, 6) for s in image.spacing],
            "deidentified": bool(
                image.metadata.get("deidentified", image.source_format != "dicom")
            ),
            **{
                key: image.metadata[key]
                for key in ("study_instance_uid", "series_instance_uid")
                if key in image.metadata
            },
        },
        "models": {
            "classifier": model_summary(a.classifier),
            "segmenter": model_summary(a.segmenter),
        },
        "chain": a.chain,
        "decision": a.decision,
        "threshold": first.threshold,
        **(
            {
                "rule": {
                    "gate_threshold": a.segmenter.info.gate_threshold,
                    "min_component_px": a.segmenter.info.min_component_px,
                }
            }
            if a.segmenter is not None
            else {}
        ),
        "slices": [
            {
                "index": k,
                "probability": round(float(a.probabilities[k]), 6),
                "tumour": bool(a.positive[k]),
                "positive": bool(a.positive[k]),
                **(
                    {"class": classes[int(a.slice_classes[k])]}
                    if classes is not None and a.slice_classes is not None
                    else {}
                ),
                "segmented": bool(a.segmented[k]),
                "area_mm2": round(float(area_px[k]) * pixel_area, 4),
                **({"prediction_id": a.prediction_ids[k]} if a.prediction_ids else {}),
            }
            for k in range(image.num_slices)
        ],
        "tumour_area_mm2": area_mm2,
        "tumour_volume_ml": volume_ml,
        "mask_area_mm2": area_mm2,
        "mask_volume_ml": volume_ml,
        "mask": {
            "encoding": "coco-rle",
            "slices": a.mask_rle if a.mask_rle is not None else rle_encode_volume(a.mask),
        },
    }


def to_png(a: Analysis) -> bytes:
    from PIL import Image as PILImage

    if a.mask.shape[0] != 1:
        raise NotAcceptableError(
            f"image/png holds one slice; this image has {a.mask.shape[0]}: "
            f"ask for {NIFTI}, {NIFTI_GZ} or {DICOM}"
        )
    out = io.BytesIO()
    PILImage.fromarray(a.mask[0] * np.uint8(255)).save(out, format="PNG")
    return out.getvalue()


def to_nifti(a: Analysis, gz: bool) -> bytes:
    from medops.imaging.formats import write_nifti

    mask_image = Image(a.mask[None], a.image.image.affine, {}, "nifti")
    with tempfile.TemporaryDirectory(prefix="medops-mask-") as tmp:
        path = write_nifti(mask_image, Path(tmp) / ("mask.nii.gz" if gz else "mask.nii"))
        return path.read_bytes()


def to_dicom_seg(
    a: Analysis, *, series_instance_uid: str | None = None, sop_instance_uid: str | None = None
) -> bytes:
    """A binary DICOM SEG of the mask over the upload's de-identified source datasets, so its
    referenced study, series and instance UIDs are the remapped ones the caller sees
    everywhere else, never the originals. New UIDs unless given (stable ones make a resend
    a harmless duplicate)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = a.image.sources
    if sources is None:
        raise NotAcceptableError("a DICOM SEG answer needs a DICOM upload (file, series or ZIP)")
    model = a.segmenter or a.first
    name, version = model.info.name, model.route.version
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=model.info.classes[-1],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=name, family=codes.DCM.ArtificialIntelligence, version=version
        ),
        # viewers pick a colour of their own (and warn, as OHIF does) without one
        display_color=hd.color.CIELabColor.from_string("orangered"),
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=a.mask.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=900,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer="medops",
        manufacturer_model_name=name,
        software_versions=version,
        device_serial_number="medops",
        series_description=f"medops {model.info.classes[-1]} segmentation",
        omit_empty_frames=bool(a.mask.any()),
    )
    out = io.BytesIO()
    seg.save_as(out)
    return out.getvalue()
