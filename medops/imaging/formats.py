"""Readers for NIfTI, Analyze, MINC (nibabel), NRRD (pynrrd), TIFF, PNG and JPEG.

Each reader returns an :class:`Image` with the array channel-first ``(C, Z, Y, X)`` and the
affine mapping ``(i, j, k)`` to RAS+ millimetres. Every library failure becomes an
:class:`ImageReadError` that names the file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from medops.errors import ImageReadError, InvalidInputError
from medops.imaging.image import Image


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def xyz_to_image_array(data: np.ndarray, name: str) -> np.ndarray:
    """A nibabel/NRRD-ordered array ``(X, Y[, Z[, C]])`` -> ``(C, Z, Y, X)``."""
    if data.dtype.names:  # NIfTI RGB24/RGBA32 arrive as structured arrays: fields are channels
        data = np.stack([data[n] for n in data.dtype.names], axis=-1)
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector data: (X, Y, Z, 1, C)
        data = data[:, :, :, 0, :]
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    if data.ndim == 3:
        data = data[..., np.newaxis]
    if data.ndim != 4:
        raise ImageReadError(
            f"{name}: wrong dimensions {data.shape}: expected 2D, 3D, or 3D with one "
            "channel/time axis"
        )
    if 0 in data.shape:
        raise ImageReadError(f"{name}: wrong dimensions {data.shape}: an axis has length 0")
    return np.ascontiguousarray(data.transpose(3, 2, 1, 0))


# ----------------------------------------------------------------------------- nibabel


def read_nibabel(path: Path, name: str, source_format: str) -> Image:
    """NIfTI-1/2 (.nii, .nii.gz, .hdr/.img pairs), Analyze 7.5 and MINC 1/2 through nibabel."""
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except ImageReadError:
        raise
    except Exception as exc:  # nibabel raises HeaderDataError, ImageFileError, EOFError, ...
        reason = _short(exc).replace(str(path), name)  # no server paths in messages
        raise ImageReadError(f"{name}: cannot read {source_format} ({reason})") from None
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ImageReadError(f"{name}: the {source_format} header gives no valid affine")
    array = xyz_to_image_array(np.asarray(data), name)
    meta: dict[str, Any] = {"slices": int(array.shape[1])}
    header = getattr(img, "header", None)
    if source_format == "nifti" and header is not None:
        meta["qform_code"] = int(header["qform_code"])
        meta["sform_code"] = int(header["sform_code"])
        xyz_unit, _ = header.get_xyzt_units()
        meta["spatial_unit"] = str(xyz_unit)
    return Image(array, affine, meta, source_format)


def write_nifti(image: Image, path: str | Path) -> Path:
    """Write ``image`` as NIfTI-1 (``.nii`` or ``.nii.gz``); several channels go on axis 4.

    The affine is stored as both sform and qform (code "scanner"), so nibabel, ITK and FSL
    read back the same geometry.
    """
    import nibabel as nib

    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise InvalidInputError(f"{path.name}: a NIfTI file name ends in .nii or .nii.gz")
    data = image.array
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    xyz = data.transpose(3, 2, 1, 0)  # (X, Y, Z, C)
    if xyz.shape[3] == 1:
        xyz = xyz[..., 0]
    nii = nib.Nifti1Image(np.ascontiguousarray(xyz), image.affine)
    nii.header.set_xyzt_units("mm")
    nii.set_sform(image.affine, code=1)
    nii.set_qform(image.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nii, str(path))
    return path


# ----------------------------------------------------------------------------- NRRD

_SPACE_TO_RAS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}


def read_nrrd(path: Path, name: str) -> Image:
    """NRRD (attached or detached data); ``space directions``/``space origin`` give the affine."""
    import nrrd

    try:
        data, header = nrrd.read(str(path))
    except Exception as exc:  # pynrrd raises NRRDError, ValueError, OSError, ...
        reason = _short(exc).replace(str(path), name)
        raise ImageReadError(f"{name}: cannot read NRRD ({reason})") from None
    ndim = data.ndim
    directions = header.get("space directions")
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * ndim)]
    spatial = [
        a
        for a in range(ndim)
        if kinds[a] in ("domain", "space")
        and (directions is None or np.all(np.isfinite(np.asarray(directions)[a])))
    ]
    other = [a for a in range(ndim) if a not in spatial]
    if not 2 <= len(spatial) <= 3 or len(other) > 1:
        raise ImageReadError(
            f"{name}: wrong dimensions {data.shape} (kinds {kinds}): expected 2 or 3 spatial "
            "axes and at most one channel axis"
        )
    arr = np.moveaxis(data, spatial + other, range(ndim))  # (X, Y[, Z][, C])
    if len(spatial) == 2:
        arr = arr[:, :, np.newaxis] if not other else arr[:, :, np.newaxis, :]
    affine = np.eye(4)
    if directions is not None:
        dirs = np.asarray(directions, dtype=np.float64)[spatial]
        space_dim = dirs.shape[1]
        affine[:space_dim, : len(spatial)] = dirs.T
        origin = header.get("space origin")
        if origin is not None:
            affine[:space_dim, 3] = np.asarray(origin, dtype=np.float64)
        flip = _SPACE_TO_RAS.get(str(header.get("space", "")).lower(), (1.0, 1.0, 1.0))
        affine = np.diag([*flip, 1.0]) @ affine
    elif header.get("spacings") is not None:
        spacings = np.asarray(header["spacings"], dtype=np.float64)[spatial]
        affine[np.arange(len(spatial)), np.arange(len(spatial))] = np.nan_to_num(spacings, nan=1.0)
    if not np.all(np.isfinite(affine)):
        raise ImageReadError(f"{name}: the NRRD header gives no valid geometry")
    array = xyz_to_image_array(arr if other else arr[..., np.newaxis], name)
    return Image(array, affine, {"slices": int(array.shape[1])}, "nrrd")


# ----------------------------------------------------------------------------- rasters


def read_tiff(source: Path | bytes, name: str) -> Image:
    """TIFF: samples (or a small C axis) become channels, any other leading axes become slices."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(source) if isinstance(source, bytes) else source) as tif:
            if not tif.series or not tif.pages:
                raise ValueError("the file holds no image")
            series = tif.series[0]
            axes = series.axes
            data = series.asarray()
            page: Any = tif.pages[0]
            unit = page.tags.get("ResolutionUnit")
            xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
            unit_value = int(unit.value) if unit is not None else 1
            res = (xres.value, yres.value) if xres is not None and yres is not None else None
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise ImageReadError(f"{name}: cannot read TIFF ({_short(exc)})") from None
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"{name}: wrong dimensions: TIFF axes {axes!r} lack Y or X")
    chan_axis = next(
        (axes.index(a) for a in "SC" if a in axes and data.shape[axes.index(a)] <= 4), None
    )
    order = [i for i, a in enumerate(axes) if a not in "YX" and i != chan_axis]
    order += [axes.index("Y"), axes.index("X")]
    if chan_axis is not None:
        order = [chan_axis, *order]
    arr = data.transpose(order)
    if chan_axis is None:
        arr = arr[np.newaxis]
    arr = arr.reshape(arr.shape[0], -1, arr.shape[-2], arr.shape[-1])  # (C, Z, Y, X)
    affine = np.eye(4)
    if unit_value == 3 and res is not None:  # centimetre: pixels per cm -> mm per pixel
        affine[0, 0] = 10.0 * res[0][1] / res[0][0]
        affine[1, 1] = 10.0 * res[1][1] / res[1][0]
    if 0 in arr.shape:
        raise ImageReadError(f"{name}: wrong dimensions {data.shape}: an axis has length 0")
    return Image(np.ascontiguousarray(arr), affine, {"slices": int(arr.shape[1])}, "tiff")


def read_pillow(source: Path | bytes, name: str, source_format: str) -> Image:
    """PNG/JPEG (and other Pillow formats): grey -> 1 channel, colour -> 3 (alpha dropped)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(source) if isinstance(source, bytes) else source) as pic:
            pic.load()
            mode = pic.mode
            plain: PILImage.Image = pic
            if mode in ("1", "LA", "La"):
                plain = pic.convert("L")
            elif mode not in ("L", "I", "F", "RGB") and not mode.startswith("I;16"):
                plain = pic.convert("RGB")  # palette, RGBA, CMYK, YCbCr: colour without alpha
            data = np.asarray(plain)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageReadError(
            f"{name}: cannot read {source_format.upper()} ({_short(exc)})"
        ) from None
    arr = (
        data[np.newaxis, np.newaxis] if data.ndim == 2 else np.moveaxis(data, -1, 0)[:, np.newaxis]
    )
    if 0 in arr.shape:
        raise ImageReadError(f"{name}: wrong dimensions {data.shape}: the picture is empty")
    return Image(np.ascontiguousarray(arr), np.eye(4), {"slices": 1, "mode": mode}, source_format)
