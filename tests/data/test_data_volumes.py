"""3D layouts: a Medical Segmentation Decathlon dataset (NIfTI written with nibabel) and a
DICOM-folder dataset (series written with medops.imaging.write_dicom_series)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medops.data import ingest, load_arrays, split_dataset, validate
from medops.errors import ImageReadError, MedopsError, UnsupportedMediaTypeError
from medops.imaging import Image, write_dicom_series, write_nifti

SHAPE_XYZ = (24, 20, 5)


def _case(rng: np.random.Generator, tumour_slices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Two modalities (X, Y, Z, 2) float32 and a label map (X, Y, Z) with labels 1 and 2."""
    image = rng.normal(300, 50, (*SHAPE_XYZ, 2)).astype(np.float32)
    label = np.zeros(SHAPE_XYZ, np.uint8)
    for k in tumour_slices:
        label[5:12, 4:9, k] = 1
        label[7:9, 5:7, k] = 2  # a second label inside, as in BraTS
        image[5:12, 4:9, k] += 200
    return image, label


@pytest.fixture
def msd_dir(tmp_path: Path) -> Path:
    root = tmp_path / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    rng = np.random.default_rng(0)
    training = []
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    for i, tumour in enumerate([[1, 2], [2, 3, 4], []]):
        image, label = _case(rng, tumour)
        name = f"BRATS_{i + 1:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    test_image, _ = _case(rng, [])
    nib.save(nib.Nifti1Image(test_image, affine), root / "imagesTs" / "BRATS_900.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "BRATS",
                "modality": {"0": "FLAIR", "1": "T1w"},
                "labels": {"0": "background", "1": "edema", "2": "tumour"},
                "numTraining": 3,
                "training": training,
                "test": ["./imagesTs/BRATS_900.nii.gz"],
            }
        )
    )
    return root


def test_msd_volumes_become_one_sample_per_slice_labelled_by_any_foreground(
    msd_dir: Path, tmp_path: Path
) -> None:
    manifest = ingest(msd_dir, tmp_path / "home")
    assert manifest.layout == "msd" and manifest.kind == "segmentation"
    assert len(manifest.samples) == 3 * SHAPE_XYZ[2]
    assert sorted(manifest.patients) == ["BRATS_001", "BRATS_002", "BRATS_003"]
    labels = {s.sample_id: s.label for s in manifest.samples}
    assert [labels[f"BRATS_001/{k}"] for k in range(5)] == [0, 1, 1, 0, 0]
    assert [labels[f"BRATS_002/{k}"] for k in range(5)] == [0, 0, 1, 1, 1]
    assert not any(labels[f"BRATS_003/{k}"] for k in range(5))
    s = manifest.by_id["BRATS_002/3"]
    assert (s.image, s.mask, s.slice_index) == (
        "imagesTr/BRATS_002.nii.gz",
        "labelsTr/BRATS_002.nii.gz",
        3,
    )
    assert manifest.info["modality"] == {"0": "FLAIR", "1": "T1w"}
    assert "imagesTs/BRATS_900.nii.gz" not in manifest.hashes


def test_msd_dataset_validates_and_loads_as_arrays(msd_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    manifest = ingest(msd_dir, home)
    report = validate(manifest, split_dataset(manifest, seed=0))
    assert report.ok, report.to_text()
    assert report.stats["image_shapes"] == {"5x20x24x2": 3}
    ids = ["BRATS_001/1", "BRATS_001/3", "BRATS_002/4"]
    arrays = load_arrays(manifest, ids, size=16, home=home)
    assert arrays.images.shape == (3, 3, 16, 16) and arrays.masks is not None
    assert arrays.labels.tolist() == [1, 0, 1]
    assert [bool(m.any()) for m in arrays.masks] == [True, False, True]
    # the two modalities fill channels 0 and 1, channel 2 repeats the second
    assert not np.array_equal(arrays.images[0, 0], arrays.images[0, 1])
    np.testing.assert_array_equal(arrays.images[:, 2], arrays.images[:, 1])


def test_msd_label_volume_of_another_size_is_a_size_mismatch(msd_dir: Path, tmp_path: Path) -> None:
    small = np.zeros((12, 10, 5), np.uint8)
    nib.save(nib.Nifti1Image(small, np.eye(4)), msd_dir / "labelsTr" / "BRATS_003.nii.gz")
    report = validate(ingest(msd_dir, tmp_path / "home"))
    (message,) = [i.message for i in report.issues if i.code == "size-mismatch"]
    assert "labelsTr/BRATS_003.nii.gz is 5x10x12" in message and "5x20x24" in message
    assert not report.ok


@pytest.mark.parametrize(
    ("offset", "value", "error"),
    [
        (70, 9999, ImageReadError),  # datatype: no such NIfTI data type
        (0, 12345, UnsupportedMediaTypeError),  # sizeof_hdr: no longer a NIfTI header
    ],
)
def test_msd_volume_with_a_broken_header_is_refused_naming_the_file(
    msd_dir: Path, tmp_path: Path, offset: int, value: int, error: type[MedopsError]
) -> None:
    broken = msd_dir / "imagesTr" / "BRATS_002.nii.gz"
    raw = bytearray(gzip.decompress(broken.read_bytes()))
    size = 2 if offset == 70 else 4
    raw[offset : offset + size] = value.to_bytes(size, "little")
    broken.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(error, match=r"BRATS_002\.nii\.gz"):
        ingest(msd_dir, tmp_path / "home")


@pytest.fixture
def dicom_dir(tmp_path: Path) -> Path:
    """Three patients: a DICOM mask series, a NIfTI mask, and no mask."""
    root = tmp_path / "dicom-set"
    rng = np.random.default_rng(1)
    affine = np.array(
        [[0.9, 0, 0, -20], [0, 0.9, 0, -30], [0, 0, 3.0, 10], [0, 0, 0, 1]], dtype=float
    )
    for name, tumour in (("patient-a", [1, 2]), ("patient-b", [0]), ("patient-c", None)):
        volume = rng.normal(500, 80, (1, 4, 18, 16)).astype(np.int16)
        image = Image(volume, affine)
        write_dicom_series(image, root / name, patient_id=name)
        if tumour is None:
            continue
        mask = np.zeros((1, 4, 18, 16), np.uint8)
        for k in tumour:
            mask[0, k, 4:10, 3:9] = 1
        if name == "patient-a":
            write_dicom_series(Image(mask, affine), root / name / "mask", modality="SEG")
        else:
            write_nifti(Image(mask, affine), root / name / "mask.nii.gz")
    return root


def test_dicom_folders_are_ingested_per_series_with_dicom_or_nifti_masks(
    dicom_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    manifest = ingest(dicom_dir, home)
    assert manifest.layout == "dicom-folders"
    assert sorted(manifest.patients) == ["patient-a", "patient-b", "patient-c"]
    assert len(manifest.samples) == 12
    labels = {s.sample_id: s.label for s in manifest.samples}
    assert [labels[f"patient-a/{k}"] for k in range(4)] == [0, 1, 1, 0]
    assert [labels[f"patient-b/{k}"] for k in range(4)] == [1, 0, 0, 0]
    assert [labels[f"patient-c/{k}"] for k in range(4)] == [-1] * 4
    assert manifest.by_id["patient-a/0"].mask == "patient-a/mask"
    assert manifest.by_id["patient-b/0"].mask == "patient-b/mask.nii.gz"
    assert any(rel.startswith("patient-a/mask/") for rel in manifest.hashes)
    arrays = load_arrays(
        manifest, ["patient-a/1", "patient-b/0", "patient-b/3"], size=16, home=home
    )
    assert arrays.images.shape == (3, 3, 16, 16) and arrays.masks is not None
    assert [bool(m.any()) for m in arrays.masks] == [True, True, False]
    report = validate(manifest)
    assert {i.code for i in report.errors} == {"missing-mask"}
    assert all("patient-c" in i.message for i in report.errors)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("keep", [400, -100])
def test_truncated_dicom_file_in_a_series_is_refused_naming_the_patient_folder(
    dicom_dir: Path, tmp_path: Path, keep: int
) -> None:
    victim = sorted((dicom_dir / "patient-b").glob("*.dcm"))[1]
    victim.write_bytes(victim.read_bytes()[:keep])
    with pytest.raises(MedopsError, match="patient-b") as info:
        ingest(dicom_dir, tmp_path / "home")
    assert info.value.status_code == 400


def test_describe_reports_volume_slices_and_their_shape(msd_dir: Path, medops_home: Path) -> None:
    from click.testing import CliRunner

    from medops.cli import cli

    result = CliRunner().invoke(cli, ["data", "describe", str(msd_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "patients  3\n" in result.stdout and "slices    15\n" in result.stdout
    assert "tumour-positive slices  5 (33.3%)" in result.stdout
    assert "image     20x24x2 float32 (15 slices)" in result.stdout
