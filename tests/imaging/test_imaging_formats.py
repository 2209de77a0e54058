"""NIfTI, Analyze, MINC, NRRD, TIFF, PNG and JPEG reading (and NIfTI writing) on real files."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from medops.imaging import (
    LGG_SEQUENCES,
    Image,
    lgg_patient_mask,
    lgg_patient_volume,
    read_image,
    read_image_bytes,
    write_nifti,
)

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def oblique(spacing=(0.7, 0.8, 3.0)) -> np.ndarray:
    c, s = np.cos(0.4), np.sin(0.4)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(spacing)
    affine[:3, 3] = [-90.0, 20.5, -33.0]
    return affine


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_array_dtype_and_affine(
    lgg_volume: Image, tmp_path: Path, suffix: str
):
    flair = Image(lgg_volume.array[1:2].astype(np.int16) - 7, oblique())
    path = write_nifti(flair, tmp_path / f"flair{suffix}")

    back = read_image(path)

    assert back.source_format == "nifti"
    assert back.array.dtype == np.int16
    assert np.array_equal(back.array, flair.array)
    assert np.allclose(back.affine, flair.affine)
    assert back.metadata["sform_code"] == 1


def test_nifti_stores_x_y_z_and_channels_on_the_fourth_axis(lgg_volume: Image, tmp_path: Path):
    path = write_nifti(lgg_volume, tmp_path / "lgg.nii.gz")

    on_disk: Any = nib.load(path)
    back = read_image(path)

    z, y, x = lgg_volume.shape
    assert on_disk.shape == (x, y, z, 3)
    data = np.asanyarray(on_disk.dataobj)
    assert data[5, 9, 2, 1] == lgg_volume.array[1, 2, 9, 5]  # (i, j, k, c) = array[c, k, j, i]
    assert np.array_equal(back.array, lgg_volume.array)


def test_analyze_pair_reads_from_the_header_or_the_image_file(tmp_path: Path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.AnalyzeImage(data, np.diag([2.0, 3.0, 4.0, 1.0]))
    nib.save(img, tmp_path / "vol.hdr")
    assert (tmp_path / "vol.img").is_file()

    for path in (tmp_path / "vol.hdr", tmp_path / "vol.img"):
        image = read_image(path)
        assert image.source_format == "analyze"
        assert np.array_equal(image.array[0], data.transpose(2, 1, 0))
        assert image.spacing == pytest.approx((2.0, 3.0, 4.0))


@pytest.mark.parametrize("name", ["minc1_1_scale.mnc", "minc2_1_scale.mnc"])
def test_minc_volume_reads_with_nibabel_geometry_and_scaling(name: str):
    path = NIBABEL_DATA / name
    assert path.is_file(), f"nibabel's MINC test file {name} is missing"
    reference: Any = nib.load(path)

    image = read_image(path)
    from_bytes = read_image_bytes(path.read_bytes(), filename=name)

    expected = np.asanyarray(reference.dataobj).transpose(2, 1, 0)
    assert image.source_format == "minc"
    assert np.allclose(image.array[0], expected)
    assert np.allclose(image.affine, reference.affine)
    assert np.array_equal(from_bytes.array, image.array)


def test_nrrd_in_lps_space_gets_a_ras_affine(tmp_path: Path):
    data = np.random.default_rng(1).integers(0, 1000, size=(6, 7, 8)).astype(np.int16)
    directions = np.array([[0.5, 0, 0], [0, 0.6, 0.1], [0, 0, 2.0]])
    origin = np.array([10.0, -20.0, 30.0])
    header = {
        "space": "left-posterior-superior",
        "space directions": directions,
        "space origin": origin,
    }
    nrrd.write(str(tmp_path / "v.nrrd"), data, header)

    image = read_image(tmp_path / "v.nrrd")

    lps = np.eye(4)
    lps[:3, :3] = directions.T
    lps[:3, 3] = origin
    assert image.source_format == "nrrd"
    assert np.array_equal(image.array[0], data.transpose(2, 1, 0))
    assert np.allclose(image.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)


def test_nrrd_vector_axis_becomes_channels(tmp_path: Path):
    data = np.random.default_rng(2).integers(0, 255, size=(3, 5, 6, 4)).astype(np.uint8)
    header = {
        "kinds": ["vector", "domain", "domain", "domain"],
        "space": "right-anterior-superior",
        "space directions": np.vstack([np.full(3, np.nan), np.eye(3)]),
    }
    path = tmp_path / "rgb.nrrd"
    nrrd.write(str(path), data, header)

    image = read_image_bytes(path.read_bytes(), filename="rgb.nrrd")

    assert image.array.shape == (3, 4, 6, 5)
    assert np.array_equal(image.array, data.transpose(0, 3, 2, 1))
    assert np.allclose(image.affine, np.eye(4))


def test_lgg_tiff_slice_reads_as_three_channels_and_its_mask_as_one(lgg_patient_dir: Path):
    slice_path = sorted(lgg_patient_dir.glob("*_1.tif"))[0]
    mask_path = slice_path.with_name(slice_path.stem + "_mask.tif")
    raw = tifffile.imread(slice_path)

    image = read_image(slice_path)
    mask = read_image(mask_path)

    assert image.array.shape == (3, 1, 256, 256)
    assert np.array_equal(image.array[:, 0], np.moveaxis(raw, -1, 0))
    assert np.allclose(image.affine, np.eye(4))
    assert mask.array.shape == (1, 1, 256, 256)
    assert set(np.unique(mask.array)) <= {0, 255}


def test_real_jpeg_reads_like_pillow_decodes_it(fourclass_dir: Path):
    path = sorted((fourclass_dir / "glioma").glob("*.jpg"))[0]
    with PILImage.open(path) as pic:
        expected = np.asarray(pic)

    image = read_image(path)
    from_bytes = read_image_bytes(path.read_bytes(), content_type="image/jpeg")

    assert image.source_format == "jpeg"
    channels = 1 if expected.ndim == 2 else 3
    assert image.array.shape == (channels, 1, *expected.shape[:2])
    flat = image.array[0, 0] if channels == 1 else np.moveaxis(image.array[:, 0], 0, -1)
    assert np.array_equal(flat, expected)
    assert np.array_equal(from_bytes.array, image.array)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_png_grey_gives_one_channel_and_colour_three(lgg_volume: Image, tmp_path: Path, mode: str):
    rgb = np.moveaxis(lgg_volume.array[:, 10], 0, -1)  # (256, 256, 3) real slice
    if mode == "L":
        pixels = rgb[..., 1]
    elif mode == "I;16":
        pixels = rgb[..., 1].astype(np.uint16) * 200
    elif mode == "RGBA":
        pixels = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    else:
        pixels = rgb
    path = tmp_path / "slice.png"
    PILImage.fromarray(pixels).save(path)

    image = read_image(path)

    assert image.source_format == "png"
    if mode in ("L", "I;16"):
        assert image.array.shape == (1, 1, 256, 256)
        assert np.array_equal(image.array[0, 0], pixels)
    else:
        assert image.array.shape == (3, 1, 256, 256)
        assert np.array_equal(image.array[:, 0], lgg_volume.array[:, 10])


def test_multipage_tiff_becomes_slices(lgg_volume: Image, tmp_path: Path):
    stack = lgg_volume.array[1, :5]  # five real FLAIR slices
    tifffile.imwrite(tmp_path / "stack.tif", stack)

    image = read_image(tmp_path / "stack.tif")

    assert image.array.shape == (1, 5, 256, 256)
    assert np.array_equal(image.array[0], stack)


def test_lgg_patient_volume_stacks_slices_in_slice_number_order(lgg_patient_dir: Path):
    volume = lgg_patient_volume(lgg_patient_dir)
    mask = lgg_patient_mask(lgg_patient_dir)

    slices = [p for p in lgg_patient_dir.glob("*.tif") if not p.stem.endswith("_mask")]
    assert volume.array.shape == (3, len(slices), 256, 256)
    assert volume.array.dtype == np.uint8
    assert volume.metadata["channels"] == list(LGG_SEQUENCES)
    assert volume.spacing == pytest.approx((1.0, 1.0, 2.5))
    tenth = next(p for p in slices if p.stem.endswith("_10"))
    assert np.array_equal(volume.array[:, 9], np.moveaxis(tifffile.imread(tenth), -1, 0))
    assert mask.array.shape == (1, len(slices), 256, 256)
    assert set(np.unique(mask.array)) <= {0, 1}
    assert mask.array.sum() > 0


def test_zip_with_an_analyze_pair_reads_like_the_files(tmp_path: Path):
    data = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    nib.save(nib.AnalyzeImage(data, np.eye(4)), tmp_path / "a.hdr")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(tmp_path / "a.hdr", "a.hdr")
        archive.write(tmp_path / "a.img", "a.img")

    image = read_image_bytes(buffer.getvalue(), filename="analyze.zip")

    assert np.array_equal(image.array, read_image(tmp_path / "a.hdr").array)
