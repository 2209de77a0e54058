"""Recognising dataset layouts on disk and listing their samples.

Five layouts are understood:

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
``image-mask-folders``
    An ``images/`` and a ``masks/`` folder of 2D pictures (PNG, JPEG, TIFF, BMP) paired by file
    stem, of any sizes (Kvasir-SEG). A mask pixel is foreground at ``mask_threshold`` or above.
    No patient information exists: every image is its own group, except byte-identical images
    and the samples declared ``together`` (near-duplicate frames), which share one.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medops.data.manifest import UNKNOWN_LABEL, Kind, PatientAttrs, Sample
from medops.data.reading import (
    as_mask,
    dicom_members,
    is_dicom_file,
    is_image_name,
    is_nifti_name,
    probe_2d,
    read_2d,
    read_volume,
)
from medops.errors import DatasetError, MedopsError

LAYOUTS = ("lgg", "class-folders", "msd", "dicom-folders", "image-mask-folders")
"""The layouts :func:`detect_layout` recognises and :func:`scan` reads."""

SEGMENTATION_CLASSES = ["no_tumour", "tumour"]
MASK_CLASSES = ["background", "foreground"]
"""Sample labels of image-mask-folders: whether a mask has any foreground pixel."""
MASK_NAMES = ("mask", "mask.nii.gz", "mask.nii")
LOSSY_MASK_SUFFIXES = frozenset({".jpg", ".jpeg"})
LOSSY_MASK_THRESHOLD = 128
"""Default threshold of JPEG masks: compression spreads 0 and 255 into 0-8 and 246-255 (a
test for 255, or for non-zero, would miss or add pixels); lossless masks default to 1."""
_SAMPLES_NAMED = 3
_MAX_WORKERS = 4

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
    settings: dict[str, Any] = field(default_factory=dict)
    """How files became samples beyond the files themselves (a mask threshold, declared
    groups): part of the manifest's version, and kept in its ``info``."""


@dataclass(frozen=True)
class LayoutOptions:
    """What a task file declares about its data beyond the files: the image-mask-folders
    folder names, mask threshold and samples that must share a split."""

    images: str = "images"
    masks: str = "masks"
    mask_threshold: int | None = None
    """Foreground at this value or above; None: 128 for JPEG masks, else 1 (non-zero)."""
    together: tuple[tuple[str, ...], ...] = ()
    """Sample names (file stems) that must stay on one side of every split."""


class LayoutProblems(DatasetError):
    """Several things wrong with a dataset at once; ``problems`` pairs each message with the
    :class:`LayoutOptions` field it concerns (``images``, ``masks``, ``together[<i>]``)."""

    def __init__(self, root: Path, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__(f"{root}: " + "; ".join(message for _, message in problems))
        self.problems = list(problems)


def some(names: Iterable[str], limit: int = _SAMPLES_NAMED) -> str:
    """``a, b, c and 4 more``: a few names of a long list, sorted."""
    items = sorted(names)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


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


def _is_image_mask_folders(root: Path, options: LayoutOptions) -> bool:
    images, masks = root / options.images, root / options.masks
    return images.is_dir() and masks.is_dir() and any(_pictures(images))


def _is_class_folders(dirs: list[Path]) -> bool:
    return any(f.is_file() and is_image_name(f.name) for d in dirs for f in d.iterdir())


def detect_layout(root: Path, options: LayoutOptions | None = None) -> str:
    """Name the layout of the folder ``root``; :class:`DatasetError` if none fits.

    ``options`` name the images and masks folders when they are not ``images/``/``masks/``.
    """
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give the dataset's root folder")
    entries = _children(root)
    if not entries:
        raise DatasetError(f"{root}: empty folder, nothing to ingest")
    if _is_msd(root):
        return "msd"
    if _is_image_mask_folders(root, options or LayoutOptions()):
        return "image-mask-folders"
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
        "imagesTr/labelsTr, one DICOM series folder per patient, or an images/ folder beside "
        "a masks/ folder of the same file names)"
    )


def scan(root: Path, layout: str, hasher: Hasher, options: LayoutOptions | None = None) -> Scan:
    """The samples of ``root`` read as ``layout``; ``options`` matter to image-mask-folders
    only (the other layouts carry their folders, groups and masks in their own structure)."""
    if layout == "image-mask-folders":
        return _scan_image_mask_folders(root, hasher, options or LayoutOptions())
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


# --- image-mask folders ----------------------------------------------------------------------


def _pictures(folder: Path) -> Iterable[Path]:
    return (f for f in _children(folder) if f.is_file() and is_image_name(f.name))


@dataclass
class ImageMaskPairs:
    """The images and masks of an image-mask-folders dataset, matched by file stem."""

    pairs: dict[str, tuple[str, str]]
    """Stem -> (image, mask), paths relative to the dataset root, sorted by stem."""
    without_mask: list[str]
    without_image: list[str]
    clashes: list[str]
    """Files whose stem another file of the same folder has too (``a.png`` and ``a.jpg``)."""
    images: int
    images_dir: str
    masks_dir: str

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.images:
            out.append(("images", f"{self.images_dir}/ holds no pictures"))
        if self.without_mask:
            out.append(
                (
                    "masks",
                    f"{len(self.without_mask)} of {self.images} images have no mask in "
                    f"{self.masks_dir}/ (e.g. {some(self.without_mask)})",
                )
            )
        if self.without_image:
            out.append(
                (
                    "images",
                    f"{len(self.without_image)} masks have no image in {self.images_dir}/ "
                    f"(e.g. {some(self.without_image)})",
                )
            )
        if self.clashes:
            out.append(
                (
                    "images",
                    f"{len(self.clashes)} files share a name with another picture of their "
                    f"folder, so their pairing is ambiguous: {some(self.clashes)}",
                )
            )
        return out


def pair_image_masks(root: Path, options: LayoutOptions | None = None) -> ImageMaskPairs:
    """Match the pictures of the images and masks folders by stem; a missing folder is a
    :class:`LayoutProblems`, unpaired files are listed for the caller to report."""
    opts = options or LayoutOptions()
    missing = [
        (key, f"{name}/ is not a folder of {root}")
        for key, name in (("images", opts.images), ("masks", opts.masks))
        if not (root / name).is_dir()
    ]
    if missing:
        raise LayoutProblems(root, missing)
    clashes: list[str] = []

    def by_stem(folder: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in _pictures(root / folder):
            if f.stem in out:
                clashes.extend([f"{folder}/{out[f.stem]}", f"{folder}/{f.name}"])
            out[f.stem] = f.name
        return out

    images, masks = by_stem(opts.images), by_stem(opts.masks)
    return ImageMaskPairs(
        pairs={
            stem: (f"{opts.images}/{images[stem]}", f"{opts.masks}/{masks[stem]}")
            for stem in sorted(set(images) & set(masks))
        },
        without_mask=[images[s] for s in set(images) - set(masks)],
        without_image=[masks[s] for s in set(masks) - set(images)],
        clashes=sorted(set(clashes)),
        images=len(images),
        images_dir=opts.images,
        masks_dir=opts.masks,
    )


def default_mask_threshold(masks: Iterable[str]) -> int:
    """128 when any mask is a JPEG (lossy: its 0 and 255 arrive blurred), else 1."""
    lossy = any(Path(m).suffix.lower() in LOSSY_MASK_SUFFIXES for m in masks)
    return LOSSY_MASK_THRESHOLD if lossy else 1


def threshold_mask(mask: np.ndarray, threshold: int) -> np.ndarray:
    """A decoded mask ``(C, H, W)`` as a boolean ``(H, W)`` foreground."""
    foreground: np.ndarray = as_mask(mask) >= threshold
    return foreground


def _inspect_pair(root: Path, image: str, mask: str, threshold: int) -> tuple[int, str, str]:
    """``(label, fault, message)`` of one pair: the mask's foreground, or why the pair is
    unusable (fault ``unreadable`` or ``size``; empty when usable). Images are read to their
    header only; ``medops data validate`` decodes them in full."""
    try:
        (h, w, _), _ = probe_2d(root / image, image)
        foreground = threshold_mask(read_2d(root / mask, mask), threshold)
    except MedopsError as exc:
        return UNKNOWN_LABEL, "unreadable", str(exc)
    if foreground.shape != (h, w):
        mh, mw = foreground.shape
        return UNKNOWN_LABEL, "size", f"mask {mask} is {mh}x{mw} but image {image} is {h}x{w}"
    return int(foreground.any()), "", ""


def _groups(stems: list[str], links: Iterable[Sequence[str]]) -> dict[str, str]:
    """Each stem's group: the smallest stem it is linked to, directly or through others."""
    parent = {s: s for s in stems}

    def find(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    for link in links:
        roots = sorted(find(s) for s in link)
        for other in roots[1:]:
            parent[other] = roots[0]
    return {s: find(s) for s in stems}


def _scan_image_mask_folders(root: Path, hasher: Hasher, options: LayoutOptions) -> Scan:
    found = pair_image_masks(root, options)
    problems = found.problems()  # reported with the files' own faults, all at once
    if not found.pairs:
        raise LayoutProblems(root, problems or [("images", "no image has a mask")])
    threshold = options.mask_threshold or default_mask_threshold(m for _, m in found.pairs.values())
    stems = list(found.pairs)
    for i, group in enumerate(options.together):
        if absent := [s for s in group if s not in found.pairs]:
            problems.append(
                (f"together[{i}]", f"{', '.join(absent)} not among the images of {options.images}/")
            )

    def inspect(stem: str) -> tuple[int, str, str]:
        return _inspect_pair(root, *found.pairs[stem], threshold)

    # JPEG and PNG decoding release the GIL: threads read the masks in parallel
    with ThreadPoolExecutor(max_workers=min(_MAX_WORKERS, os.cpu_count() or 1)) as pool:
        results = dict(zip(stems, pool.map(inspect, stems), strict=True))
    unreadable = [message for _, fault, message in results.values() if fault == "unreadable"]
    mismatched = [message for _, fault, message in results.values() if fault == "size"]
    if unreadable:
        problems.append(
            ("images", f"{len(unreadable)} files cannot be read ({'; '.join(unreadable[:3])})")
        )
    if mismatched:
        problems.append(
            (
                "masks",
                f"{len(mismatched)} masks differ in size from their image "
                f"({'; '.join(mismatched[:3])})",
            )
        )
    if problems:
        raise LayoutProblems(root, problems)
    by_hash: dict[str, list[str]] = {}
    for stem in stems:
        by_hash.setdefault(hasher(found.pairs[stem][0]), []).append(stem)
    # byte-identical images are one picture: on both sides of a split they would leak
    group_of = _groups(stems, [*by_hash.values(), *options.together])
    samples = [
        Sample(stem, group_of[stem], image, mask, results[stem][0])
        for stem, (image, mask) in found.pairs.items()
    ]
    settings: dict[str, Any] = {
        "images": options.images,
        "masks": options.masks,
        "mask_threshold": threshold,
        "together": [sorted(g) for g in options.together],
    }
    return Scan(
        "image-mask-folders",
        "segmentation",
        list(MASK_CLASSES),
        samples,
        {g: {} for g in sorted(set(group_of.values()))},
        [f for pair in found.pairs.values() for f in pair],
        info=dict(settings),
        settings=settings,
    )
