"""Recognising dataset layouts on disk and listing their samples.

Four layouts are understood:

``lgg``
    One folder per patient (``TCGA_<inst>_<id>_<date>/``) of 2D slices ``<case>_<n>.tif`` and
    masks ``<case>_<n>_mask.tif``, plus an optional ``data.csv`` of clinical attributes.
``class-folders``
    One folder per class of 2D pictures (PNG, JPEG, TIFF, BMP). No patient information
    exists, so every distinct picture is its own "patient"; byte-identical copies share one
    patient id so a split can never put them on both sides.
``msd``
    Medical Segmentation Decathlon: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/`` NIfTI
    volumes, each axial slice a sample; the foreground is every non-zero label.
``dicom-folders``
    One DICOM series per patient folder (the files directly in it); an optional mask per
    patient as a ``mask/`` DICOM series or a ``mask.nii[.gz]`` volume of the same geometry.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medops.data.manifest import UNKNOWN_LABEL, Kind, PatientAttrs, Sample
from medops.data.reading import (
    as_mask,
    dicom_members,
    is_dicom_file,
    is_image_name,
    is_nifti_name,
    read_2d,
    read_volume,
)
from medops.errors import DatasetError, MedopsError

LAYOUTS = ("lgg", "class-folders", "msd", "dicom-folders")
"""The layouts :func:`detect_layout` recognises and :func:`scan` reads."""

SEGMENTATION_CLASSES = ["no_tumour", "tumour"]
MASK_NAMES = ("mask", "mask.nii.gz", "mask.nii")

Hasher = Callable[[str], str]
"""Returns the sha256 of a file given its path relative to the dataset root."""


@dataclass
class Scan:
    layout: str
    kind: Kind
    classes: list[str]
    samples: list[Sample]
    patients: dict[str, PatientAttrs]
    files: list[str]
    """Every file the dataset depends on (relative paths); all of them are hashed."""
    info: dict[str, Any] = field(default_factory=dict)


def visible(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.startswith("__")


def _children(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if visible(p))


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


_LGG_SLICE = re.compile(r"^(?P<case>.+)_(?P<n>\d+)\.tiff?$", re.IGNORECASE)
_LGG_MASK = re.compile(r"^(?P<case>.+)_(?P<n>\d+)_mask\.tiff?$", re.IGNORECASE)
_TCGA = re.compile(r"^TCGA_(?P<inst>[A-Z0-9]{2})_[A-Z0-9]{4}", re.IGNORECASE)


def _is_lgg(root: Path, dirs: list[Path]) -> bool:
    return any(_LGG_MASK.match(f.name) for d in dirs for f in d.iterdir())


def _is_msd(root: Path) -> bool:
    return (root / "dataset.json").is_file() or (root / "imagesTr").is_dir()


def _is_dicom_folders(dirs: list[Path]) -> bool:
    for d in dirs:
        files = [f for f in _children(d) if f.is_file()]
        if any(is_dicom_file(f) for f in files[:4]):
            return True
    return False


def _is_class_folders(dirs: list[Path]) -> bool:
    return any(f.is_file() and is_image_name(f.name) for d in dirs for f in d.iterdir())


def detect_layout(root: Path) -> str:
    """Name the layout of the folder ``root``; :class:`DatasetError` if none fits."""
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give the dataset's root folder")
    entries = _children(root)
    if not entries:
        raise DatasetError(f"{root}: empty folder, nothing to ingest")
    if _is_msd(root):
        return "msd"
    dirs = [d for d in entries if d.is_dir()]
    if dirs and _is_lgg(root, dirs):
        return "lgg"
    if dirs and _is_dicom_folders(dirs):
        return "dicom-folders"
    if dirs and _is_class_folders(dirs):
        return "class-folders"
    raise DatasetError(
        f"{root}: no known dataset layout (expected LGG patient folders of *_N.tif + "
        "*_N_mask.tif, one folder of pictures per class, an MSD dataset.json with "
        "imagesTr/labelsTr, or one DICOM series folder per patient)"
    )


def scan(root: Path, layout: str, hasher: Hasher) -> Scan:
    scanners = {
        "lgg": _scan_lgg,
        "class-folders": _scan_class_folders,
        "msd": _scan_msd,
        "dicom-folders": _scan_dicom_folders,
    }
    return scanners[layout](root, hasher)


# --- LGG -------------------------------------------------------------------------------------


def _cell(value: str) -> str | float | None:
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _read_clinical(path: Path) -> dict[str, PatientAttrs]:
    """data.csv rows by patient id; ``sex`` (raw code) and ``age`` added as plain names."""
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path.name}: unreadable clinical table ({exc})") from None
    out: dict[str, PatientAttrs] = {}
    for row in rows:
        pid = (row.get("Patient") or "").strip()
        if not pid:
            continue
        attrs: PatientAttrs = {k: _cell(v or "") for k, v in row.items() if k and k != "Patient"}
        sex = (row.get("gender") or "").strip()
        attrs["sex"] = sex or None
        attrs["age"] = _cell(row.get("age_at_initial_pathologic") or "")
        out[pid] = attrs
    return out


def lgg_patient_id(folder: str) -> str:
    """``TCGA_CS_4942_19970222`` -> ``TCGA_CS_4942`` (the id data.csv uses)."""
    m = _TCGA.match(folder)
    return m.group(0) if m else folder


def _mask_label(path: Path, name: str) -> int:
    try:
        return int(bool(as_mask(read_2d(path, name)).any()))
    except MedopsError:
        return UNKNOWN_LABEL  # unreadable: validation reports it


def _scan_lgg(root: Path, hasher: Hasher) -> Scan:
    clinical = _read_clinical(root / "data.csv")
    samples: list[Sample] = []
    patients: dict[str, PatientAttrs] = {}
    files: list[str] = ["data.csv"] if (root / "data.csv").is_file() else []
    for folder in (d for d in _children(root) if d.is_dir()):
        slices: dict[int, str] = {}
        masks: dict[int, str] = {}
        for f in _children(folder):
            if m := _LGG_MASK.match(f.name):
                masks[int(m["n"])] = f.name
            elif m := _LGG_SLICE.match(f.name):
                slices[int(m["n"])] = f.name
        if not slices:
            continue
        pid = lgg_patient_id(folder.name)
        attrs: PatientAttrs = {"institution": None}
        if inst := _TCGA.match(folder.name):
            attrs["institution"] = inst["inst"].upper()
        attrs.update(clinical.get(pid, {}))
        patients[pid] = attrs
        for n in sorted(slices):
            image = f"{folder.name}/{slices[n]}"
            files.append(image)
            mask = f"{folder.name}/{masks[n]}" if n in masks else None
            label = UNKNOWN_LABEL
            if mask is not None:
                files.append(mask)
                label = _mask_label(root / mask, mask)
            samples.append(Sample(f"{folder.name}/{n}", pid, image, mask, label))
    if not samples:
        raise DatasetError(f"{root}: LGG layout without any slice images")
    return Scan("lgg", "segmentation", list(SEGMENTATION_CLASSES), samples, patients, files)


# --- class folders ---------------------------------------------------------------------------


def _scan_class_folders(root: Path, hasher: Hasher) -> Scan:
    classes = [d.name for d in _children(root) if d.is_dir()]
    samples: list[Sample] = []
    files: list[str] = []
    first_by_hash: dict[str, str] = {}
    for label, cls in enumerate(classes):
        for f in _children(root / cls):
            if not (f.is_file() and is_image_name(f.name)):
                continue  # left for validation to report
            rel = f"{cls}/{f.name}"
            files.append(rel)
            # byte-identical copies are one "patient" so a split keeps them together
            pid = first_by_hash.setdefault(hasher(rel), rel)
            samples.append(Sample(rel, pid, rel, None, label))
    if not samples:
        raise DatasetError(f"{root}: class folders hold no pictures")
    patients: dict[str, PatientAttrs] = {s.patient_id: {} for s in samples}
    return Scan("class-folders", "classification", classes, samples, patients, files)


# --- volumes (MSD, DICOM folders) -------------------------------------------------------------


def _volume_samples(
    root: Path, pid: str, image: str, mask: str | None, samples: list[Sample]
) -> None:
    """One sample per slice of the volume; labels from the mask's per-slice foreground."""
    volume = read_volume(root, image)
    depth = volume.shape[1]
    labels = [UNKNOWN_LABEL] * depth
    if mask is not None:
        try:
            seg = read_volume(root, mask)
        except MedopsError:
            seg = None  # unreadable: validation reports it
        if seg is not None and seg.shape[1] == depth:
            labels = [int(v) for v in (seg != 0).reshape(seg.shape[0], depth, -1).any(axis=(0, 2))]
    for k in range(depth):
        samples.append(Sample(f"{pid}/{k}", pid, image, mask, labels[k], slice_index=k))


def _strip_nifti(name: str) -> str:
    lower = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _msd_pairs(root: Path, info: dict[str, Any]) -> list[tuple[str, str | None]]:
    training = info.get("training")
    if isinstance(training, list) and training:
        pairs: list[tuple[str, str | None]] = []
        for i, entry in enumerate(training):
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                raise DatasetError(f"dataset.json: training[{i}] has no image path")
            image = Path(entry["image"]).as_posix().removeprefix("./")
            label = entry.get("label")
            mask = Path(label).as_posix().removeprefix("./") if isinstance(label, str) else None
            if not (root / image).is_file():
                raise DatasetError(f"dataset.json lists {image}, which does not exist")
            pairs.append((image, mask if mask and (root / mask).is_file() else None))
        return pairs
    images = root / "imagesTr"
    if not images.is_dir():
        raise DatasetError(f"{root}: MSD layout without imagesTr/")
    pairs = []
    for f in _children(images):
        if f.is_file() and is_nifti_name(f.name):
            label = root / "labelsTr" / f.name
            pairs.append((f"imagesTr/{f.name}", f"labelsTr/{f.name}" if label.is_file() else None))
    return pairs


def _scan_msd(root: Path, hasher: Hasher) -> Scan:
    import json

    info: dict[str, Any] = {}
    files: list[str] = []
    if (root / "dataset.json").is_file():
        files.append("dataset.json")
        try:
            info = json.loads((root / "dataset.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"dataset.json: unreadable ({exc})") from None
        if not isinstance(info, dict):
            raise DatasetError("dataset.json: expected a JSON object")
    pairs = _msd_pairs(root, info)
    if not pairs:
        raise DatasetError(f"{root}: MSD layout without training volumes")
    samples: list[Sample] = []
    patients: dict[str, PatientAttrs] = {}
    for image, mask in sorted(pairs):
        pid = _strip_nifti(Path(image).name)
        patients[pid] = {}
        files.append(image)
        if mask is not None:
            files.append(mask)
        _volume_samples(root, pid, image, mask, samples)
    keep = ("name", "description", "modality", "labels", "tensorImageSize", "reference")
    return Scan(
        "msd",
        "segmentation",
        list(SEGMENTATION_CLASSES),
        samples,
        patients,
        files,
        info={k: info[k] for k in keep if k in info},
    )


def _scan_dicom_folders(root: Path, hasher: Hasher) -> Scan:
    samples: list[Sample] = []
    patients: dict[str, PatientAttrs] = {}
    files: list[str] = []
    for folder in (d for d in _children(root) if d.is_dir()):
        members = dicom_members(folder)
        if not members:
            continue
        mask = next(
            (f"{folder.name}/{n}" for n in MASK_NAMES if (folder / n).exists()),
            None,
        )
        files.extend(_rel(root, f) for f in members)
        if mask is not None:
            m = root / mask
            files.extend(_rel(root, f) for f in ([m] if m.is_file() else sorted(m.rglob("*"))))
        patients[folder.name] = {}
        _volume_samples(root, folder.name, folder.name, mask, samples)
    if not samples:
        raise DatasetError(f"{root}: no DICOM series found in the patient folders")
    files = [f for f in files if (root / f).is_file()]
    return Scan(
        "dicom-folders", "segmentation", list(SEGMENTATION_CLASSES), samples, patients, files
    )
