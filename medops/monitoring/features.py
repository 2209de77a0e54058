"""Image statistics and a low-dimensional embedding for drift monitoring.

Evidently cannot read pixels, so every prediction is logged with a handful of numbers that
move when scanners, protocols or populations change: intensity percentiles, contrast, a noise
estimate, bias-field estimates (an intensity ramp, a left-right asymmetry), the image size,
the foreground fraction, and a few principal components of a pooled image (the embedding).
Compute them on the same representation at training time (the reference) and at serving
time: the model input from ``medops.transforms.preprocess_slice``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medops.errors import InvalidInputError

FEATURE_NAMES: tuple[str, ...] = (
    "p1",
    "p5",
    "p50",
    "p95",
    "p99",
    "mean",
    "std",
    "contrast",
    "noise",
    "bias_field",
    "lr_asymmetry",
    "gradient",
    "channel_spread",
    "foreground_fraction",
    "rows",
    "cols",
)
"""Keys of :func:`image_features`, in a stable order."""

_SECOND_DIFFERENCE = np.array([1.0, -2.0, 1.0], np.float32)
"""Immerkær's 3x3 kernel is the outer product of this with itself: two 1D passes."""


def _channels_first(image: np.ndarray, name: str) -> np.ndarray:
    """(C, H, W) from (H, W), (H, W, C) or (C, H, W), any numeric dtype."""
    arr = np.asarray(image)
    if arr.size == 0:
        raise InvalidInputError(f"{name}: empty image")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidInputError(f"{name}: pixels must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        if arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
            arr = np.moveaxis(arr, -1, 0)
    else:
        raise InvalidInputError(
            f"{name}: expected a 2D slice (H, W), (H, W, C) or (C, H, W), got shape {arr.shape}"
        )
    if arr.shape[1] < 3 or arr.shape[2] < 3:
        raise InvalidInputError(f"{name}: image too small for statistics: shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name}: image contains NaN or infinite values")
    return arr


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of a 2D, channel-last or channel-first shape."""
    if len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return int(shape[0]), int(shape[1])
    return int(shape[-2]), int(shape[-1])


def _noise_sigma(gray: np.ndarray) -> np.ndarray:
    """Immerkær's fast noise estimate (1996) per image of ``(N, H, W)``: the mean magnitude of
    the Laplacian-difference residual.

    The 3x3 kernel cancels planar structure, so what remains is mostly noise; edges add a
    little, which is fine for a drift signal.
    """
    h, w = gray.shape[1:]
    k = _SECOND_DIFFERENCE
    rows = k[0] * gray[:, :, : w - 2] + k[1] * gray[:, :, 1 : w - 1] + k[2] * gray[:, :, 2:]
    acc = k[0] * rows[:, : h - 2] + k[1] * rows[:, 1 : h - 1] + k[2] * rows[:, 2:]
    return np.sqrt(np.pi / 2.0) * np.abs(acc).mean(axis=(1, 2), dtype=np.float64) / 6.0


def _bias_field(gray: np.ndarray, foreground: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Strength of a smooth intensity ramp over each image's foreground, relative to its
    contrast (``scale``, positive).

    A least-squares plane I = a + b*x + c*y over foreground pixels; a scanner's bias field
    (or a coil problem) shows as a large slope across the field of view. Solved for the whole
    batch from the normal equations about the foreground's centroid (sums over the masks);
    an image with under 16 foreground pixels, or one whose pixels are all on a line, has 0.
    """
    h, w = gray.shape[1:]
    fg = foreground.astype(np.float64)
    x = np.arange(w) / w - 0.5
    y = np.arange(h) / h - 0.5
    count = fg.sum(axis=(1, 2))
    safe = np.maximum(count, 1.0)
    along_x, along_y = fg.sum(axis=1), fg.sum(axis=2)  # (N, W), (N, H)
    intensity = np.where(foreground, gray, 0).astype(np.float64)
    sx, sy = along_x @ x, along_y @ y
    sxx, syy = along_x @ x**2, along_y @ y**2
    sxy = np.einsum("nhw,h,w->n", fg, y, x)
    si = intensity.sum(axis=(1, 2))
    sxi, syi = intensity.sum(axis=1) @ x, intensity.sum(axis=2) @ y
    # central moments: the intercept drops out of the 2x2 system for the slopes
    cxx, cyy, cxy = sxx - sx * sx / safe, syy - sy * sy / safe, sxy - sx * sy / safe
    cxi, cyi = sxi - sx * si / safe, syi - sy * si / safe
    det = cxx * cyy - cxy * cxy
    solvable = (count >= 16) & (det > 1e-12 * np.maximum(cxx * cyy, 1e-300))
    det = np.where(solvable, det, 1.0)
    b = (cyy * cxi - cxy * cyi) / det
    c = (cxx * cyi - cxy * cxi) / det
    return np.where(solvable, np.hypot(b, c) / scale, 0.0)


def _lr_asymmetry(gray: np.ndarray, foreground: np.ndarray) -> float:
    """Left-right intensity asymmetry of one image: median log ratio of mirrored foreground
    pixels.

    Brains are nearly symmetric about the midline, so the ratio of a pixel to its mirror
    image (about the foreground's centre column), per unit of distance across the field of
    view, is near zero whatever the anatomy; a bias field or coil shading tilts it. A
    tumour's asymmetry is local and barely moves the median.
    """
    w = gray.shape[1]
    columns = foreground.sum(axis=0)
    if np.count_nonzero(columns) < 8:
        return 0.0
    cx = round(float(columns @ np.arange(w) / columns.sum()))
    d = min(cx, w - 1 - cx)
    if d < 4:
        return 0.0
    right, left = gray[:, cx + 1 : cx + 1 + d], gray[:, cx - 1 :: -1][:, :d]
    both = foreground[:, cx + 1 : cx + 1 + d] & foreground[:, cx - 1 :: -1][:, :d]
    if not both.any():
        return 0.0
    lo = float(gray.min())
    eps = 0.02 * (float(gray.max()) - lo or 1.0)
    _, cols = np.nonzero(both)
    ratio = np.log((right[both] - lo + eps) / (left[both] - lo + eps))
    return float(abs(np.median(ratio / (2.0 * (cols + 1) / w))))


def image_features(
    image: np.ndarray,
    *,
    original_shape: tuple[int, ...] | None = None,
    name: str = "image",
) -> dict[str, float]:
    """Statistics of one slice for drift monitoring; keys are :data:`FEATURE_NAMES`.

    ``image`` is the model input (``(3, S, S)`` float from ``preprocess_slice``) or a raw
    slice (``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``, any numeric dtype). ``original_shape``
    (the decoded image's shape, before resizing) feeds ``rows``/``cols``; without it they are
    the given array's. Raises :class:`InvalidInputError` naming ``name`` for unusable input.
    """
    chw = _channels_first(image, name)
    rows, cols = _rows_cols(original_shape) if original_shape else chw.shape[1:]
    return image_features_batch(chw[None], original_shape=(rows, cols), name=name)[0]


def image_features_batch(
    batch: np.ndarray, *, original_shape: tuple[int, ...] | None = None, name: str = "image"
) -> list[dict[str, float]]:
    """:func:`image_features` of every image of a ``(N, C, H, W)`` batch of model inputs at
    once (in float32, as the models see them); the asymmetry's median image by image."""
    arr = np.asarray(batch)
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise InvalidInputError(f"{name}: expected a batch (N, C, H, W), got shape {arr.shape}")
    if arr.shape[2] < 3 or arr.shape[3] < 3:
        raise InvalidInputError(f"{name}: image too small for statistics: shape {arr.shape[1:]}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidInputError(f"{name}: pixels must be numeric, got dtype {arr.dtype}")
    x = arr.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InvalidInputError(f"{name}: image contains NaN or infinite values")
    n, c, h, w = x.shape
    gray = x.mean(axis=1, dtype=np.float32) if c > 1 else x[:, 0]
    flat = gray.reshape(n, -1)
    p1, p5, p50, p95, p99 = np.percentile(flat, [1, 5, 50, 95, 99], axis=1).astype(np.float64)
    contrast = p99 - p1
    scale = np.where(contrast > 0, contrast, 1.0)
    foreground = gray > (p1 + 0.1 * contrast).astype(np.float32)[:, None, None]
    gy, gx = np.gradient(gray, axis=(1, 2))
    gradient = np.hypot(gx, gy).mean(axis=(1, 2), dtype=np.float64) / scale
    spread = x.std(axis=1).mean(axis=(1, 2), dtype=np.float64) / scale if c > 1 else np.zeros(n)
    noise = _noise_sigma(gray)
    bias = _bias_field(gray, foreground, scale)
    mean = flat.mean(axis=1, dtype=np.float64)
    std = flat.std(axis=1, dtype=np.float64)
    fraction = foreground.mean(axis=(1, 2), dtype=np.float64)
    rows, cols = _rows_cols(original_shape) if original_shape else (h, w)
    return [
        {
            "p1": float(p1[i]),
            "p5": float(p5[i]),
            "p50": float(p50[i]),
            "p95": float(p95[i]),
            "p99": float(p99[i]),
            "mean": float(mean[i]),
            "std": float(std[i]),
            "contrast": float(contrast[i]),
            "noise": float(noise[i]),
            "bias_field": float(bias[i]),
            "lr_asymmetry": _lr_asymmetry(gray[i], foreground[i]),
            "gradient": float(gradient[i]),
            "channel_spread": float(spread[i]),
            "foreground_fraction": float(fraction[i]),
            "rows": float(rows),
            "cols": float(cols),
        }
        for i in range(n)
    ]


def pooled_vector(image: np.ndarray, *, grid: int = 16, name: str = "image") -> np.ndarray:
    """The image average-pooled to ``grid`` x ``grid`` per channel, flattened (3 * grid²).

    Grey images are repeated to three channels so every source gives the same length. This
    is the vector :class:`EmbeddingReducer` projects when the serving backend exposes no
    penultimate-layer output (ONNX models here return only probabilities).
    """
    return pooled_vectors(_channels_first(image, name)[None], grid=grid)[0]


def pooled_vectors(batch: np.ndarray, *, grid: int = 16) -> np.ndarray:
    """:func:`pooled_vector` of every image of a ``(N, C, H, W)`` batch: ``(N, 3 * grid²)``."""
    x = np.asarray(batch)[:, :3]
    n, c, h, w = x.shape
    if h % grid == 0 and w % grid == 0:  # equal cells (a model input): a reshaped mean
        cells = x.reshape(n, c, grid, h // grid, grid, w // grid).mean(
            axis=(3, 5), dtype=np.float64
        )
    else:
        ys = np.linspace(0, h, grid + 1).astype(int)
        xs = np.linspace(0, w, grid + 1).astype(int)
        # mean over each cell via cumulative sums: exact area pooling for any size
        integral = np.pad(
            x.astype(np.float64).cumsum(axis=2).cumsum(axis=3), ((0, 0), (0, 0), (1, 0), (1, 0))
        )
        corner = integral[:, :, ys][:, :, :, xs]
        sums = corner[:, :, 1:, 1:] - corner[:, :, :-1, 1:] - corner[:, :, 1:, :-1]
        cells = (sums + corner[:, :, :-1, :-1]) / np.outer(np.diff(ys), np.diff(xs))
    if c == 1:  # grey: three equal channels
        cells = np.repeat(cells, 3, axis=1)
    return cells.reshape(n, -1)


@dataclass(frozen=True)
class EmbeddingReducer:
    """PCA of embedding vectors, fitted on the reference and stored with the model version.

    ``source`` says what the vectors are: ``"pooled16"`` (the default, :func:`pooled_vector`
    of the model input) or ``"penultimate"`` (a backbone's pooled features, when the backend
    can return them). Serving calls :meth:`embed` (images) or :meth:`transform` (vectors).
    """

    mean: np.ndarray
    components: np.ndarray
    """(k, d) principal axes, rows of unit length."""
    explained_variance: np.ndarray
    source: str = "pooled16"
    grid: int = 16

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        *,
        n_components: int = 4,
        source: str = "pooled16",
        grid: int = 16,
    ) -> EmbeddingReducer:
        """Fit a PCA on (N, d) reference vectors."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise InvalidInputError(f"embedding vectors: need (N>=2, d), got shape {x.shape}")
        k = min(n_components, x.shape[0], x.shape[1])
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        # a fixed sign per axis, so refits on the same data give the same coordinates
        signs = np.sign(vt[:k, np.abs(vt[:k]).argmax(axis=1)].diagonal())
        signs[signs == 0] = 1.0
        return cls(
            mean=mean,
            components=vt[:k] * signs[:, None],
            explained_variance=(s[:k] ** 2) / (x.shape[0] - 1),
            source=source,
            grid=grid,
        )

    @classmethod
    def fit_images(cls, images: list[np.ndarray], *, n_components: int = 4, grid: int = 16):
        """Fit on the pooled vectors of reference images."""
        vectors = np.stack([pooled_vector(im, grid=grid) for im in images])
        return cls.fit(vectors, n_components=n_components, source=f"pooled{grid}", grid=grid)

    @property
    def names(self) -> list[str]:
        return [f"emb_{i}" for i in range(self.components.shape[0])]

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """(N, d) or (d,) vectors -> (N, k) or (k,) coordinates."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.shape[-1] != self.mean.shape[0]:
            raise InvalidInputError(
                f"embedding: expected vectors of length {self.mean.shape[0]}, got {x.shape[-1]}"
            )
        # einsum, not BLAS: each row's coordinates are the same whatever the batch around it
        return np.einsum("...d,kd->...k", x - self.mean, self.components)

    def embed(self, image: np.ndarray) -> dict[str, float]:
        """``{"emb_0": ..., ...}`` for one model input (pooled-image reducers only)."""
        return self.embed_batch(_channels_first(image, "image")[None])[0]

    def embed_batch(self, batch: np.ndarray) -> list[dict[str, float]]:
        """:meth:`embed` of every image of a ``(N, C, H, W)`` batch of model inputs."""
        if not self.source.startswith("pooled"):
            raise InvalidInputError(f"embedding: reducer of source {self.source!r} takes vectors")
        coords = self.transform(pooled_vectors(batch, grid=self.grid))
        names = self.names
        return [dict(zip(names, map(float, row), strict=True)) for row in coords]

    def save(self, path: Path) -> None:
        """Write an ``.npz`` (arrays) with a JSON header; :meth:`load` reads it back."""
        header = json.dumps({"source": self.source, "grid": self.grid})
        with open(path, "wb") as fh:
            np.savez(
                fh,
                mean=self.mean,
                components=self.components,
                explained_variance=self.explained_variance,
                header=np.array(header),
            )

    @classmethod
    def load(cls, path: Path) -> EmbeddingReducer:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            return cls(
                mean=data["mean"],
                components=data["components"],
                explained_variance=data["explained_variance"],
                source=header["source"],
                grid=int(header["grid"]),
            )
