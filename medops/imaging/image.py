"""The one image type every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Image:
    """Pixels, geometry and de-identified metadata of a 2D image or 3D volume.

    ``array`` is always 4D and channel-first: ``(channels, slices, rows, columns)``, i.e.
    ``array[c, k, j, i]``. A 2D picture has one slice; an RGB picture has three channels.

    ``affine`` (4x4) maps a voxel index ``(i, j, k, 1)`` (column, row, slice) to patient
    coordinates in millimetres, RAS+ as in NIfTI. DICOM (LPS+) is converted on read and back
    on write, so a round trip keeps it.
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    metadata: dict[str, Any] = field(default_factory=dict)
    """De-identified, JSON-serialisable attributes (modality, series description, ...)."""
    source_format: str = "unknown"
    """``dicom``, ``nifti``, ``analyze``, ``minc``, ``nrrd``, ``tiff``, ``png``, ``jpeg``."""

    def __post_init__(self) -> None:
        if self.array.ndim != 4:
            raise ValueError(f"Image.array must be 4D (C, Z, Y, X), got shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Image.affine must be 4x4, got {self.affine.shape}")

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def num_slices(self) -> int:
        return int(self.array.shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        _, z, y, x = self.array.shape
        return int(z), int(y), int(x)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm as (column, row, slice) — the lengths of the affine's columns."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(s[0]), float(s[1]), float(s[2])

    @property
    def pixel_area_mm2(self) -> float:
        sx, sy, _ = self.spacing
        return sx * sy

    @property
    def voxel_volume_ml(self) -> float:
        sx, sy, sz = self.spacing
        return sx * sy * sz / 1000.0

    def slice(self, k: int) -> np.ndarray:
        """One slice as ``(channels, rows, columns)``."""
        return self.array[:, k]
