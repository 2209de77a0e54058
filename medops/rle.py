"""Run-length encoded masks as in COCO's uncompressed RLE: ``{"size": [h, w], "counts": [...]}``.

Pixels are read in column-major (Fortran) order; ``counts`` alternate runs of 0 and 1,
starting with 0 (a mask whose first pixel is set starts with a zero-length run). The same
format pycocotools reads, so reviewers' tools can produce it directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medops.errors import InvalidInputError


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Encode a 2D boolean/0-1 mask."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InvalidInputError(f"mask: expected a 2D array, got shape {m.shape}")
    flat = (m != 0).reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts: list[int] = np.diff(bounds).tolist()  # Python ints already
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


def validate_rle(rle: Any, *, field: str = "mask_rle") -> dict[str, Any]:
    """Check shape and counts; return a clean copy or raise :class:`InvalidInputError`."""
    if not isinstance(rle, Mapping):
        raise InvalidInputError(f"{field}: expected an object with 'size' and 'counts'")
    size, counts = rle.get("size"), rle.get("counts")
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise InvalidInputError(f"{field}.size: expected [rows, cols] of positive integers")
    if not isinstance(counts, list | tuple) or not _non_negative_ints(counts):
        raise InvalidInputError(f"{field}.counts: expected a list of non-negative integers")
    total = int(size[0]) * int(size[1])
    if sum(counts) != total:
        raise InvalidInputError(
            f"{field}.counts: runs cover {sum(counts)} pixels, size {size[0]}x{size[1]} has {total}"
        )
    # plain ints already (checked above); int subclasses become plain ints
    clean = list(counts) if set(map(type, counts)) <= {int} else [int(c) for c in counts]
    return {"size": [int(size[0]), int(size[1])], "counts": clean}


def _non_negative_ints(counts: list[Any] | tuple[Any, ...]) -> bool:
    """Every count a plain non-negative int (not a bool). A mask has thousands of runs: the
    types are checked as a set and the sign with ``min``, at C speed, before any per-item
    check on the rare mixed list (int subclasses other than bool)."""
    if not counts:
        return True
    types = set(map(type, counts))
    if types == {int}:
        return min(counts) >= 0
    return all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode to a boolean (rows, cols) mask."""
    clean = validate_rle(rle)
    h, w = clean["size"]
    values = np.arange(len(clean["counts"])) % 2
    flat = np.repeat(values, clean["counts"]).astype(bool)
    return flat.reshape((h, w), order="F")


def dice_from_counts(intersection: Any, predicted: Any, truth: Any) -> np.ndarray:
    """Dice from pixel counts, elementwise (scalars or arrays, e.g. one entry per patient):
    ``2 |A and B| / (|A| + |B|)``, 1.0 where both masks are empty."""
    inter = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(predicted, dtype=np.float64) + np.asarray(truth, dtype=np.float64)
    return np.where(total > 0, 2.0 * inter / np.where(total > 0, total, 1.0), 1.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks of one shape; two empty masks agree perfectly (1.0).

    The platform's one Dice (evaluation, training, the monitor's feedback quality); it lives
    here, beside the mask encoding, so that the monitor gets it without importing torch."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InvalidInputError(f"mask: shapes differ, {a.shape} vs {b.shape}")
    both = np.count_nonzero(a & b)
    return float(dice_from_counts(both, np.count_nonzero(a), np.count_nonzero(b)))


def rle_encode_volume(mask: np.ndarray) -> list[dict[str, Any]]:
    """One RLE per slice of a (slices, rows, cols) mask."""
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InvalidInputError(f"mask: expected a 3D array, got shape {m.shape}")
    return [rle_encode(s) for s in m]


def rle_decode_volume(slices: list[Mapping[str, Any]]) -> np.ndarray:
    """Inverse of :func:`rle_encode_volume`: a boolean (slices, rows, cols) mask."""
    if not slices:
        raise InvalidInputError("mask: no slices")
    return np.stack([rle_decode(s) for s in slices])
