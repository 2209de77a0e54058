"""Image statistics, the embedding reducer and mask RLE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medops.errors import InvalidInputError
from medops.monitoring.features import (
    FEATURE_NAMES,
    EmbeddingReducer,
    image_features,
    image_features_batch,
    pooled_vector,
)
from medops.rle import dice, rle_decode, rle_encode, validate_rle


def _phantom(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    head = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.16).astype(float)
    return np.stack([head * (0.5 + 0.1 * c) for c in range(3)]) + rng.normal(
        0, 0.002, (3, size, size)
    )


def test_features_have_every_documented_key_as_floats() -> None:
    feats = image_features(_phantom(np.random.default_rng(0)))
    assert list(feats) == list(FEATURE_NAMES)
    assert all(isinstance(v, float) for v in feats.values())
    assert feats["rows"] == feats["cols"] == 128.0
    assert 0.4 < feats["foreground_fraction"] < 0.6  # the disc covers pi*0.16 of the square


def test_noise_estimate_tracks_the_added_gaussian_noise() -> None:
    rng = np.random.default_rng(1)
    flat = np.full((256, 256), 0.5)
    for sigma in (0.01, 0.05):
        est = image_features(flat + rng.normal(0, sigma, flat.shape))["noise"]
        assert est == pytest.approx(sigma, rel=0.1)


def test_bias_field_estimate_grows_with_an_intensity_ramp() -> None:
    rng = np.random.default_rng(2)
    img = _phantom(rng)
    ramp = np.linspace(0.4, 1.6, img.shape[-1])[None, None, :]
    assert image_features(img * ramp)["bias_field"] > 5 * image_features(img)["bias_field"]


def test_original_shape_sets_rows_and_cols_in_any_layout() -> None:
    img = _phantom(np.random.default_rng(3))
    assert image_features(img, original_shape=(224, 200, 3))["rows"] == 224.0
    assert image_features(img, original_shape=(3, 224, 200))["cols"] == 200.0


@pytest.mark.parametrize(
    ("bad", "fault"),
    [
        (np.zeros((0, 4)), "empty"),
        (np.zeros((2, 2, 2, 2)), "expected a 2D slice"),
        (np.array([[np.nan] * 4] * 4), "NaN"),
        (np.array([["a"] * 4] * 4), "numeric"),
    ],
)
def test_unusable_images_raise_a_named_input_error(bad: np.ndarray, fault: str) -> None:
    with pytest.raises(InvalidInputError, match=f"upload.png: .*{fault}"):
        image_features(bad, name="upload.png")


def test_pooled_vector_averages_cells_exactly() -> None:
    img = np.arange(16.0).reshape(4, 4)
    vec = pooled_vector(img, grid=2)
    assert vec.shape == (12,)  # grey repeated to three channels
    assert vec[:4].tolist() == [2.5, 4.5, 10.5, 12.5]


@pytest.mark.parametrize("shape", [(3, 128, 128), (1, 64, 64), (3, 100, 90), (4, 37, 50)])
def test_pooled_vectors_are_each_cell_s_mean_and_a_batch_embeds_as_its_images(
    shape: tuple[int, ...],
) -> None:
    """Equal cells (a reshaped mean) and unequal ones (integral images) both give each cell's
    plain mean; a batch's embeddings are its images' one by one, exactly."""
    from medops.monitoring.features import pooled_vectors

    rng = np.random.default_rng(5)
    batch = rng.random((5, *shape)).astype(np.float32)
    grid = 16
    ys, xs = (np.linspace(0, n, grid + 1).astype(int) for n in shape[1:])
    for image, got in zip(batch, pooled_vectors(batch, grid=grid), strict=True):
        chw = np.repeat(image, 3, axis=0) if shape[0] == 1 else image[:3]
        cells = [
            chw[:, ys[i] : ys[i + 1], xs[j] : xs[j + 1]].astype(np.float64).mean(axis=(1, 2))
            for i in range(grid)
            for j in range(grid)
        ]
        np.testing.assert_allclose(got, np.stack(cells, axis=1).reshape(-1), rtol=1e-12)
    reducer = EmbeddingReducer.fit(pooled_vectors(batch, grid=grid), n_components=3)
    assert reducer.embed_batch(batch) == [reducer.embed(x) for x in batch]


def test_embedding_reducer_round_trips_through_its_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    images = [_phantom(rng) * rng.uniform(0.5, 1.5) for _ in range(20)]
    reducer = EmbeddingReducer.fit_images(images, n_components=3)
    coords = reducer.embed(images[0])
    assert list(coords) == ["emb_0", "emb_1", "emb_2"]
    # the first axis carries the brightness scale the images differ by
    assert reducer.explained_variance[0] > 10 * reducer.explained_variance[1]
    reducer.save(tmp_path / "e.npz")
    again = EmbeddingReducer.load(tmp_path / "e.npz")
    assert again.embed(images[0]) == pytest.approx(coords)
    with pytest.raises(InvalidInputError, match="length"):
        reducer.transform(np.zeros(5))


def test_rle_round_trips_and_scores_dice() -> None:
    rng = np.random.default_rng(5)
    mask = rng.random((17, 23)) > 0.7
    mask[0, 0] = True  # a set first pixel starts with a zero-length background run
    rle = rle_encode(mask)
    assert rle["counts"][0] == 0
    assert (rle_decode(rle) == mask).all()
    assert dice(mask, mask) == 1.0
    assert dice(mask, ~mask) == 0.0
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_rle_in_column_major_order_like_coco() -> None:
    mask = np.array([[0, 1], [0, 1]], dtype=bool)
    assert rle_encode(mask) == {"size": [2, 2], "counts": [2, 2]}


@pytest.mark.parametrize(
    ("rle", "fault"),
    [
        ({"size": [2, 2], "counts": [1, 1]}, "cover 2 pixels"),
        ({"size": [2], "counts": [4]}, "size"),
        ({"size": [2, 2], "counts": [-1, 5]}, "counts"),
        ([1, 2], "object"),
    ],
)
def test_malformed_rle_is_rejected_with_the_field_named(rle: object, fault: str) -> None:
    with pytest.raises(InvalidInputError, match=fault):
        validate_rle(rle)


def test_batched_features_equal_the_per_image_ones_exactly(lgg_dir: Path) -> None:
    """The log's statistics over a volume at once are the very numbers computed per slice."""
    from medops.imaging.lgg import lgg_patient_volume
    from medops.transforms import preprocess_slices

    folder = sorted(d for d in lgg_dir.iterdir() if d.is_dir())[0]
    volume = lgg_patient_volume(folder).array
    batch = preprocess_slices([volume[:, k] for k in range(volume.shape[1])], 128)
    batch[0] = 0.0  # a blank slice: zero contrast, no foreground
    for images in (batch, batch[:, :1]):  # colour and grey
        got = image_features_batch(images, original_shape=(256, 256))
        assert got == [image_features(x, original_shape=(256, 256)) for x in images]
    with pytest.raises(InvalidInputError, match="NaN"):
        image_features_batch(np.full((2, 3, 8, 8), np.nan))
    with pytest.raises(InvalidInputError, match="batch"):
        image_features_batch(batch[0])


def test_the_vectorised_noise_and_bias_field_equal_their_textbook_forms() -> None:
    """Immerkær's 3x3 convolution and a per-image least-squares plane, computed the slow way
    (SciPy, NumPy's lstsq in float64), give the batch's numbers."""
    from scipy.signal import convolve2d

    from medops.monitoring.features import _bias_field, _noise_sigma

    rng = np.random.default_rng(3)
    gray = np.stack([_phantom(rng).mean(axis=0) for _ in range(4)]).astype(np.float32)
    gray[1] *= np.linspace(0.5, 1.5, 128)[None, :]  # a ramp, so the slope is not ~0
    kernel = np.outer([1, -2, 1], [1, -2, 1])
    for i, g in enumerate(gray.astype(np.float64)):
        residual = convolve2d(g, kernel, mode="valid")
        expected = np.sqrt(np.pi / 2) * np.abs(residual).mean() / 6
        assert _noise_sigma(gray)[i] == pytest.approx(expected, rel=1e-5)
    foreground = gray > 0.2
    scale = np.full(4, 0.7)
    got = _bias_field(gray, foreground, scale)
    for i, g in enumerate(gray.astype(np.float64)):
        ys, xs = np.nonzero(foreground[i])
        design = np.column_stack([np.ones(ys.size), xs / 128 - 0.5, ys / 128 - 0.5])
        coef, *_ = np.linalg.lstsq(design, g[ys, xs], rcond=None)
        assert got[i] == pytest.approx(np.hypot(coef[1], coef[2]) / 0.7, rel=1e-6, abs=1e-9)
    assert got[1] > 10 * got[0]
    few = np.zeros_like(foreground)
    few[:, 5, 5:20] = True  # 15 pixels, and all on one row: no plane to fit
    assert (_bias_field(gray, few, scale) == 0).all()


def test_rle_counts_are_checked_as_fast_as_strictly() -> None:
    """Thousands of runs checked at C speed, with the same refusals as before: bools,
    negatives and floats among the counts are still named faults."""
    mask = np.random.default_rng(0).random((256, 256)) > 0.5
    rle = rle_encode(mask)
    assert len(rle["counts"]) > 30_000
    assert validate_rle(rle) == rle
    assert np.array_equal(rle_decode(rle), mask)
    size = rle["size"]
    for bad in ([*rle["counts"][:-1], True], [-1, *rle["counts"]], [float(rle["counts"][0])]):
        with pytest.raises(InvalidInputError, match="counts"):
            validate_rle({"size": size, "counts": bad})
