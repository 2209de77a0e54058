"""Preprocessing shared by training and serving.

Training (through :func:`medops.data.load_arrays`) and the serving gateway call the very same
:func:`preprocess_slice`, so a model sees at inference exactly what it saw in training. Any
change to what these functions compute must bump :data:`PREPROCESS_VERSION`, which keys the
preprocessed-array caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medops.errors import InvalidInputError

if TYPE_CHECKING:
    from medops.imaging.image import Image

PREPROCESS_VERSION = 1
"""Version of the preprocessing below; caches of preprocessed arrays are keyed by it."""

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def _as_chw(slice_: np.ndarray, what: str = "slice") -> np.ndarray:
    arr = np.asarray(slice_)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InvalidInputError(f"{what} must be (C, H, W) or (H, W), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise InvalidInputError(f"{what} is empty: shape {arr.shape}")
    if arr.dtype.kind not in "buif":
        raise InvalidInputError(f"{what} has unsupported dtype {arr.dtype}")
    return arr


def _u8_percentiles(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Low/high percentiles (NumPy's linear method) and min/max of uint8 rows via histograms."""
    n = x.shape[1]
    counts = np.stack([np.bincount(row, minlength=256) for row in x])
    cum = counts.cumsum(axis=1)
    present = counts > 0
    mn = present.argmax(axis=1).astype(np.float32)
    mx = (255 - present[:, ::-1].argmax(axis=1)).astype(np.float32)
    bounds = []
    for q in (LOW_PERCENTILE, HIGH_PERCENTILE):
        v = q / 100.0 * (n - 1)
        k0 = int(np.floor(v))
        k1 = min(k0 + 1, n - 1)
        # the sorted row's k-th value: how many histogram levels hold k or fewer pixels
        a, b = (cum <= k0).sum(axis=1), (cum <= k1).sum(axis=1)
        bounds.append((a + (b - a) * (v - k0)).astype(np.float32))
    return bounds[0], bounds[1], mn, mx


def _normalise_rows(flat_in: np.ndarray) -> np.ndarray:
    """:func:`normalise_intensity` of each row of a ``(rows, pixels)`` array, float32."""
    if flat_in.dtype == np.uint8:
        # histogram route: same percentiles, a fraction of the cost of sorting
        lo, hi, mn, mx = _u8_percentiles(flat_in)
    else:
        x: np.ndarray = flat_in.astype(np.float32)
        if flat_in.dtype.kind == "f" and not np.isfinite(x).all():
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = np.percentile(x, [LOW_PERCENTILE, HIGH_PERCENTILE], axis=1).astype(np.float32)
        mn, mx = x.min(axis=1), x.max(axis=1)
    flat = hi <= lo
    lo = np.where(flat, mn, lo).astype(np.float32)
    hi = np.where(flat, mx, hi).astype(np.float32)
    span = hi - lo
    scale = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
    if flat_in.dtype == np.uint8:
        levels = np.arange(256, dtype=np.float32)
        lut = np.clip((levels[None] - lo[:, None]) * scale[:, None], 0.0, 1.0)
        out = np.empty(flat_in.shape, np.float32)
        for i in range(len(flat_in)):
            np.take(lut[i], flat_in[i], out=out[i])
        return out
    out = (x - lo[:, None]) * scale[:, None]
    np.clip(out, 0.0, 1.0, out=out)
    return out


def normalise_intensity(slice_: np.ndarray) -> np.ndarray:
    """Per-channel robust scaling to [0, 1], float32.

    Each channel is clipped to its 0.5th and 99.5th percentiles and scaled to [0, 1]; when
    those percentiles coincide (a mostly blank slice) the channel's min and max are used
    instead, and a constant channel becomes zeros. Non-finite values count as 0.
    """
    arr = _as_chw(slice_)
    flat_in = arr.reshape(arr.shape[0], -1)
    return _normalise_rows(flat_in).reshape(arr.shape)


_resize_threads: int | None = None
"""Torch intra-op threads for the resize in this process (None: torch's default)."""


def limit_resize_threads(threads: int) -> None:
    """Run the resize on at most ``threads`` torch threads in this process, from its next call.

    For servers, where the models own the cores: a multi-threaded resize of one slice measured
    tens of times slower than a single-threaded one on a busy 2-core machine (thread wake-ups),
    with the same output bit for bit (torch splits the work by plane and row, never a sum).
    Training leaves torch's default."""
    global _resize_threads
    if threads < 1:
        raise InvalidInputError(f"resize threads must be positive, got {threads}")
    _resize_threads = int(threads)


def _resize_float(arr: np.ndarray, size: int) -> np.ndarray:
    """Bilinear antialiased resize of ``(C, H, W)`` or a batch ``(N, C, H, W)`` to ``size``.

    Each image is resized on its own, whatever the batch (per-plane weights, no reduction
    across planes), so a batch gives each slice exactly what it gets alone."""
    if arr.shape[-2:] == (size, size):
        return np.ascontiguousarray(arr, dtype=np.float32)
    import torch  # imported lazily: the command line should not pay for torch at start-up
    import torch.nn.functional as F

    if _resize_threads is not None and torch.get_num_threads() != _resize_threads:
        torch.set_num_threads(_resize_threads)
    batch = arr.ndim == 4
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    # antialias only matters when shrinking; it matches PIL's resampling there
    out = F.interpolate(
        t if batch else t[None],
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    res: np.ndarray = out.numpy() if batch else out[0].numpy()
    return res


def n4_bias_correction(slice_: np.ndarray) -> np.ndarray:
    """N4 bias-field correction (SimpleITK) of each channel of a (C, H, W) slice, float32.

    The field is fitted on a 2x shrunk copy inside an Otsu foreground mask and applied at
    full resolution; channels that are constant or have no foreground are returned unchanged.
    """
    import SimpleITK as sitk

    arr = _as_chw(slice_).astype(np.float32)
    out = np.empty_like(arr)
    for c in range(arr.shape[0]):
        channel: np.ndarray = arr[c]
        lo, hi = float(channel.min()), float(channel.max())
        if hi <= lo or min(channel.shape) < 8:
            out[c] = channel
            continue
        shifted = channel - lo  # N4 works on non-negative intensities (CT/DICOM may be < 0)
        image = sitk.GetImageFromArray(shifted)
        small = sitk.Shrink(image, [2, 2])
        mask = sitk.OtsuThreshold(small, 0, 1, 200)
        if not sitk.GetArrayViewFromImage(mask).any():
            out[c] = channel
            continue
        corrector = sitk.N4BiasFieldCorrectionImageFilter()
        corrector.SetMaximumNumberOfIterations([20, 20, 20])
        corrector.Execute(small, mask)
        log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
        out[c] = shifted / np.exp(log_field).astype(np.float32) + lo
    return out


def preprocess_slice(
    slice_: np.ndarray, size: int, *, channels: int = 3, bias_correction: bool = False
) -> np.ndarray:
    """Turn one slice of any dtype into the model input: float32 ``(channels, size, size)``.

    Steps: optional N4 bias correction; per-channel robust normalisation to [0, 1]
    (:func:`normalise_intensity`); bilinear antialiased resize to ``size``; channel
    adaptation (extra channels such as alpha are dropped, missing ones repeat the last).
    ``slice_`` is ``(C, H, W)`` (or ``(H, W)`` for grey). :func:`preprocess_slices` is the
    same for many slices at once (one code path: this is a batch of one).
    """
    return preprocess_slices([slice_], size, channels=channels, bias_correction=bias_correction)[0]


def preprocess_slices(
    slices: Sequence[np.ndarray],
    size: int,
    *,
    channels: int = 3,
    bias_correction: bool = False,
) -> np.ndarray:
    """:func:`preprocess_slice` of each slice, as one float32 ``(N, channels, size, size)``
    batch, bit-identical to calling it per slice: normalisation stays per slice, the resize
    runs once over slices of one shape (a volume's), which saves the per-call overhead."""
    if not isinstance(size, int | np.integer) or size < 1:
        raise InvalidInputError(f"size must be a positive integer, got {size!r}")
    if channels < 1:
        raise InvalidInputError(f"channels must be positive, got {channels}")
    arrays = []
    for slice_ in slices:
        arr = _as_chw(slice_)
        if arr.shape[0] > channels:
            arr = arr[:channels]
        if bias_correction:
            arr = n4_bias_correction(arr)
        arrays.append(arr)
    if not arrays:
        return np.zeros((0, channels, int(size), int(size)), np.float32)
    if len({(a.shape, a.dtype) for a in arrays}) == 1:
        # a volume's slices: every channel of every slice normalised as one set of rows
        batch = np.stack(arrays)
        rows = _normalise_rows(batch.reshape(-1, batch[0, 0].size))
        return _to_channels(_resize_float(rows.reshape(batch.shape), int(size)), channels)
    # slices of different shapes, channel counts or dtypes: one by one
    return np.concatenate(
        [
            _to_channels(_resize_float(normalise_intensity(a)[None], int(size)), channels)
            for a in arrays
        ]
    )


def _to_channels(batch: np.ndarray, channels: int) -> np.ndarray:
    """Clip a resized ``(N, C, S, S)`` batch to [0, 1] and adapt it to ``channels``."""
    np.clip(batch, 0.0, 1.0, out=batch)
    missing = channels - batch.shape[1]
    if missing > 0:
        # repeat the last channel: grey gives three equal channels, two modalities (a, b, b)
        batch = np.concatenate([batch, np.repeat(batch[:, -1:], missing, axis=1)], axis=1)
    return batch


def _nearest_index(src: int, dst: int) -> np.ndarray:
    # pixel-centre nearest neighbour (torch's "nearest-exact")
    idx = np.floor((np.arange(dst) + 0.5) * (src / dst)).astype(np.intp)
    res: np.ndarray = np.minimum(idx, src - 1)
    return res


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary mask ``(H, W)`` or ``(1, H, W)`` -> uint8 ``(1, size, size)`` of 0/1, nearest."""
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or 0 in arr.shape:
        raise InvalidInputError(f"mask must be (H, W) or (1, H, W), got shape {np.shape(mask)}")
    if not isinstance(size, int | np.integer) or size < 1:
        raise InvalidInputError(f"size must be a positive integer, got {size!r}")
    h, w = arr.shape
    out = arr[_nearest_index(h, size)][:, _nearest_index(w, size)] > 0
    return out.astype(np.uint8)[None]


def restore_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a model output ``(..., S, S)`` back to the original ``(H, W)`` (nearest).

    Leading axes and dtype are kept, so it serves binary masks and probability maps alike.
    """
    arr = np.asarray(mask)
    if arr.ndim < 2 or 0 in arr.shape:
        raise InvalidInputError(f"mask must have at least 2 dimensions, got shape {arr.shape}")
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise InvalidInputError(f"target shape must be positive, got {shape}")
    rows = _nearest_index(arr.shape[-2], h)
    cols = _nearest_index(arr.shape[-1], w)
    return np.ascontiguousarray(arr[..., rows, :][..., cols])


def volume_to_slices(image: Image) -> list[np.ndarray]:
    """Split a volume into its slices along the third voxel axis, each ``(C, Y, X)``."""
    return [image.slice(k) for k in range(image.num_slices)]


def drop_small_components(masks: np.ndarray, min_px: int) -> np.ndarray:
    """Binary masks (..., H, W) with 8-connected components smaller than ``min_px`` removed.

    The segmenter's post-processing, applied alike in evaluation and serving; ``min_px`` is
    chosen on validation data and stored with the model.
    """
    from scipy import ndimage

    binary = np.asarray(masks, dtype=bool)
    if min_px <= 1 or not binary.any():
        return binary
    flat = binary.reshape(-1, *binary.shape[-2:])
    out = np.zeros_like(flat)
    structure = np.ones((3, 3), dtype=bool)
    for i, mask in enumerate(flat):
        if not mask.any():
            continue
        labels, count = ndimage.label(mask, structure=structure)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_px
        keep[0] = False
        out[i] = keep[labels]
    return out.reshape(binary.shape)
