"""DICOM reading and writing on real files: series round trips, multi-frame, compressed syntaxes."""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medops.errors import InvalidInputError, PHIError
from medops.imaging import (
    Image,
    list_dicom_series,
    read_dicom_series_bytes,
    read_image,
    read_image_bytes,
    write_dicom_series,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def oblique_affine(angles_deg: tuple[float, float, float], spacing: tuple[float, float, float]):
    """A rotation about x, y and z (in that order) scaled by ``spacing``, shifted off the origin."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    affine[:3, 3] = [12.5, -40.0, 73.25]
    return affine


def test_lgg_volume_written_as_dicom_series_reads_back_with_same_array_and_affine(
    lgg_volume: Image, tmp_path: Path
):
    paths = write_dicom_series(lgg_volume, tmp_path / "series", series_description="LGG")
    assert len(paths) == lgg_volume.num_slices

    back = read_image(tmp_path / "series")

    assert back.source_format == "dicom"
    assert back.array.dtype == np.uint8
    assert np.array_equal(back.array, lgg_volume.array)
    assert np.allclose(back.affine, lgg_volume.affine)
    assert back.spacing == pytest.approx((1.0, 1.0, 2.5))


def test_oblique_float_volume_round_trips_through_dicom_within_one_rescale_step(tmp_path: Path):
    affine = oblique_affine((20.0, -35.0, 50.0), (0.9, 1.1, 2.5))
    rng = np.random.default_rng(7)
    array = rng.normal(300.0, 80.0, size=(1, 6, 20, 24)).astype(np.float32)
    write_dicom_series(Image(array, affine), tmp_path / "oblique", modality="CT")

    back = read_image(tmp_path / "oblique")

    step = (array.max() - array.min()) / 65535
    assert back.array.dtype == np.float32
    assert back.metadata["rescaled"] is True
    assert np.allclose(back.array, array, atol=step)
    assert np.allclose(back.affine, affine, atol=1e-6)
    # The files really carry the oblique geometry, converted to LPS.
    ds = pydicom.dcmread(sorted((tmp_path / "oblique").iterdir())[0])
    lps = np.linalg.inv(LPS_TO_RAS) @ affine
    assert np.allclose(np.array(ds.ImagePositionPatient, float), lps[:3, 3], atol=1e-6)
    row_dir = lps[:3, 0] / np.linalg.norm(lps[:3, 0])
    assert np.allclose(np.array(ds.ImageOrientationPatient, float)[:3], row_dir, atol=1e-6)
    assert float(ds.SpacingBetweenSlices) == pytest.approx(2.5)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([1.1, 0.9])


def test_series_whose_slices_run_against_the_normal_keeps_its_slice_order(tmp_path: Path):
    affine = oblique_affine((0.0, 15.0, 0.0), (0.8, 0.8, 3.0))
    affine[:3, 2] *= -1  # k runs opposite to the row x column normal
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(1, 4, 5, 6) - 50
    write_dicom_series(Image(array, affine), tmp_path / "s")

    back = read_image(tmp_path / "s")

    assert back.array.dtype == np.int16
    assert np.array_equal(back.array, array)
    assert np.allclose(back.affine, affine, atol=1e-6)


def test_series_files_in_shuffled_order_are_stacked_by_image_position(
    lgg_volume: Image, tmp_path: Path
):
    flair = Image(lgg_volume.array[1:2], lgg_volume.affine)
    paths = write_dicom_series(flair, tmp_path / "src")
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    names = [f"img{n:03d}" for n in random.Random(3).sample(range(100), len(paths))]
    for path, new_name in zip(paths, names, strict=True):
        ds = pydicom.dcmread(path)
        del ds.InstanceNumber  # only the position can order them now
        ds.save_as(shuffled / new_name)

    back = read_image(shuffled)

    assert np.array_equal(back.array, flair.array)
    assert np.allclose(back.affine, flair.affine)


def test_one_channel_of_a_multichannel_image_is_written_when_chosen(
    lgg_volume: Image, tmp_path: Path
):
    write_dicom_series(lgg_volume, tmp_path / "flair", channel=1)
    back = read_image(tmp_path / "flair")
    assert back.channels == 1
    assert np.array_equal(back.array[0], lgg_volume.array[1])


def test_multichannel_non_rgb_image_needs_a_channel_choice(tmp_path: Path):
    image = Image(np.zeros((2, 3, 4, 4), np.int16))
    with pytest.raises(InvalidInputError, match="2 channels"):
        write_dicom_series(image, tmp_path / "x")


def test_multi_frame_file_gives_one_slice_per_frame(dicom_testfile: Callable[[str], Path]):
    path = dicom_testfile("emri_small.dcm")
    raw = pydicom.dcmread(path).pixel_array  # (10, 64, 64)

    image = read_image(path)

    assert image.array.shape == (1, 10, 64, 64)
    assert np.array_equal(image.array[0], raw)


def test_enhanced_multi_frame_uses_per_frame_positions_and_rescale(
    dicom_testfile: Callable[[str], Path],
):
    path = dicom_testfile("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    positions = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in frames]
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    intercept = float(shared.PixelValueTransformationSequence[0].RescaleIntercept)
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort([p @ normal for p in positions])

    image = read_image(path)

    assert image.array.shape == (1, 2, 512, 512)
    assert image.array.dtype == np.float32
    assert np.array_equal(image.array[0], ds.pixel_array[order] + intercept)
    first_ras = LPS_TO_RAS[:3, :3] @ positions[order[0]]
    assert np.allclose(image.affine[:3, 3], first_ras)
    step_ras = LPS_TO_RAS[:3, :3] @ (positions[order[1]] - positions[order[0]])
    assert np.allclose(image.affine[:3, 2], step_ras)


def test_ct_rescale_slope_and_intercept_give_float32_hounsfield_units(
    dicom_testfile: Callable[[str], Path],
):
    path = dicom_testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)

    image = read_image(path)

    assert image.array.dtype == np.float32
    assert np.array_equal(image.array[0, 0], expected.astype(np.float32))
    assert image.spacing[:2] == pytest.approx([float(v) for v in ds.PixelSpacing][::-1])


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
        ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
        ("693_J2KR.dcm", "693_UNCR.dcm"),
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),
    ],
)
def test_lossless_compressed_transfer_syntax_decodes_to_the_uncompressed_pixels(
    dicom_testfile: Callable[[str], Path], compressed: str, reference: str
):
    packed = read_image(dicom_testfile(compressed))
    plain = read_image(dicom_testfile(reference))
    syntax = pydicom.dcmread(dicom_testfile(compressed)).file_meta.TransferSyntaxUID
    assert syntax.is_compressed
    assert np.array_equal(packed.array, plain.array)


def test_jpeg_baseline_rgb_decodes_close_to_the_uncompressed_original(
    dicom_testfile: Callable[[str], Path],
):
    lossy = read_image(dicom_testfile("SC_rgb_jpeg_dcmtk.dcm"))
    plain = read_image(dicom_testfile("SC_rgb.dcm"))
    assert lossy.array.shape == plain.array.shape == (3, 1, 100, 100)
    diff = np.abs(lossy.array.astype(int) - plain.array.astype(int))
    assert diff.mean() < 2 and diff.max() <= 10  # lossy, but the same picture


def test_dicom_metadata_is_json_and_carries_only_remapped_uids(
    dicom_testfile: Callable[[str], Path],
):
    path = dicom_testfile("MR_small.dcm")
    ds = pydicom.dcmread(path)

    image = read_image(path)
    text = json.dumps(image.metadata)

    assert image.metadata["modality"] == "MR"
    assert image.metadata["deidentified"] is True
    assert image.metadata["study_instance_uid"].startswith("2.25.")
    for original in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.PatientID):
        assert str(original) not in text
    assert str(ds.PatientName) not in text


def test_series_read_from_bytes_and_from_a_zip_match_the_folder_read(
    lgg_volume: Image, tmp_path: Path
):
    paths = write_dicom_series(lgg_volume, tmp_path / "s")
    from_folder = read_image(tmp_path / "s")
    blobs = [p.read_bytes() for p in reversed(paths)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, blob in enumerate(blobs):
            archive.writestr(f"study/series/{i}.dcm", blob)

    from_list = read_dicom_series_bytes(blobs)
    from_zip = read_image_bytes(buffer.getvalue(), filename="series.zip")

    for image in (from_list, from_zip):
        assert np.array_equal(image.array, from_folder.array)
        assert np.allclose(image.affine, from_folder.affine)


def test_folder_with_two_series_needs_a_series_uid(lgg_volume: Image, tmp_path: Path):
    write_dicom_series(lgg_volume, tmp_path / "both" / "a", channel=0)
    write_dicom_series(lgg_volume, tmp_path / "both" / "b", channel=2)

    with pytest.raises(InvalidInputError, match="holds 2 DICOM series"):
        read_image(tmp_path / "both")

    series = list_dicom_series(tmp_path / "both")
    assert len(series) == 2
    picked = [read_image(tmp_path / "both", series_uid=s.series_uid) for s in series]
    channels = sorted(
        int(np.argmax([np.array_equal(p.array[0], c) for c in lgg_volume.array])) for p in picked
    )
    assert channels == [0, 2]


def test_burned_in_annotation_is_refused_by_default_and_flagged_on_request(
    dicom_testfile: Callable[[str], Path], tmp_path: Path
):
    ds = pydicom.dcmread(dicom_testfile("MR_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    path = tmp_path / "burned.dcm"
    ds.save_as(path)

    with pytest.raises(PHIError, match=r"burned\.dcm") as info:
        read_image(path)
    assert info.value.status_code == 422

    flagged = read_image(path, burned_in="flag")
    assert flagged.metadata["deidentification"]["burned_in_annotation"] is True


def test_derived_series_joins_the_reference_study(lgg_volume: Image, tmp_path: Path):
    write_dicom_series(lgg_volume, tmp_path / "orig")
    original = read_image(tmp_path / "orig", deidentify=False)
    ref = pydicom.dcmread(sorted((tmp_path / "orig").iterdir())[0])
    mask = Image((lgg_volume.array[:1] > 100).astype(np.uint8), lgg_volume.affine)

    write_dicom_series(mask, tmp_path / "mask", reference=ref, modality="SEG")
    derived = pydicom.dcmread(sorted((tmp_path / "mask").iterdir())[0])

    assert derived.StudyInstanceUID == ref.StudyInstanceUID
    assert derived.FrameOfReferenceUID == ref.FrameOfReferenceUID
    assert derived.SeriesInstanceUID != ref.SeriesInstanceUID
    assert original.metadata["deidentified"] is False
    assert "study_instance_uid" not in original.metadata


def test_palette_colour_dicom_reads_as_the_rgb_picture_it_shows(
    dicom_testfile: Callable[[str], Path],
):
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(dicom_testfile("examples_palette.dcm"))
    expected = apply_color_lut(ds.pixel_array, ds)  # (Y, X, 3)

    image = read_image(dicom_testfile("examples_palette.dcm"))

    assert image.array.shape == (3, 1, *expected.shape[:2])
    assert np.array_equal(image.array[:, 0], np.moveaxis(expected, -1, 0))


def test_multi_frame_rgb_file_gives_three_channels_per_frame(
    dicom_testfile: Callable[[str], Path],
):
    raw = pydicom.dcmread(dicom_testfile("SC_rgb_rle_2frame.dcm")).pixel_array  # (2, Y, X, 3)
    image = read_image(dicom_testfile("SC_rgb_rle_2frame.dcm"))
    assert image.array.shape == (3, 2, 100, 100)
    assert np.array_equal(image.array, np.moveaxis(raw, -1, 0))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # a malformed UID in the test file
def test_rt_dose_frames_are_placed_by_grid_frame_offsets_and_scaled_to_gray(
    dicom_testfile: Callable[[str], Path],
):
    ds = pydicom.dcmread(dicom_testfile("rtdose.dcm"))
    offsets = [float(v) for v in ds.GridFrameOffsetVector]

    image = read_image(dicom_testfile("rtdose.dcm"))

    assert image.array.shape == (1, len(offsets), int(ds.Rows), int(ds.Columns))
    assert np.allclose(image.array[0], ds.pixel_array * float(ds.DoseGridScaling))
    assert image.spacing[2] == pytest.approx(offsets[1] - offsets[0])
    origin_lps = np.array(ds.ImagePositionPatient, float)
    assert np.allclose(image.affine[:3, 3], LPS_TO_RAS[:3, :3] @ origin_lps)
