"""Decoding the files a dataset is made of.

2D pictures (TIFF, PNG, JPEG, BMP) are decoded here with tifffile and Pillow, which is all the
LGG and class-folder layouts need; volumes (NIfTI, DICOM series) go through
:func:`medops.imaging.read_image`.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from medops.errors import ImageReadError, MedopsError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{name}: is a folder, expected an image file") from None
    except OSError as exc:
        raise ImageReadError(f"{name}: cannot read: {exc.strerror or exc}") from None


def _to_chw(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3 and arr.shape[-1] <= 4:
        return np.ascontiguousarray(np.moveaxis(arr, -1, 0))
    if arr.ndim == 3 and arr.shape[0] <= 4:
        return arr
    raise ImageReadError(f"{name}: expected a 2D image, got an array of shape {arr.shape}")


def decode_2d(data: bytes, name: str) -> np.ndarray:
    """Decode the bytes of a 2D picture to ``(C, H, W)`` (C is 1, 3 or 4), native dtype."""
    if not data:
        raise ImageReadError(f"{name}: empty file")
    suffix = Path(name).suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(io.BytesIO(data))
        else:
            from PIL import Image as PILImage

            with PILImage.open(io.BytesIO(data)) as opened:
                opened.load()
                pic: PILImage.Image = opened
                if pic.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    pic = pic.convert(
                        "RGBA" if "A" in pic.mode or "transparency" in pic.info else "RGB"
                    )
                elif pic.mode in ("1", "LA"):
                    pic = pic.convert("L")
                arr = np.asarray(pic)
    except MedopsError:
        raise
    except Exception as exc:  # every decoder failure becomes one typed error naming the file
        raise ImageReadError(f"{name}: cannot decode image: {exc}") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "buif":
        raise ImageReadError(f"{name}: unsupported pixel type {arr.dtype}")
    return _to_chw(arr, name)


def read_2d(path: Path, name: str | None = None) -> np.ndarray:
    """Read a 2D picture file as ``(C, H, W)``."""
    label = name or str(path)
    return decode_2d(read_bytes(path, label), label)


def as_mask(arr: np.ndarray) -> np.ndarray:
    """A decoded mask ``(C, H, W)`` as ``(H, W)``: several channels are merged by maximum."""
    return arr[0] if arr.shape[0] == 1 else arr.max(axis=0)


_PIL_DTYPES = {
    "1": "bool",
    "L": "uint8",
    "P": "uint8",
    "RGB": "uint8",
    "RGBA": "uint8",
    "LA": "uint8",
    "CMYK": "uint8",
    "I;16": "uint16",
    "I;16B": "uint16",
    "I": "int32",
    "F": "float32",
}
_PIL_CHANNELS = {"RGB": 3, "RGBA": 4, "CMYK": 3, "P": 3}


def probe_2d(path: Path, name: str) -> tuple[tuple[int, int, int], str]:
    """``((H, W, C), dtype)`` of a 2D picture from its header, without decoding the pixels."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                shape, dtype = tuple(page.shape), str(page.dtype)
            chw = _to_chw(np.empty(shape, dtype=np.bool_), name).shape
            return (chw[1], chw[2], chw[0]), dtype
        from PIL import Image as PILImage

        with PILImage.open(path) as pic:
            w, h = pic.size
            return (h, w, _PIL_CHANNELS.get(pic.mode, 1)), _PIL_DTYPES.get(pic.mode, pic.mode)
    except MedopsError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{name}: cannot read image header: {exc}") from None


def dicom_members(folder: Path) -> list[Path]:
    """The DICOM files directly inside ``folder`` (its subfolders hold other things)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and is_dicom_file(p)
    )


def read_volume(root: Path, rel: str) -> np.ndarray:
    """A volume's array ``(C, Z, Y, X)``: a NIfTI (or other) file via
    :func:`medops.imaging.read_image`, or the DICOM series whose files sit directly in the
    folder ``rel`` (a ``mask/`` subfolder beside them is not part of it)."""
    from medops.imaging import read_dicom_series_bytes, read_image

    path = root / rel
    if path.is_dir():
        files = dicom_members(path)
        if not files:
            raise ImageReadError(f"{rel}: no DICOM files in the folder")
        return read_dicom_series_bytes(
            [read_bytes(f, f"{rel}/{f.name}") for f in files], name=rel
        ).array
    if not path.exists():
        raise ImageReadError(f"{rel}: file not found")
    return read_image(path).array
