"""The array-set shape training and evaluation consume, and the checks that guard it.

``medops.data.ArraySet`` satisfies :class:`SliceArrays`; any object with the same attributes
does too (tests build small synthetic ones).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from medops.errors import DatasetError, TrainingError


class SliceArrays(Protocol):
    """2D slices ready for a network.

    images float32 (N, 3, S, S) in [0, 1]; masks uint8 (N, 1, S, S) (non-zero = tumour) or None;
    labels int64 (N,); sample_ids and patient_ids one per slice.
    """

    images: np.ndarray
    masks: np.ndarray | None
    labels: np.ndarray
    sample_ids: list[str]
    patient_ids: list[str]


def check_arrays(
    data: SliceArrays,
    *,
    name: str,
    needs_masks: bool = False,
    image_size: int | None = None,
    in_channels: int = 3,
) -> None:
    """Raise :class:`DatasetError` naming ``name`` and the field if ``data`` is inconsistent.

    Messages name sample indices, never patient or sample identifiers.
    """
    images = np.asarray(data.images)
    if images.ndim != 4 or images.shape[0] == 0:
        if images.ndim >= 1 and images.shape[0] == 0:
            raise DatasetError(f"{name}: the dataset is empty (0 slices)")
        raise DatasetError(f"{name}.images: expected (N, C, S, S), got shape {images.shape}")
    n, c, h, w = images.shape
    if c != in_channels:
        raise DatasetError(f"{name}.images: expected {in_channels} channels, got {c}")
    if h != w:
        raise DatasetError(f"{name}.images: slices must be square, got {h}x{w}")
    if image_size is not None and h != image_size:
        raise DatasetError(
            f"{name}.images: slices are {h}x{w} but the configured image_size is {image_size}; "
            "load the arrays at the configured size"
        )
    if len(data.labels) != n:
        raise DatasetError(f"{name}.labels: {len(data.labels)} labels for {n} images")
    if len(data.patient_ids) != n:
        raise DatasetError(f"{name}.patient_ids: {len(data.patient_ids)} ids for {n} images")
    finite = np.isfinite(images.reshape(n, -1)).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DatasetError(f"{name}.images: slice index {bad} contains NaN or infinite values")
    if needs_masks:
        if data.masks is None:
            raise DatasetError(f"{name}.masks: the segmenter needs masks and there are none")
        masks = np.asarray(data.masks)
        if masks.shape != (n, 1, h, w):
            raise DatasetError(
                f"{name}.masks: masks do not match images: masks {tuple(masks.shape)}, "
                f"expected {(n, 1, h, w)}"
            )


def check_trainable(data: SliceArrays, *, segmenter: bool, num_classes: int) -> None:
    """Raise :class:`TrainingError` when the training data cannot teach anything."""
    if segmenter:
        assert data.masks is not None
        if not np.asarray(data.masks).any():
            raise TrainingError("train.masks: no tumour pixels in any training mask (single class)")
        return
    labels = np.asarray(data.labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DatasetError(
            f"train.labels: labels must lie in [0, {num_classes - 1}], "
            f"got values from {labels.min()} to {labels.max()}"
        )
    present = np.unique(labels)
    if len(present) < 2:
        raise TrainingError(
            f"train.labels: single-class training data (only class {int(present[0])}); "
            "a classifier needs at least two classes"
        )
