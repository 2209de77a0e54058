"""The preprocessing shared by training and serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medops.errors import InvalidInputError
from medops.imaging import Image
from medops.transforms import (
    limit_resize_threads,
    n4_bias_correction,
    normalise_intensity,
    preprocess_slice,
    preprocess_slices,
    resize_mask,
    restore_mask,
    volume_to_slices,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_rgb_uint8_slice_becomes_float32_channels_in_unit_range(rng: np.random.Generator) -> None:
    ramp = np.linspace(0, 255, 180)[None, None] + rng.normal(0, 5, (3, 200, 180))
    slice_ = np.clip(ramp, 0, 255).astype(np.uint8)
    out = preprocess_slice(slice_, 64)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() > 0.95 and out.min() < 0.05
    assert (np.diff(out.mean(axis=1), axis=-1) > 0).all()  # the ramp survives, left to right


def test_grey_slice_is_repeated_to_three_identical_channels(rng: np.random.Generator) -> None:
    grey = rng.normal(100, 20, (1, 50, 50)).astype(np.float32)
    out = preprocess_slice(grey, 32)
    assert out.shape == (3, 32, 32)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
    assert np.array_equal(preprocess_slice(grey[0], 32), out)  # (H, W) is taken as one channel
    assert preprocess_slice(grey, 32, channels=1).shape == (1, 32, 32)


def test_rgba_drops_alpha_and_two_channels_repeat_the_last(rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, (4, 40, 40), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_slice(rgba, 40), preprocess_slice(rgba[:3], 40))
    two = preprocess_slice(rgba[:2], 40)
    np.testing.assert_array_equal(two[:2], preprocess_slice(rgba[:3], 40)[:2])
    np.testing.assert_array_equal(two[2], two[1])
    with pytest.raises(InvalidInputError, match="shape"):
        preprocess_slice(np.zeros((2, 3, 4, 5)), 8)
    with pytest.raises(InvalidInputError, match="size"):
        preprocess_slice(rgba, 0)
    with pytest.raises(InvalidInputError, match="dtype"):
        preprocess_slice(np.zeros((1, 4, 4), dtype=np.complex64), 8)


def test_constant_and_blank_slices_become_zeros_never_nan() -> None:
    for value in (0, 7, 255):
        out = preprocess_slice(np.full((3, 30, 30), value, np.uint8), 16)
        assert np.isfinite(out).all() and not out.any()
    out = preprocess_slice(np.full((1, 30, 30), 3.5, np.float32), 16)
    assert np.isfinite(out).all() and not out.any()


def test_mostly_blank_slice_falls_back_to_min_max_instead_of_vanishing() -> None:
    slice_ = np.zeros((1, 100, 100), np.uint8)
    slice_[0, :2, :2] = 200  # 4 pixels of 10,000: below the 99.5th percentile
    out = normalise_intensity(slice_)
    assert out.max() == 1.0 and out[0, 0, 0] == 1.0 and out[0, 50, 50] == 0.0


def test_int16_and_float_inputs_with_outliers_are_clipped_robustly(
    rng: np.random.Generator,
) -> None:
    ct = rng.normal(40, 300, (1, 128, 128)).astype(np.int16)
    ct[0, 0, 0] = -32768
    ct[0, 0, 1] = 32767
    out = preprocess_slice(ct, 128)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.3 < float(np.median(out)) < 0.7  # outliers did not squash the range
    bad = rng.normal(0, 1, (3, 20, 20))
    bad[0, 0, 0], bad[1, 1, 1] = np.nan, np.inf
    assert np.isfinite(preprocess_slice(bad, 20)).all()


def test_uint8_fast_path_equals_the_float_path(rng: np.random.Generator) -> None:
    for _ in range(5):
        slice_ = rng.integers(0, 256, (3, 77, 91), dtype=np.uint8)
        slice_[:, :40] = 0  # background, like an MRI slice
        np.testing.assert_array_equal(
            normalise_intensity(slice_), normalise_intensity(slice_.astype(np.float32))
        )


def test_resize_is_antialiased_and_same_size_is_untouched(rng: np.random.Generator) -> None:
    checker = np.indices((256, 256)).sum(axis=0) % 2 * 255
    out = preprocess_slice(checker.astype(np.uint8)[None], 64)
    assert abs(float(out.mean()) - 0.5) < 0.01 and float(out.std()) < 0.05  # grey, no aliasing
    slice_ = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_slice(slice_, 32), normalise_intensity(slice_))


def test_mask_resize_is_binary_uint8_nearest(rng: np.random.Generator) -> None:
    mask = np.zeros((256, 256), np.uint8)
    mask[64:192, 32:96] = 255
    out = resize_mask(mask, 128)
    assert out.shape == (1, 128, 128) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 1}
    assert out.sum() == 64 * 32
    assert np.array_equal(resize_mask(mask[None], 128), out)
    with pytest.raises(InvalidInputError, match="mask"):
        resize_mask(np.zeros((2, 8, 8)), 4)


def test_restore_mask_round_trips_to_the_original_size() -> None:
    mask = np.zeros((240, 200), np.uint8)
    mask[60:180, 40:160] = 1
    small = resize_mask(mask, 120)
    restored = restore_mask(small, (240, 200))
    assert restored.shape == (1, 240, 200) and restored.dtype == np.uint8
    assert (restored[0] != mask).mean() < 0.01
    exact = restore_mask(resize_mask(mask, 240), (240, 200))  # no loss without shrinking
    assert exact.shape == (1, 240, 200)
    probabilities = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    up = restore_mask(probabilities, (16, 16))
    assert up.dtype == np.float32 and up.shape == (1, 16, 16)
    assert set(np.unique(up)) == set(np.unique(probabilities))


def test_volume_to_slices_yields_channel_first_slices_along_the_third_axis(
    rng: np.random.Generator,
) -> None:
    volume = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    slices = volume_to_slices(Image(volume))
    assert len(slices) == 5 and all(s.shape == (2, 6, 7) for s in slices)
    np.testing.assert_array_equal(slices[3], volume[:, 3])


def test_n4_bias_correction_flattens_a_smooth_multiplicative_field() -> None:
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16).astype(np.float32)
    tissue = disc * 100.0
    field = 0.6 + 0.8 * xx  # brightness grows left to right
    biased = (tissue * field).astype(np.float32)[None]
    corrected = n4_bias_correction(biased)[0]
    inside = disc > 0
    left, right = inside & (xx < 0.35), inside & (xx > 0.65)

    def ratio(a: np.ndarray) -> float:
        return float(a[right].mean() / a[left].mean())

    assert ratio(biased[0]) > 1.5
    assert ratio(corrected) < ratio(biased[0]) - 0.2
    assert corrected.shape == (96, 96) and np.isfinite(corrected).all()
    flat = np.full((1, 20, 20), 5.0, np.float32)
    np.testing.assert_array_equal(n4_bias_correction(flat), flat)
    out = preprocess_slice(biased, 48, bias_correction=True)
    assert out.shape == (3, 48, 48) and np.isfinite(out).all()


def test_the_brain_models_input_is_pinned_bit_for_bit(lgg_dir: Path) -> None:
    """What the LGG models get from the shared preprocessing, as sha256 of the float32 bytes:
    parameterising it for other tasks must leave these unchanged."""
    import hashlib

    from medops.data.reading import read_2d

    folder = sorted(d for d in lgg_dir.iterdir() if d.is_dir())[0]
    slice_ = read_2d(folder / f"{folder.name}_10.tif")
    pinned = {
        128: "da9aa3703d026e9a08f15bf5192be78aa2fc0ebe18b04d3b04e1ed93e0fa0ad3",
        256: "abfe7244c4bc8c8ffc573e371698de3b1115902d1e3ba44eee7219eac942a151",
    }
    for size, digest in pinned.items():
        assert hashlib.sha256(preprocess_slice(slice_, size).tobytes()).hexdigest() == digest
    synthetic = np.random.default_rng(7).integers(0, 256, size=(3, 200, 160), dtype=np.uint8)
    assert (
        hashlib.sha256(preprocess_slice(synthetic, 96).tobytes()).hexdigest()
        == "ff6d57e2c1b2b5dfe5c28ae765988bea7600433c4b0c362c023567001c9aa2e2"
    )


def test_the_batched_form_is_bit_identical_to_the_slice_by_slice_one(lgg_dir: Path) -> None:
    """One shared preprocessing: a batch gives each slice exactly what it gets alone, for a
    real volume's slices (one shape) and for mixed shapes, channel counts and dtypes."""
    from medops.imaging.lgg import lgg_patient_volume

    folder = sorted(d for d in lgg_dir.iterdir() if d.is_dir())[0]
    volume = lgg_patient_volume(folder).array
    slices = [volume[:, k] for k in range(volume.shape[1])]
    for size in (128, 256, 97):
        batch = preprocess_slices(slices, size)
        assert batch.dtype == np.float32 and batch.shape == (len(slices), 3, size, size)
        assert np.array_equal(batch, np.stack([preprocess_slice(s, size) for s in slices]))
    rng = np.random.default_rng(3)
    mixed = [
        slices[0],
        slices[1][0],  # grey
        rng.integers(0, 4096, (2, 256, 256)).astype(np.int16),  # two modalities
        rng.normal(0, 1, (4, 180, 200)).astype(np.float32),  # four channels, another shape
    ]
    batch = preprocess_slices(mixed, 64)
    assert np.array_equal(batch, np.stack([preprocess_slice(s, 64) for s in mixed]))
    # one shape and dtype, normalised as one set of rows: blank, constant and NaN slices too
    blank = np.zeros((3, 40, 40), np.uint8)
    for same in (
        [
            blank,
            blank + 7,
            rng.integers(0, 3, (3, 40, 40)).astype(np.uint8),
            slices[0][:, :40, :40],
        ],
        [np.where(rng.random((40, 40)) < 0.05, np.nan, rng.normal(0, 1, (40, 40))) for _ in "ab"],
    ):
        batch = preprocess_slices(same, 32)
        assert np.array_equal(batch, np.stack([preprocess_slice(s, 32) for s in same]))
    assert preprocess_slices([], 64).shape == (0, 3, 64, 64)
    with pytest.raises(InvalidInputError, match="size"):
        preprocess_slices(slices, 0)


def test_a_server_can_run_the_resize_on_one_thread_with_the_same_output() -> None:
    """``medops serve`` limits torch's threads for its own process: checked in a process of
    its own (the limit is process-wide), against this process's default threads."""
    import hashlib
    import subprocess
    import sys

    rng = np.random.default_rng(11)
    slices = rng.integers(0, 256, size=(6, 3, 240, 200), dtype=np.uint8)
    here = hashlib.sha256(preprocess_slices(list(slices), 128).tobytes()).hexdigest()
    script = (
        "import sys, hashlib, numpy as np, torch\n"
        "from medops.transforms import limit_resize_threads, preprocess_slices\n"
        "s = np.random.default_rng(11).integers(0, 256, size=(6, 3, 240, 200), dtype=np.uint8)\n"
        "limit_resize_threads(1)\n"
        "out = preprocess_slices(list(s), 128)\n"
        "print(torch.get_num_threads(), hashlib.sha256(out.tobytes()).hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", here]
    with pytest.raises(InvalidInputError, match="positive"):
        limit_resize_threads(0)
