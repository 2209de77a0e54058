"""The image-mask-folders layout: images/ and masks/ paired by stem (Kvasir-SEG and the like)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image as PILImage

from medops.cli import cli
from medops.data import (
    LayoutOptions,
    detect_layout,
    ingest,
    load_arrays,
    patient_folds,
    split_dataset,
    validate,
)
from medops.data.layouts import LayoutProblems
from medops.data.manifest import Manifest, compute_version
from medops.data.reading import read_2d
from medops.errors import DatasetError
from medops.tasks import data_problems, ingest_task, read_task
from medops.transforms import preprocess_slice, resize_mask

ROOT = Path(__file__).resolve().parents[2]
KVASIR_TASK = ROOT / "tasks" / "kvasir-polyp-segmenter.yaml"
KVASIR_PAIRS = [
    ("cju30bmab08bi0835mvlr6e0r", "cju77k828z46w0871r0avuoo9"),
    ("cju76lsehyia10987u54vn8rb", "cju772304yw5t0818vbw8kkjf"),
    ("cju886ryxnsl50801r93jai7q", "cju8amfdtqi4x09871tygrgqe"),
    ("cju5fydrud94708507vo6oy21", "cju7avvi51iox0817ym55y6tt"),
]


def _box(h: int, w: int) -> tuple[slice, slice]:
    """The foreground rectangle of a synthetic pair: the middle half of the frame."""
    return slice(h // 4, h // 2 + h // 4), slice(w // 4, w // 2 + w // 4)


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, arr)
    else:
        PILImage.fromarray(arr).save(path, quality=90)


def _pair(
    root: Path,
    stem: str,
    h: int,
    w: int,
    *,
    image_ext: str = ".png",
    mask_ext: str = ".png",
    empty: bool = False,
    seed: int = 0,
) -> None:
    """An RGB frame, dim outside a bright rectangle, and its 0/255 mask of that rectangle."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    if not empty:
        rows, cols = _box(h, w)
        image[rows, cols] = rng.integers(215, 256, size=(*image[rows, cols].shape[:2], 3))
        mask[rows, cols] = 255
    _write(root / "images" / f"{stem}{image_ext}", image)
    _write(root / "masks" / f"{stem}{mask_ext}", mask)


def _dataset(root: Path, n: int = 6) -> Path:
    sizes = [(40, 56), (64, 48), (33, 71), (80, 80), (48, 64), (56, 40)]
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        _pair(root, f"frame{i:02d}", h, w, seed=i)
    return root


def test_an_images_and_masks_folder_pair_is_detected_and_paired_by_stem(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "polyps")
    _pair(root, "jpeg", 40, 60, image_ext=".jpg", mask_ext=".tif", seed=9)
    _pair(root, "blank", 40, 40, empty=True)
    assert detect_layout(root) == "image-mask-folders"
    m = ingest(root, tmp_path / "home")
    assert (m.layout, m.kind, m.classes) == (
        "image-mask-folders",
        "segmentation",
        [
            "background",
            "foreground",
        ],
    )
    assert [s.sample_id for s in m.samples] == sorted(
        ["blank", "jpeg", *(f"frame{i:02d}" for i in range(6))]
    )
    jpeg = m.by_id["jpeg"]
    assert (jpeg.image, jpeg.mask) == ("images/jpeg.jpg", "masks/jpeg.tif")
    # each image its own group; labels say whether the mask has foreground
    assert [s.patient_id for s in m.samples] == [s.sample_id for s in m.samples]
    assert {s.sample_id: s.label for s in m.samples}["blank"] == 0
    assert sum(s.label for s in m.samples) == 7
    assert m.mask_threshold == 1  # lossless masks: every non-zero pixel
    assert validate(m).ok, validate(m).to_text()


def test_custom_folder_names_come_from_the_options(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "skin", n=2)
    (root / "images").rename(root / "frames")
    (root / "masks").rename(root / "labels")
    options = LayoutOptions(images="frames", masks="labels")
    assert detect_layout(root, options) == "image-mask-folders"
    m = ingest(root, tmp_path / "home", options=options)
    assert m.samples[0].image.startswith("frames/") and m.samples[0].mask.startswith("labels/")
    with pytest.raises(DatasetError, match="declared lgg, but the folder reads as image-mask"):
        ingest(root, tmp_path / "home", options=options, layout="lgg")


def test_images_without_masks_are_refused_naming_how_many_and_a_few(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "polyps")
    for i in range(1, 6):
        (root / "masks" / f"frame{i:02d}.png").unlink()
    home = tmp_path / "home"
    with pytest.raises(LayoutProblems) as caught:
        ingest(root, home)
    message = str(caught.value)
    assert "5 of 6 images have no mask in masks/" in message
    assert "(e.g. frame01.png, frame02.png, frame03.png and 2 more)" in message
    assert caught.value.problems[0][0] == "masks"
    assert not (home / "datasets").exists()  # nothing half-written


def test_orphan_masks_unreadable_files_and_size_mismatches_are_named(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "polyps")
    _write(root / "masks" / "stray.png", np.zeros((8, 8), np.uint8))
    (root / "masks" / "frame01.png").write_bytes(b"not a picture")
    _write(root / "masks" / "frame02.png", np.zeros((10, 12), np.uint8))  # image is 64x48
    with pytest.raises(LayoutProblems) as caught:
        ingest(root, tmp_path / "home")
    message = str(caught.value)
    assert "1 masks have no image in images/ (e.g. stray.png)" in message
    assert "1 files cannot be read (masks/frame01.png: cannot decode image" in message
    (root / "masks" / "stray.png").unlink()
    (root / "masks" / "frame01.png").unlink()
    (root / "images" / "frame01.png").unlink()
    with pytest.raises(LayoutProblems, match=r"mask masks/frame02\.png is 10x12 but image "):
        ingest(root, tmp_path / "home")


def test_jpeg_masks_are_thresholded_at_128_not_read_as_any_non_zero(tmp_path: Path) -> None:
    root = tmp_path / "polyps"
    _pair(root, "a", 61, 93, image_ext=".jpg", mask_ext=".jpg")
    _pair(root, "b", 77, 45, image_ext=".jpg", mask_ext=".jpg", seed=1)
    decoded = read_2d(root / "masks" / "a.jpg")
    noisy = np.unique(decoded)
    assert ((noisy > 0) & (noisy < 128)).any()  # JPEG spreads 0 and 255: a real test
    home = tmp_path / "home"
    m = ingest(root, home)
    assert m.mask_threshold == 128
    arrays = load_arrays(m, ["a", "b"], size=32, home=home)
    assert arrays.masks is not None
    for row, (h, w) in enumerate([(61, 93), (77, 45)]):
        truth = np.zeros((h, w), np.uint8)
        truth[_box(h, w)] = 1
        np.testing.assert_array_equal(arrays.masks[row], resize_mask(truth, 32))
    # read as "non-zero", the noise would have become foreground: the threshold matters
    assert ((decoded[0] > 0) & (decoded[0] < 128)).sum() > 0
    declared = ingest(root, home, options=LayoutOptions(mask_threshold=200))
    assert declared.mask_threshold == 200 and declared.version != m.version


def test_arrays_are_the_shared_preprocessing_and_masks_keep_the_images_geometry(
    tmp_path: Path,
) -> None:
    root = _dataset(tmp_path / "polyps")
    home = tmp_path / "home"
    m = ingest(root, home)
    ids = [s.sample_id for s in m.samples]
    arrays = load_arrays(m, ids, size=24, home=home)
    assert arrays.images.shape == (6, 3, 24, 24) and arrays.images.dtype == np.float32
    assert arrays.masks is not None and arrays.masks.shape == (6, 1, 24, 24)
    for row, sid in enumerate(ids):
        source = read_2d(m.image_path(m.by_id[sid]))
        np.testing.assert_array_equal(arrays.images[row], preprocess_slice(source, 24))
        # the bright rectangle of the frame lands where its mask lands, whatever the frame
        # size or aspect: image and mask went through the same full-frame resize
        # (only pixels on the rectangle's border, blended by the image's antialiasing, differ)
        inside = arrays.masks[row, 0].astype(bool)
        bright = arrays.images[row].mean(axis=0) > 0.5
        iou = (inside & bright).sum() / (inside | bright).sum()
        assert iou > 0.85, (sid, iou)
    grey = load_arrays(m, ids[:2], size=24, home=home, channels=1)
    assert grey.images.shape == (2, 1, 24, 24)
    again = load_arrays(m, ids, size=24, home=home)
    assert again.decoded == 0  # the 3-channel cache is kept beside the 1-channel one


def test_declared_and_identical_images_share_a_group_and_the_version(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "polyps")
    (root / "images" / "copy.png").write_bytes((root / "images" / "frame03.png").read_bytes())
    (root / "masks" / "copy.png").write_bytes((root / "masks" / "frame03.png").read_bytes())
    home = tmp_path / "home"
    plain = ingest(root, home)
    assert plain.by_id["copy"].patient_id == plain.by_id["frame03"].patient_id == "copy"
    options = LayoutOptions(together=(("frame00", "frame05"), ("frame01", "frame02", "frame04")))
    grouped = ingest(root, home, options=options)
    group = {s.sample_id: s.patient_id for s in grouped.samples}
    assert group["frame05"] == group["frame00"] == "frame00"
    assert group["frame01"] == group["frame02"] == group["frame04"] == "frame01"
    assert len(grouped.patients) == 3  # {copy, frame03}, {frame00, frame05}, the triple
    assert grouped.version != plain.version  # the groups shape the splits: a new version
    absent = LayoutOptions(together=(("frame00", "nowhere"),))
    with pytest.raises(LayoutProblems, match="nowhere not among the images of images/"):
        ingest(root, home, options=absent)


def test_no_declared_pair_is_ever_split_over_many_seeds(tmp_path: Path) -> None:
    root = tmp_path / "polyps"
    for i in range(40):
        _pair(root, f"f{i:02d}", 16, 16 + i % 5, seed=i)
    pairs = (("f03", "f31"), ("f07", "f08"), ("f12", "f39"), ("f20", "f21", "f22"))
    m = ingest(root, tmp_path / "home", options=LayoutOptions(together=pairs))
    assert len(m.patients) == 40 - 5

    def side(splits: object, sample: str) -> str:
        group = m.by_id[sample].patient_id
        return next(n for n in ("train", "val", "test") if group in getattr(splits, n))

    split_pairs = 0
    for seed in range(60):
        splits = split_dataset(m, seed=seed)
        for pair in pairs:
            assert len({side(splits, s) for s in pair}) == 1, (seed, pair)
        for fold in patient_folds(m, folds=5, seed=seed):
            for pair in pairs:
                assert len({side(fold, s) for s in pair}) == 1, (seed, pair)
        ungrouped = split_dataset(ingest(root, tmp_path / "plain"), seed=seed)
        split_pairs += any(
            len({n for n in ("train", "val", "test") for s in p if s in getattr(ungrouped, n)}) > 1
            for p in pairs
        )
    assert split_pairs > 30  # without the groups the same seeds do split them


def test_data_cli_reads_the_folder_as_the_task_declares_it(tmp_path: Path) -> None:
    root = tmp_path / "kvasir-seg"
    stems = ["a1", *(s for pair in KVASIR_PAIRS for s in pair)]
    for i, stem in enumerate(stems):
        _pair(root, stem, 24, 32, image_ext=".jpg", mask_ext=".jpg", seed=i)
    home = tmp_path / "home"
    runner = CliRunner()
    env = {"MEDOPS_HOME": str(home)}
    args = ["data", "ingest", str(root), "--task", str(KVASIR_TASK)]
    result = runner.invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "layout    image-mask-folders (segmentation)" in result.stdout
    assert "masks     foreground at 128 or above" in result.stdout
    manifest = json.loads(next(home.glob("datasets/kvasir-seg/*/manifest.json")).read_text())
    assert len(manifest["patients"]) == 5 and manifest["info"]["together"][0] == sorted(
        KVASIR_PAIRS[0]
    )
    args = ["data", "describe", str(root), "--task", str(KVASIR_TASK)]
    described = runner.invoke(cli, args, env=env, catch_exceptions=False).stdout
    assert "groups    5 (an image each; 4 of 2 or more)" in described
    assert "foreground-positive slices  9 (100.0%)" in described
    assert "image     24x32x3 uint8 (9 slices)" in described


def test_task_data_check_runs_the_layouts_reader(tmp_path: Path) -> None:
    spec = read_task(KVASIR_TASK)
    root = tmp_path / "data" / "kvasir-seg"
    for i, stem in enumerate(s for pair in KVASIR_PAIRS for s in pair):
        _pair(root, stem, 24, 32, image_ext=".jpg", mask_ext=".jpg", seed=i)
    assert data_problems(spec, KVASIR_TASK.name, tmp_path / "data") == []
    _write(root / "masks" / f"{KVASIR_PAIRS[0][0]}.jpg", np.zeros((5, 5), np.uint8))
    problems = [str(p) for p in data_problems(spec, KVASIR_TASK.name, tmp_path / "data")]
    assert problems == [
        f"{KVASIR_TASK.name}: data.masks: 1 masks differ in size from their image (mask "
        f"masks/{KVASIR_PAIRS[0][0]}.jpg is 5x5 but image images/{KVASIR_PAIRS[0][0]}.jpg "
        "is 24x32)"
    ]


def test_real_kvasir_seg_ingests_as_the_task_declares(data_dir: Path, tmp_path: Path) -> None:
    """The real folder, scanned and ingested only (no arrays, no training)."""
    spec = read_task(KVASIR_TASK)
    m = ingest_task(spec, data_dir, tmp_path / "home")
    assert (m.layout, len(m.samples), len(m.patients)) == ("image-mask-folders", 880, 876)
    assert m.mask_threshold == 128
    assert all(s.label == 1 for s in m.samples)  # every Kvasir-SEG mask is non-empty
    for a, b in KVASIR_PAIRS:
        assert m.by_id[a].patient_id == m.by_id[b].patient_id
    splits = split_dataset(m, seed=0)
    assert sum(len(splits.patients(n)) for n in ("train", "val", "test")) == 876


def test_layouts_without_settings_keep_the_versions_they_had(lgg_manifest: Manifest) -> None:
    # the version formula before reading settings existed: LGG caches and splits stay valid
    digest = hashlib.sha256(b"medops-manifest-1\n")
    for rel, sha in sorted(lgg_manifest.hashes.items()):
        digest.update(f"{rel}\0{sha}\n".encode())
    assert lgg_manifest.version == digest.hexdigest()[:16]
    assert compute_version(lgg_manifest.hashes, {}) == lgg_manifest.version
    assert lgg_manifest.mask_threshold is None
