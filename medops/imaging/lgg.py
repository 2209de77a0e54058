"""The LGG segmentation layout as volumes: one patient's TIFF slices stacked in slice order.

A patient folder holds ``<folder>_<n>.tif`` (256x256 RGB: pre-contrast, FLAIR, post-contrast)
and ``<folder>_<n>_mask.tif``. The slices carry no geometry; the volume gets 1 mm pixels and
a nominal slice spacing, enough to build realistic DICOM series and NIfTI volumes from it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tifffile

from medops.errors import DatasetError, ImageReadError
from medops.imaging.image import Image

LGG_SEQUENCES = ("pre-contrast", "FLAIR", "post-contrast")
"""What the three channels of an LGG slice are."""

_SLICE = re.compile(r"_(\d+)(_mask)?\.tif$")


def lgg_slice_files(patient_dir: str | Path, *, masks: bool = False) -> list[Path]:
    """The patient's slice (or mask) files in slice-number order."""
    folder = Path(patient_dir)
    if not folder.is_dir():
        raise DatasetError(f"{folder.name}: LGG patient folder not found")
    found = []
    for path in folder.glob("*.tif"):
        m = _SLICE.search(path.name)
        if m and bool(m.group(2)) == masks:
            found.append((int(m.group(1)), path))
    if not found:
        kind = "mask" if masks else "slice"
        raise DatasetError(f"{folder.name}: no LGG {kind} files (<name>_<n>.tif) in the folder")
    return [p for _, p in sorted(found)]


def _stack(files: list[Path], slice_thickness: float) -> tuple[np.ndarray, np.ndarray]:
    planes = []
    for path in files:
        try:
            planes.append(tifffile.imread(path))
        except Exception as exc:  # tifffile raises several types for damaged files
            raise ImageReadError(f"{path.name}: cannot read TIFF ({exc})") from None
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise DatasetError(f"{files[0].parent.name}: slices differ in shape {sorted(shapes)}")
    stack = np.stack(planes)  # (Z, Y, X[, 3])
    array = stack[np.newaxis] if stack.ndim == 3 else np.moveaxis(stack, -1, 0)
    return np.ascontiguousarray(array), np.diag([1.0, 1.0, slice_thickness, 1.0])


def lgg_patient_volume(patient_dir: str | Path, *, slice_thickness: float = 2.5) -> Image:
    """One LGG patient as a (3, Z, 256, 256) uint8 volume; channels are :data:`LGG_SEQUENCES`."""
    files = lgg_slice_files(patient_dir)
    array, affine = _stack(files, slice_thickness)
    meta = {"dataset": "lgg", "channels": list(LGG_SEQUENCES), "slices": int(array.shape[1])}
    return Image(array, affine, meta, "tiff")


def lgg_patient_mask(patient_dir: str | Path, *, slice_thickness: float = 2.5) -> Image:
    """The patient's tumour masks as a (1, Z, 256, 256) uint8 volume of 0/1, aligned with
    :func:`lgg_patient_volume`."""
    files = lgg_slice_files(patient_dir, masks=True)
    array, affine = _stack(files, slice_thickness)
    if array.shape[0] != 1:
        array = array[:1]
    mask = (array > 0).astype(np.uint8)
    return Image(mask, affine, {"dataset": "lgg", "slices": int(mask.shape[1])}, "tiff")
