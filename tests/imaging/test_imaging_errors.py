"""Bad input: every damaged, empty or unknown file gives a typed error that names it."""

from __future__ import annotations

import gzip
import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from medops.errors import (
    ImageReadError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from medops.imaging import Image, read_image, read_image_bytes, write_dicom_series, write_nifti


def nifti_bytes(tmp_path: Path) -> bytearray:
    path = write_nifti(Image(np.arange(60, dtype=np.int16).reshape(1, 3, 4, 5)), tmp_path / "v.nii")
    return bytearray(path.read_bytes())


def test_truncated_dicom_from_pydicom_is_an_image_read_error(
    dicom_testfile: Callable[[str], Path],
):
    with pytest.raises(ImageReadError, match=r"MR_truncated\.dcm: cannot decode the pixel data"):
        read_image(dicom_testfile("MR_truncated.dcm"))


@pytest.mark.parametrize("keep", [300, 1000, 5000, -3000])
def test_dicom_cut_short_anywhere_is_an_image_read_error_naming_the_file(
    dicom_testfile: Callable[[str], Path], tmp_path: Path, keep: int
):
    data = dicom_testfile("CT_small.dcm").read_bytes()
    path = tmp_path / "cut_short.dcm"
    path.write_bytes(data[:keep])
    with pytest.raises(ImageReadError, match=r"cut_short\.dcm") as info:
        read_image(path)
    assert info.value.status_code == 400
    with pytest.raises(ImageReadError, match="upload-7"):
        read_image_bytes(data[:keep], filename="upload-7")


def test_dicom_without_pixel_data_says_so(dicom_testfile: Callable[[str], Path]):
    with pytest.raises(ImageReadError, match=r"rtplan\.dcm: the DICOM file holds no pixel data"):
        read_image(dicom_testfile("rtplan.dcm"))


def test_damaged_compressed_pixel_data_is_an_image_read_error(
    dicom_testfile: Callable[[str], Path], tmp_path: Path
):
    ds = pydicom.dcmread(dicom_testfile("MR_small_jp2klossless.dcm"))
    frame = bytearray(ds.PixelData)
    frame[40:] = b"\x00" * (len(frame) - 40)  # keep the item tags, wreck the codestream
    ds.PixelData = bytes(frame)
    ds.save_as(tmp_path / "wrecked_j2k.dcm")
    with pytest.raises(ImageReadError, match=r"wrecked_j2k\.dcm: cannot decode"):
        read_image(tmp_path / "wrecked_j2k.dcm")


@pytest.mark.parametrize(
    ("label", "offset", "value", "reason"),
    [
        ("datatype", 70, struct.pack("<h", 999), "data code 999"),
        ("negative-dim", 42, struct.pack("<h", -4), "negative"),
        ("vox-offset", 108, struct.pack("<f", 1e9), "Expected"),
    ],
)
def test_nifti_with_a_broken_header_is_an_image_read_error(
    tmp_path: Path, label: str, offset: int, value: bytes, reason: str
):
    raw = nifti_bytes(tmp_path)
    raw[offset : offset + len(value)] = value
    path = tmp_path / f"broken-{label}.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match=rf"broken-{label}\.nii: cannot read nifti .*{reason}"):
        read_image(path)
    with pytest.raises(ImageReadError, match=f"broken-{label}"):
        read_image_bytes(bytes(raw), filename=f"broken-{label}.nii")


def test_nifti_with_missing_voxel_data_is_an_image_read_error(tmp_path: Path):
    raw = nifti_bytes(tmp_path)
    (tmp_path / "short.nii").write_bytes(bytes(raw[:-50]))
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(bytes(raw))[:-30])
    with pytest.raises(ImageReadError, match=r"short\.nii"):
        read_image(tmp_path / "short.nii")
    with pytest.raises(ImageReadError, match=r"cut\.nii\.gz: damaged gzip"):
        read_image(tmp_path / "cut.nii.gz")


def test_gzip_uploads_expand_as_gzip_reads_them_and_bad_ones_are_refused():
    from medops.imaging.io import _gunzip

    payload = bytes(range(256)) * 400
    one = gzip.compress(payload)
    two = one + b"\0" * 7 + gzip.compress(payload[::-1]) + b"\0" * 3
    assert _gunzip(one, "a.gz") == gzip.decompress(one) == payload
    assert _gunzip(two, "b.gz") == gzip.decompress(two)
    assert _gunzip(one, "exact.gz", limit=len(payload)) == payload
    with pytest.raises(ImageReadError, match=r"cut\.gz: damaged gzip data \(it ends inside"):
        _gunzip(one[:-30], "cut.gz")
    wrong_crc = bytearray(one)
    wrong_crc[-8] ^= 0xFF  # the trailer: CRC-32, then the length
    with pytest.raises(ImageReadError, match=r"crc\.gz: damaged gzip data \(.*check"):
        _gunzip(bytes(wrong_crc), "crc.gz")
    with pytest.raises(ImageReadError, match=r"tail\.gz: damaged gzip data"):
        _gunzip(one + b"not gzip", "tail.gz")
    with pytest.raises(PayloadTooLargeError, match=r"bomb\.gz: expands beyond 1000 bytes"):
        _gunzip(one, "bomb.gz", limit=1000)


@pytest.mark.parametrize("shape", [(7,), (2, 2, 2, 2, 2, 2), (3, 3, 3, 2, 2)])
def test_nifti_with_wrong_dimensions_is_an_image_read_error(tmp_path: Path, shape):
    import nibabel as nib

    path = tmp_path / "odd.nii"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), path)
    with pytest.raises(ImageReadError, match=r"odd\.nii: wrong dimensions"):
        read_image(path)


@pytest.mark.parametrize(
    ("payload", "filename"),
    [
        (b"patient notes, definitely not pixels\n" * 30, "notes.txt"),
        (b"%PDF-1.4\n" + bytes(range(256)) * 4, "report.pdf"),
        (b"\x00" * 2000, "zeros.bin"),
        (gzip.compress(b"plain text inside gzip" * 50), "archive.gz"),
    ],
)
def test_non_image_bytes_are_unsupported_media_naming_the_upload(payload: bytes, filename: str):
    with pytest.raises(UnsupportedMediaTypeError, match=filename) as info:
        read_image_bytes(payload, filename=filename)
    assert info.value.status_code == 415


def test_non_image_file_on_disk_is_unsupported_media(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("not an image " * 100)
    with pytest.raises(UnsupportedMediaTypeError, match=r"readme\.txt: unrecognised"):
        read_image(tmp_path / "readme.txt")


@pytest.mark.parametrize(
    ("make", "filename", "reason"),
    [
        ("png", "cut.png", "cannot read PNG"),
        ("jpeg", "cut.jpg", "cannot read JPEG"),
        ("tiff", "cut.tif", "cannot read TIFF"),
        ("zip", "bad.zip", "damaged ZIP"),
        ("nrrd", "bad.nrrd", "cannot read NRRD"),
        ("minc", "bad.mnc", "cannot read minc"),
    ],
)
def test_known_format_with_damaged_content_is_an_image_read_error(
    make: str, filename: str, reason: str
):
    buffer = io.BytesIO()
    if make in ("png", "jpeg"):
        picture = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        PILImage.fromarray(picture).save(buffer, format=make.upper())
        payload = buffer.getvalue()[:300]
    else:
        payload = {
            "tiff": b"II*\x00" + b"\x00" * 20,
            "zip": b"PK\x03\x04" + b"\x00" * 100,
            "nrrd": b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2\nencoding: raw\n\n"
            + b"\0" * 8,
            "minc": b"\x89HDF\r\n\x1a\n" + b"\x00" * 500,
        }[make]
    with pytest.raises(ImageReadError, match=f"{filename}: {reason}") as info:
        read_image_bytes(payload, filename=filename)
    assert info.value.status_code == 400


def test_empty_inputs_are_image_read_errors_naming_them(tmp_path: Path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "no_dicom").mkdir()
    (tmp_path / "no_dicom" / "README").write_text("nothing here")

    with pytest.raises(ImageReadError, match=r"empty\.dcm: the file is empty"):
        read_image(tmp_path / "empty.dcm")
    with pytest.raises(ImageReadError, match="empty_folder: no DICOM files"):
        read_image(tmp_path / "empty_folder")
    with pytest.raises(ImageReadError, match="no_dicom: no DICOM files"):
        read_image(tmp_path / "no_dicom")
    with pytest.raises(ImageReadError, match=r"upload\.dcm: the upload is empty"):
        read_image_bytes(b"", filename="upload.dcm")
    with pytest.raises(ImageReadError, match=r"missing\.nii: no such file"):
        read_image(tmp_path / "missing.nii")


def test_series_mixing_slice_sizes_is_an_image_read_error(tmp_path: Path):
    series = tmp_path / "mixed_series"
    write_dicom_series(Image(np.zeros((1, 3, 8, 8), np.int16)), series)
    write_dicom_series(Image(np.zeros((1, 1, 6, 6), np.int16)), tmp_path / "other")
    stray = pydicom.dcmread(next((tmp_path / "other").iterdir()))
    stray.SeriesInstanceUID = pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
    stray.ImagePositionPatient = [0, 0, -50]
    stray.save_as(series / "stray.dcm")

    with pytest.raises(ImageReadError, match=r"mixed_series: slices differ in size"):
        read_image(series)


def test_series_with_duplicate_slice_positions_is_refused(tmp_path: Path):
    paths = write_dicom_series(Image(np.zeros((1, 2, 4, 4), np.int16)), tmp_path / "dups")
    copy = pydicom.dcmread(paths[0])
    copy.SOPInstanceUID = pydicom.uid.generate_uid()
    copy.save_as(tmp_path / "dups" / "copy.dcm")
    with pytest.raises(ImageReadError, match="dups: several files share one slice position"):
        read_image(tmp_path / "dups")


def test_analyze_header_alone_is_refused_as_an_upload(tmp_path: Path):
    raw = nifti_bytes(tmp_path)[:348]
    raw[344:348] = b"ni1\x00"
    with pytest.raises(UnsupportedMediaTypeError, match=r"scan\.hdr: .*needs its \.img"):
        read_image_bytes(bytes(raw), filename="scan.hdr")


def test_upload_errors_do_not_reveal_server_paths(tmp_path: Path):
    raw = nifti_bytes(tmp_path)
    with pytest.raises(ImageReadError) as info:
        read_image_bytes(bytes(raw[:-50]), filename="scan.nii")
    assert "scan.nii" in info.value.message
    assert "/" not in info.value.message.replace("scan.nii", "")
