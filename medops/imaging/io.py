"""One entry point per source: :func:`read_image` (paths), :func:`read_image_bytes` (uploads).

The format is sniffed from the content (magic numbers), with the file name used only where
content cannot decide (an Analyze ``.img`` is raw voxels). Unknown content is
:class:`UnsupportedMediaTypeError` (415); a known format that fails to decode is
:class:`ImageReadError` (400).
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from medops.deid import UIDMap
from medops.errors import ImageReadError, PayloadTooLargeError, UnsupportedMediaTypeError
from medops.imaging.dicom import (
    BurnedIn,
    is_dicom_bytes,
    looks_like_raw_dicom,
    read_dicom_file,
    read_dicom_series,
    read_dicom_series_bytes,
)
from medops.imaging.formats import read_nibabel, read_nrrd, read_pillow, read_tiff
from medops.imaging.image import Image

MAX_DECOMPRESSED_BYTES = 2 * 1024**3
"""Upper bound on what a gzip or ZIP upload may expand to (guards against archive bombs)."""

_SUPPORTED = "DICOM, NIfTI, Analyze, MINC, NRRD, TIFF, PNG, JPEG, or a ZIP of a DICOM series"
_SNIFF_BYTES = 600


def sniff_format(head: bytes, name: str = "") -> str | None:
    """The format of content starting with ``head`` (at least 600 bytes when available).

    Returns one of ``dicom``, ``nifti``, ``nifti-pair``, ``analyze``, ``minc``, ``nrrd``,
    ``tiff``, ``png``, ``jpeg``, ``zip``, ``gzip`` or None when nothing matches.
    """
    lower = name.lower()
    if is_dicom_bytes(head):
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"NRRD":
        return "nrrd"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] in (b"CDF\x01", b"CDF\x02") or head[:8] == b"\x89HDF\r\n\x1a\n":
        return "minc"
    if len(head) >= 348:
        size_le, size_be = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
        if 348 in (size_le, size_be):
            magic = head[344:348]
            if magic == b"n+1\x00":
                return "nifti"
            if magic == b"ni1\x00":
                return "nifti-pair"
            return "analyze"
        if 540 in (size_le, size_be) and head[4:8] in (b"n+2\x00", b"ni2\x00"):
            return "nifti" if head[4:7] == b"n+2" else "nifti-pair"
    if looks_like_raw_dicom(head) or lower.endswith(".dcm"):
        return "dicom"
    return None


def read_image(
    path: str | Path,
    *,
    deidentify: bool = True,
    series_uid: str | None = None,
    uid_map: UIDMap | None = None,
    burned_in: BurnedIn = "refuse",
) -> Image:
    """Read a medical image file, or a folder holding one DICOM series, as an :class:`Image`.

    DICOM input is de-identified by default (PS3.15 Basic Profile; see :mod:`medops.deid`),
    so ``Image.metadata`` never carries patient identifiers; ``uid_map`` keeps UID
    replacements consistent across calls; ``burned_in`` chooses to refuse or flag pixels
    declared to carry burned-in annotation. ``series_uid`` picks one series in a folder.
    """
    path = Path(path)
    name = path.name or str(path)
    if path.is_dir():
        return read_dicom_series(
            path, series_uid=series_uid, deidentify=deidentify, uid_map=uid_map, burned_in=burned_in
        )
    if not path.is_file():
        raise ImageReadError(f"{name}: no such file or folder")
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if not head:
        raise ImageReadError(f"{name}: the file is empty")
    fmt = sniff_format(head, name)
    if fmt is None and name.lower().endswith(".img"):
        partner = path.with_suffix(".hdr")
        if partner.is_file():
            with open(partner, "rb") as fh:
                fmt = sniff_format(fh.read(_SNIFF_BYTES), partner.name)
            path = partner
    if fmt == "gzip":
        fmt = _sniff_gzip(path.read_bytes(), name)
    if fmt == "dicom":
        return read_dicom_file(
            path, deidentify=deidentify, uid_map=uid_map, burned_in=burned_in, name=name
        )
    if fmt in ("nifti", "nifti-pair"):
        return read_nibabel(path, name, "nifti")
    if fmt == "analyze":
        return read_nibabel(path, name, "analyze")
    if fmt == "minc":
        return read_nibabel(path, name, "minc")
    if fmt == "nrrd":
        return read_nrrd(path, name)
    if fmt == "tiff":
        return read_tiff(path, name)
    if fmt in ("png", "jpeg"):
        return read_pillow(path, name, fmt)
    if fmt == "zip":
        return read_image_bytes(
            path.read_bytes(),
            filename=name,
            deidentify=deidentify,
            series_uid=series_uid,
            uid_map=uid_map,
            burned_in=burned_in,
        )
    raise UnsupportedMediaTypeError(f"{name}: unrecognised image format (supported: {_SUPPORTED})")


def read_image_bytes(
    data: bytes,
    *,
    filename: str | None = None,
    content_type: str | None = None,
    deidentify: bool = True,
    series_uid: str | None = None,
    uid_map: UIDMap | None = None,
    burned_in: BurnedIn = "refuse",
) -> Image:
    """Read an uploaded image held in memory: any format of :func:`read_image`, or a ZIP
    holding one DICOM series (or one image file, or an Analyze ``.hdr``/``.img`` pair).

    ``filename`` names the upload in error messages and breaks ties the content cannot;
    ``content_type`` ``application/dicom`` admits a DICOM dataset without preamble.
    """
    name = filename or "<upload>"
    if not data:
        raise ImageReadError(f"{name}: the upload is empty")
    head = data[:_SNIFF_BYTES]
    fmt = sniff_format(head, name)
    if fmt is None and (content_type or "").split(";")[0].strip().lower() == "application/dicom":
        fmt = "dicom"
    if fmt == "gzip":
        inner = _gunzip(data, name)
        inner_fmt = sniff_format(inner[:_SNIFF_BYTES], name)
        if inner_fmt != "nifti":
            raise UnsupportedMediaTypeError(
                f"{name}: a gzip file that does not hold NIfTI (supported: {_SUPPORTED})"
            )
        fmt = "nifti"
        # read what was just expanded (and checked against the size limit): decompressing
        # the upload a second time cost as much as the first
        data = inner
    if fmt == "dicom":
        return read_dicom_file(
            data, deidentify=deidentify, uid_map=uid_map, burned_in=burned_in, name=name
        )
    if fmt == "tiff":
        return read_tiff(data, name)
    if fmt in ("png", "jpeg"):
        return read_pillow(data, name, fmt)
    if fmt == "zip":
        return _read_zip(data, name, deidentify, series_uid, uid_map, burned_in)
    if fmt == "analyze" or fmt == "nifti-pair":
        raise UnsupportedMediaTypeError(
            f"{name}: an Analyze/NIfTI header needs its .img file; upload both in a ZIP"
        )
    if fmt in ("nifti", "minc", "nrrd"):
        suffix = {"nifti": ".nii", "minc": ".mnc", "nrrd": ".nrrd"}[fmt]
        with tempfile.TemporaryDirectory(prefix="medops-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            if fmt == "nrrd":
                return read_nrrd(path, name)
            return read_nibabel(path, name, fmt)
    raise UnsupportedMediaTypeError(f"{name}: unrecognised image format (supported: {_SUPPORTED})")


def _gunzip(data: bytes, name: str, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Every member of a gzip upload, expanded to at most ``limit`` bytes. One zlib call per
    member: reading a ``GzipFile`` in chunks cost a third more for a 155-slice volume.
    zlib checks each member's CRC and length; zero padding between members is skipped, as
    ``gzip`` does."""
    parts: list[bytes] = []
    left, rest = limit + 1, data
    try:
        while rest and left > 0:
            member = zlib.decompressobj(wbits=31)  # 16 + 15: a gzip header and trailer
            parts.append(member.decompress(rest, left))
            left -= len(parts[-1])
            if not member.eof and left > 0:
                raise ImageReadError(f"{name}: damaged gzip data (it ends inside a member)")
            rest = member.unused_data.lstrip(b"\0")
    except zlib.error as exc:
        raise ImageReadError(f"{name}: damaged gzip data ({exc})") from None
    if left <= 0:
        raise PayloadTooLargeError(f"{name}: expands beyond {limit} bytes")
    return b"".join(parts)


def _sniff_gzip(data: bytes, name: str) -> str:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            inner = gz.read(_SNIFF_BYTES)
    except Exception as exc:
        raise ImageReadError(f"{name}: damaged gzip data ({exc})") from None
    fmt = sniff_format(inner, name)
    if fmt not in ("nifti", "nifti-pair"):
        raise UnsupportedMediaTypeError(
            f"{name}: a gzip file that does not hold NIfTI (supported: {_SUPPORTED})"
        )
    return "nifti"


def zip_members(data: bytes, name: str) -> dict[str, bytes]:
    """The files of a ZIP upload (folders, hidden files and macOS resource forks left out),
    within :data:`MAX_DECOMPRESSED_BYTES`; every ZIP medops reads goes through here."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [
            m
            for m in archive.infolist()
            if not m.is_dir()
            and not PurePosixPath(m.filename).name.startswith(".")
            and "__MACOSX" not in m.filename
        ]
        if sum(m.file_size for m in members) > MAX_DECOMPRESSED_BYTES:
            raise PayloadTooLargeError(
                f"{name}: the ZIP expands beyond {MAX_DECOMPRESSED_BYTES} bytes"
            )
        return {m.filename: archive.read(m) for m in members}
    except PayloadTooLargeError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, zlib.error, NotImplementedError, ...
        raise ImageReadError(f"{name}: damaged ZIP archive ({exc})") from None


def _read_zip(
    data: bytes,
    name: str,
    deidentify: bool,
    series_uid: str | None,
    uid_map: UIDMap | None,
    burned_in: BurnedIn,
) -> Image:
    contents = zip_members(data, name)
    dicoms = [b for b in contents.values() if is_dicom_bytes(b[:132])]
    if dicoms:
        return read_dicom_series_bytes(
            dicoms,
            series_uid=series_uid,
            deidentify=deidentify,
            uid_map=uid_map,
            burned_in=burned_in,
            name=name,
        )
    if not contents:
        raise ImageReadError(f"{name}: the ZIP archive is empty")
    # No DICOM: one image file (or a .hdr/.img pair) read from a private temporary folder.
    with tempfile.TemporaryDirectory(prefix="medops-zip-") as tmp:
        paths = []
        for member, payload in contents.items():
            target = Path(tmp) / PurePosixPath(member).name  # flatten: no path escapes tmp
            target.write_bytes(payload)
            paths.append(target)
        primary = [p for p in paths if p.suffix.lower() != ".img"] or paths
        if len(primary) != 1:
            raise UnsupportedMediaTypeError(
                f"{name}: a ZIP must hold one DICOM series or a single image, "
                f"found {len(paths)} files without DICOM"
            )
        return read_image(primary[0], deidentify=deidentify, uid_map=uid_map, burned_in=burned_in)
