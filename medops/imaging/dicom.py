"""DICOM reading (single file, multi-frame, series) and derived-series writing.

Geometry follows PS3.3 C.7.6.2: ``ImageOrientationPatient`` gives the directions of a row
(increasing column index ``i``) and of a column (increasing row index ``j``) in LPS+;
``PixelSpacing`` is (between rows, between columns); slices are ordered by
``ImagePositionPatient`` projected on the slice normal. The affine is converted to RAS+ on
read and back to LPS+ on write, so a write -> read round trip keeps array and affine.
"""

from __future__ import annotations

import io
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from medops.deid import UIDMap, deidentify_dataset
from medops.errors import ImageReadError, InvalidInputError, MedopsError, PHIError
from medops.imaging.image import Image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Flips x and y: DICOM patient coordinates (LPS+) <-> NIfTI world coordinates (RAS+)."""

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_STORAGE_CLASS = {
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

BurnedIn = Literal["refuse", "flag"]


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One series found in a folder, identified by its original (not remapped) UID."""

    series_uid: str
    files: int
    modality: str


@dataclass
class _Slice:
    pixels: np.ndarray  # (Y, X) or (Y, X, S)
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing)
    thickness: float | None
    slope: float
    intercept: float
    instance: int | None


# ----------------------------------------------------------------------------- reading


def is_dicom_bytes(head: bytes) -> bool:
    """True for a Part 10 file (``DICM`` after the preamble)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def looks_like_raw_dicom(head: bytes) -> bool:
    """A dataset without preamble: starts with a group 0x0008 (or 0x0002) element tag."""
    return len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[3] == 0


def read_dataset(source: str | Path | bytes, *, name: str) -> Dataset:
    """Parse one DICOM file or byte string; any parser failure becomes :class:`ImageReadError`."""
    try:
        fp: Any = io.BytesIO(source) if isinstance(source, bytes) else source
        ds = pydicom.dcmread(fp, force=True)
        if len(ds) == 0:
            raise ValueError("no DICOM attributes found")
        _parse_all(ds)
    except Exception as exc:  # pydicom raises many exception types for damaged input
        raise ImageReadError(f"{name}: not a readable DICOM file ({_short(exc)})") from None
    return ds


def _parse_all(ds: Dataset) -> None:
    """Convert every element now: pydicom parses lazily, and damage must surface here."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _parse_all(item)


@contextmanager
def _guard(name: str) -> Iterator[None]:
    """Any non-medops failure while interpreting a parsed file is a damaged-file error."""
    try:
        yield
    except MedopsError:
        raise
    except Exception as exc:  # attribute values pydicom cannot interpret, odd shapes, ...
        raise ImageReadError(f"{name}: damaged DICOM content ({_short(exc)})") from None


def read_dicom_file(
    source: str | Path | bytes,
    *,
    deidentify: bool = True,
    uid_map: UIDMap | None = None,
    burned_in: BurnedIn = "refuse",
    name: str | None = None,
) -> Image:
    """One DICOM file (single or multi-frame) -> :class:`Image`.

    A multi-frame file uses its per-frame functional groups (position, orientation, pixel
    measures, rescale) where present; frames with distinct positions are ordered along the
    slice normal, others keep their stored order.
    """
    name = name or (Path(source).name if not isinstance(source, bytes) else "<bytes>")
    ds = read_dataset(source, name=name)
    with _guard(name):
        report = _deid(ds, deidentify, uid_map, burned_in, name)
        slices = _slices_of(ds, name)
        return _assemble(slices, [ds], name, report_meta=report, strict_positions=False)


def list_dicom_series(folder: str | Path) -> list[DicomSeriesInfo]:
    """The series in a folder (recursively): pick ``series_uid`` for :func:`read_dicom_series`."""
    groups = _group_by_series(_load_folder(Path(folder)))
    return [
        DicomSeriesInfo(uid, len(items), str(items[0][1].get("Modality", "")))
        for uid, items in groups.items()
    ]


def read_dicom_series(
    folder: str | Path,
    *,
    series_uid: str | None = None,
    deidentify: bool = True,
    uid_map: UIDMap | None = None,
    burned_in: BurnedIn = "refuse",
) -> Image:
    """A folder of DICOM files (searched recursively) -> one 3D :class:`Image`.

    Files that are not DICOM (no ``DICM`` marker) and DICOMDIR indexes are ignored. A
    folder holding several series needs ``series_uid`` (the original SeriesInstanceUID, see
    :func:`list_dicom_series`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder.name}: not a folder")
    return _read_series(
        _load_folder(folder), folder.name, series_uid, deidentify, uid_map, burned_in
    )


def read_dicom_series_bytes(
    files: Sequence[bytes],
    *,
    series_uid: str | None = None,
    deidentify: bool = True,
    uid_map: UIDMap | None = None,
    burned_in: BurnedIn = "refuse",
    name: str = "<upload>",
) -> Image:
    """The files of one DICOM series, held in memory -> one 3D :class:`Image`."""
    datasets = [
        (f"{name}[{i}]", read_dataset(data, name=f"{name}[{i}]")) for i, data in enumerate(files)
    ]
    with _guard(name):
        return _read_series(datasets, name, series_uid, deidentify, uid_map, burned_in)


def _read_series(
    datasets: list[tuple[str, Dataset]],
    name: str,
    series_uid: str | None,
    deidentify: bool,
    uid_map: UIDMap | None,
    burned_in: BurnedIn,
) -> Image:
    if not datasets:
        raise ImageReadError(f"{name}: no DICOM files found")
    groups = _group_by_series(datasets)
    if series_uid is not None:
        if series_uid not in groups:
            raise InvalidInputError(
                f"{name}: no series with the requested series_uid among its {len(groups)} series"
            )
        chosen = groups[series_uid]
    elif len(groups) > 1:
        sizes = ", ".join(str(len(v)) for v in groups.values())
        raise InvalidInputError(
            f"{name}: holds {len(groups)} DICOM series (files per series: {sizes}); "
            "pass series_uid= to choose one"
        )
    else:
        chosen = next(iter(groups.values()))
    uid_map = uid_map if uid_map is not None else UIDMap()
    report: dict[str, Any] | None = None
    for fname, ds in chosen:
        report = _deid(ds, deidentify, uid_map, burned_in, fname) or report
    if len(chosen) == 1:
        fname, ds = chosen[0]
        return _assemble(_slices_of(ds, fname), [ds], name, report, strict_positions=False)
    slices: list[_Slice] = []
    for fname, ds in chosen:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ImageReadError(
                f"{fname}: a multi-frame file inside a multi-file series is not supported"
            )
        slices.extend(_slices_of(ds, fname))
    return _assemble(slices, [ds for _, ds in chosen], name, report, strict_positions=True)


def _load_folder(folder: Path) -> list[tuple[str, Dataset]]:
    out: list[tuple[str, Dataset]] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb") as fh:
            head = fh.read(132)
        if not (is_dicom_bytes(head) or looks_like_raw_dicom(head)):
            continue
        ds = read_dataset(path, name=path.name)
        sop_class = str(getattr(ds.get("file_meta", Dataset()), "MediaStorageSOPClassUID", ""))
        if sop_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
            continue
        out.append((path.name, ds))
    if not out:
        raise ImageReadError(f"{folder.name}: no DICOM files found in the folder")
    return out


def _group_by_series(
    datasets: Iterable[tuple[str, Dataset]],
) -> dict[str, list[tuple[str, Dataset]]]:
    groups: dict[str, list[tuple[str, Dataset]]] = defaultdict(list)
    for fname, ds in datasets:
        groups[str(ds.get("SeriesInstanceUID", ""))].append((fname, ds))
    return dict(groups)


def _deid(
    ds: Dataset, deidentify: bool, uid_map: UIDMap | None, burned_in: BurnedIn, name: str
) -> dict[str, Any] | None:
    if not deidentify:
        return None
    try:
        report = deidentify_dataset(ds, uid_map=uid_map, burned_in=burned_in)
    except PHIError as exc:
        raise PHIError(f"{name}: {exc.message}") from None
    summary = report.to_dict()
    del summary["changes"]
    return summary


def _fg(ds: Dataset, frame: int, seq: str, attr: str) -> Any:
    """An attribute of ``frame`` from the per-frame, then shared functional groups, then the top."""
    for groups_kw, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_kw)
        if groups and index < len(groups):
            inner = groups[index].get(seq)
            if inner and attr in inner[0]:
                return inner[0].get(attr)
    return ds.get(attr)


def _vec(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _num(value: Any, default: float | None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _slices_of(ds: Dataset, name: str) -> list[_Slice]:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(
            f"{name}: the DICOM file holds no pixel data (Modality {ds.get('Modality', '?')})"
        )
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoder, length and plugin errors all mean a bad pixel payload
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        how = f" ({syntax.name})" if syntax is not None else ""
        raise ImageReadError(f"{name}: cannot decode the pixel data{how}: {_short(exc)}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)  # indices -> RGB, so the picture is what is seen
        samples = 3
    if frames == 1 or pixels.ndim == (2 if samples == 1 else 3):
        pixels = pixels[np.newaxis]
    expected = 3 if samples == 1 else 4
    if pixels.ndim != expected:
        raise ImageReadError(f"{name}: unexpected pixel array shape {pixels.shape}")
    multi = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    out = []
    for f in range(pixels.shape[0]):
        if multi:
            pos = _fg(ds, f, "PlanePositionSequence", "ImagePositionPatient")
            ori = _fg(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = _fg(ds, f, "PixelMeasuresSequence", "PixelSpacing")
            thick = _fg(ds, f, "PixelMeasuresSequence", "SpacingBetweenSlices") or _fg(
                ds, f, "PixelMeasuresSequence", "SliceThickness"
            )
            slope = _fg(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
            icpt = _fg(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
        else:
            pos, ori = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
            spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
            thick = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
            slope, icpt = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
            if slope is None:
                slope = ds.get("DoseGridScaling")  # RT dose: stored value x scaling = Gy
            pos = _grid_frame_position(ds, f, pos, ori)
        sp = _vec(spacing, 2)
        out.append(
            _Slice(
                pixels=pixels[f],
                position=_vec(pos, 3),
                orientation=_vec(ori, 6),
                pixel_spacing=(float(sp[0]), float(sp[1])) if sp is not None else None,
                thickness=_num(thick, None),
                slope=_num(slope, 1.0) or 1.0,
                intercept=_num(icpt, 0.0) or 0.0,
                instance=int(_num(ds.get("InstanceNumber"), None) or 0) or None,
            )
        )
    return out


def _grid_frame_position(ds: Dataset, frame: int, pos: Any, ori: Any) -> Any:
    """RT dose and similar multi-frame files place frame ``f`` at GridFrameOffsetVector[f]
    along the normal (relative to the first frame, whichever interpretation is used)."""
    offsets = ds.get("GridFrameOffsetVector")
    p, o = _vec(pos, 3), _vec(ori, 6)
    if offsets is None or p is None or o is None or frame >= len(offsets):
        return pos
    normal = np.cross(o[:3], o[3:])
    return p + (float(offsets[frame]) - float(offsets[0])) * normal


def _assemble(
    slices: list[_Slice],
    datasets: list[Dataset],
    name: str,
    report_meta: dict[str, Any] | None,
    *,
    strict_positions: bool,
) -> Image:
    first = slices[0]
    for s in slices[1:]:
        if s.pixels.shape != first.pixels.shape:
            raise ImageReadError(
                f"{name}: slices differ in size ({first.pixels.shape} vs {s.pixels.shape})"
            )
    orient = next((s.orientation for s in slices if s.orientation is not None), None)
    if orient is not None:
        for s in slices:
            if s.orientation is not None and not np.allclose(s.orientation, orient, atol=1e-4):
                raise ImageReadError(f"{name}: slices have different orientations")
    slices, affine, positions_known, irregular = _geometry(slices, orient, name, strict_positions)

    stack = np.stack([s.pixels for s in slices])  # (Z, Y, X[, S])
    rescaled = any(s.slope != 1.0 or s.intercept != 0.0 for s in slices)
    if rescaled and stack.ndim == 3:
        slopes = np.array([s.slope for s in slices], dtype=np.float64)[:, None, None]
        icpts = np.array([s.intercept for s in slices], dtype=np.float64)[:, None, None]
        stack = (stack * slopes + icpts).astype(np.float32)
    array = stack[np.newaxis] if stack.ndim == 3 else np.moveaxis(stack, -1, 0)
    meta = _safe_metadata(datasets[0], report_meta)
    meta.update(
        rows=int(array.shape[2]),
        columns=int(array.shape[3]),
        slices=int(array.shape[1]),
        rescaled=bool(rescaled and stack.ndim == 3),
        geometry="patient" if positions_known else "none",
    )
    if irregular:
        meta["irregular_slice_spacing"] = True
    image = Image(np.ascontiguousarray(array), affine, meta, "dicom")
    image.metadata["spacing"] = [round(v, 6) for v in image.spacing]
    return image


def _geometry(
    slices: list[_Slice], orient: np.ndarray | None, name: str, strict_positions: bool
) -> tuple[list[_Slice], np.ndarray, bool, bool]:
    """Order slices along the normal; return them, the RAS+ affine, and two geometry flags."""
    first = slices[0]
    row_spacing, col_spacing = first.pixel_spacing or (1.0, 1.0)
    if orient is None:
        return (
            slices,
            np.diag([col_spacing, row_spacing, first.thickness or 1.0, 1.0]),
            False,
            False,
        )
    r, c = orient[:3] / np.linalg.norm(orient[:3]), orient[3:] / np.linalg.norm(orient[3:])
    normal = np.cross(r, c)
    step = normal * (first.thickness or 1.0)
    positions = [s.position for s in slices if s.position is not None]
    known = len(positions) == len(slices)
    irregular = False
    if known:
        proj = np.array([float(np.dot(p, normal)) for p in positions])
        if len(slices) == 1 or float(np.min(np.diff(np.sort(proj)))) > 1e-4:
            order = [int(i) for i in np.argsort(proj, kind="stable")]
            slices, positions = [slices[i] for i in order], [positions[i] for i in order]
            inst = [s.instance or 0 for s in slices]
            if len(inst) > 1 and all(a > b > 0 for a, b in itertools.pairwise(inst)):
                # Keep the stored (instance) order when it runs against the normal.
                slices, positions = slices[::-1], positions[::-1]
            if len(slices) > 1:
                step = (positions[-1] - positions[0]) / (len(slices) - 1)
                gaps = np.abs(np.diff([float(np.dot(p, normal)) for p in positions]))
                irregular = bool(np.ptp(gaps) > max(1e-3, 0.01 * float(np.mean(gaps))))
        elif strict_positions:
            raise ImageReadError(
                f"{name}: several files share one slice position; "
                "the series is not a single volume (echoes, phases or duplicates?)"
            )
    lps = np.eye(4)
    lps[:3, 0] = r * col_spacing
    lps[:3, 1] = c * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0] if known else 0.0
    return slices, LPS_TO_RAS @ lps, known, irregular


_SAFE_ATTRIBUTES = {
    "Modality": "modality",
    "SeriesDescription": "series_description",
    "BodyPartExamined": "body_part_examined",
    "Manufacturer": "manufacturer",
    "MagneticFieldStrength": "magnetic_field_strength",
    "PhotometricInterpretation": "photometric_interpretation",
    "SOPClassUID": "sop_class_uid",
}
_REMAPPED_UIDS = {
    "StudyInstanceUID": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "FrameOfReferenceUID": "frame_of_reference_uid",
}


def _safe_metadata(ds: Dataset, report: dict[str, Any] | None) -> dict[str, Any]:
    """Only attributes that identify nobody; UIDs and the patient pseudonym only once remapped."""
    meta: dict[str, Any] = {"deidentified": report is not None}
    for kw, key in _SAFE_ATTRIBUTES.items():
        value = ds.get(kw)
        if value not in (None, ""):
            meta[key] = float(value) if kw == "MagneticFieldStrength" else str(value)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        meta["transfer_syntax"] = str(syntax)
    if report is not None:
        for kw, key in _REMAPPED_UIDS.items():
            if ds.get(kw):
                meta[key] = str(ds.get(kw))
        if ds.get("PatientID"):
            meta["patient_pseudonym"] = str(ds.PatientID)
        meta["deidentification"] = report
    return meta


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# ----------------------------------------------------------------------------- writing


def write_dicom_series(
    image: Image,
    folder: str | Path,
    *,
    series_description: str = "medops derived series",
    modality: str = "MR",
    patient_id: str = "ANONYMOUS",
    study_uid: str | None = None,
    reference: Image | Dataset | None = None,
    channel: int | None = None,
) -> list[Path]:
    """Write ``image`` as a DICOM series, one file per slice; returns the paths in slice order.

    Each file carries ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
    SliceThickness and SpacingBetweenSlices from the affine (RAS+ converted to LPS+) and fresh
    UIDs, so :func:`read_dicom_series` gives back the same array and affine. Integer data up
    to 16 bits is stored as is; anything else is stored as uint16 with RescaleSlope and
    RescaleIntercept (read back as float32, within one slope step).

    Channels: a 3-channel uint8 image is written as RGB (SamplesPerPixel 3), which reads back
    as 3 channels; otherwise one channel is written (``channel``, required when the image has
    several). ``reference`` (an Image read from DICOM, or a pydicom Dataset) lends its study
    and frame-of-reference UIDs, so the derived series joins that study.
    """
    folder = Path(folder)
    array, photometric = _channel_array(image, channel)
    lps = np.linalg.inv(LPS_TO_RAS) @ image.affine
    col_vec, row_vec, slice_vec = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    col_spacing, row_spacing = float(np.linalg.norm(col_vec)), float(np.linalg.norm(row_vec))
    slice_spacing = float(np.linalg.norm(slice_vec))
    if min(col_spacing, row_spacing, slice_spacing) <= 0:
        raise InvalidInputError("write_dicom_series: the affine has a zero-length axis")
    r, c = col_vec / col_spacing, row_vec / row_spacing
    if abs(float(np.dot(r, c))) > 1e-4:
        raise InvalidInputError(
            "write_dicom_series: the in-plane axes of the affine are not orthogonal; "
            "DICOM cannot store a sheared slice"
        )

    ref_study, ref_frame = _reference_uids(reference)
    study = study_uid or ref_study or generate_uid()
    frame_of_ref = ref_frame or generate_uid()
    series = generate_uid()
    pixels, slope, intercept = _stored_pixels(array, photometric)
    sop_class = UID(_STORAGE_CLASS.get(modality.upper(), _SECONDARY_CAPTURE))

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(pixels.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.PatientName = ""
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame_of_ref
        ds.Modality = modality.upper()
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.BurnedInAnnotation = "NO"
        ds.ImagePositionPatient = _ds_list(lps[:3, 3] + k * slice_vec)
        ds.ImageOrientationPatient = _ds_list(np.concatenate([r, c]))
        ds.PixelSpacing = _ds_list([row_spacing, col_spacing])
        ds.SliceThickness = DSfloat(slice_spacing, auto_format=True)
        ds.SpacingBetweenSlices = DSfloat(slice_spacing, auto_format=True)
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
        ds.PhotometricInterpretation = photometric
        if photometric == "RGB":
            ds.PlanarConfiguration = 0
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        if slope is not None:
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept
            ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        path = folder / f"slice_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _channel_array(image: Image, channel: int | None) -> tuple[np.ndarray, str]:
    arr = image.array
    if channel is None and arr.shape[0] == 3 and arr.dtype == np.uint8:
        return np.moveaxis(arr, 0, -1), "RGB"  # (Z, Y, X, 3)
    if channel is None:
        if arr.shape[0] != 1:
            raise InvalidInputError(
                f"write_dicom_series: the image has {arr.shape[0]} channels; pass channel= "
                "to choose one (only 3-channel uint8 images are written as RGB)"
            )
        channel = 0
    if not 0 <= channel < arr.shape[0]:
        raise InvalidInputError(
            f"write_dicom_series: channel {channel} out of range for {arr.shape[0]} channels"
        )
    return arr[channel], "MONOCHROME2"


def _stored_pixels(array: np.ndarray, photometric: str) -> tuple[np.ndarray, Any, Any]:
    """Pixels as DICOM can store them, plus (slope, intercept) DS values when rescaled."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8), None, None
    if array.dtype.kind in "ui" and photometric == "RGB":
        return array, None, None
    if array.dtype.kind in "ui":
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if array.dtype.itemsize <= 2:
            return array, None, None
        if lo >= 0 and hi <= 65535:
            return array.astype(np.uint16), None, None
        if lo >= -32768 and hi <= 32767:
            return array.astype(np.int16), None, None
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InvalidInputError("write_dicom_series: the image holds NaN or infinite values")
    vmin, vmax = float(values.min()), float(values.max())
    slope = DSfloat((vmax - vmin) / 65535.0 if vmax > vmin else 1.0, auto_format=True)
    intercept = DSfloat(vmin, auto_format=True)
    # Quantise with the values as written, so reading applies exactly the same mapping.
    stored = np.rint((values - float(intercept)) / float(slope))
    return np.clip(stored, 0, 65535).astype(np.uint16), slope, intercept


def _reference_uids(reference: Image | Dataset | None) -> tuple[str | None, str | None]:
    if reference is None:
        return None, None
    if isinstance(reference, Image):
        return (
            reference.metadata.get("study_instance_uid"),
            reference.metadata.get("frame_of_reference_uid"),
        )
    return (
        str(reference.StudyInstanceUID) if "StudyInstanceUID" in reference else None,
        str(reference.FrameOfReferenceUID) if "FrameOfReferenceUID" in reference else None,
    )


def _ds_list(values: Iterable[float]) -> list[DSfloat]:
    return [DSfloat(float(v) + 0.0, auto_format=True) for v in values]
