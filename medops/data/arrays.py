"""Preprocessed training arrays, cached on disk per dataset version and size.

The cache for one (version, size, channels) is a pair of ``.npy`` files holding a row per sample
of the manifest (images float32 ``(N, C, S, S)``, masks uint8 ``(N, 1, S, S)``) opened as memory
maps, plus ``done.npy`` marking the rows already filled. A call decodes only the rows it
needs that are not done yet, so a second call reads straight from the cache, and calls for
different subsets share one cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medops.data.layouts import threshold_mask
from medops.data.manifest import Manifest, Sample, write_json_atomic
from medops.data.reading import as_mask, read_2d, read_volume
from medops.errors import DatasetError, InvalidInputError
from medops.transforms import PREPROCESS_VERSION, preprocess_slice, resize_mask

CHANNELS = 3
_FLUSH_EVERY = 256
_MAX_WORKERS = 4


@dataclass
class ArraySet:
    """Model-ready arrays for a list of samples, in the order asked for."""

    images: np.ndarray
    """float32 (N, channels, size, size), each row ``preprocess_slice`` of the sample."""
    masks: np.ndarray | None
    """uint8 (N, 1, size, size) of 0/1 for segmentation datasets, else None."""
    labels: np.ndarray
    """int64 (N,): has-tumour for segmentation, class index for classification."""
    sample_ids: list[str]
    patient_ids: list[str]
    decoded: int = 0
    """How many samples this call decoded; the rest came from the cache."""

    def __len__(self) -> int:
        return len(self.sample_ids)


def cache_dir(
    home: Path, version: str, size: int, *, bias_correction: bool = False, channels: int = CHANNELS
) -> Path:
    name = str(size) + ("" if channels == CHANNELS else f"-c{channels}")
    return Path(home) / "cache" / version / (f"{name}-n4" if bias_correction else name)


class _Sources:
    """Reads a sample's image (C, H, W) and mask (H, W), keeping the last volume open."""

    def __init__(self, manifest: Manifest) -> None:
        self.m = manifest
        self._volume: tuple[str, np.ndarray] | None = None
        self._labels: tuple[str, np.ndarray] | None = None

    def _read_volume(self, rel: str, slot: str) -> np.ndarray:
        held: tuple[str, np.ndarray] | None = getattr(self, slot)
        if held is not None and held[0] == rel:
            return held[1]
        arr = read_volume(self.m.root, rel)
        setattr(self, slot, (rel, arr))
        return arr

    def image(self, s: Sample) -> np.ndarray:
        if s.slice_index is None:
            return read_2d(self.m.root / s.image, s.image)
        vol = self._read_volume(s.image, "_volume")
        return vol[:, s.slice_index]

    def mask(self, s: Sample) -> np.ndarray:
        if s.mask is None:
            raise DatasetError(f"{s.image} has no mask; run `medops data validate`")
        if s.slice_index is None:
            decoded = read_2d(self.m.root / s.mask, s.mask)
            threshold = self.m.mask_threshold
            if threshold is not None:  # lossy masks: the declared cut, not "non-zero"
                return threshold_mask(decoded, threshold)
            return as_mask(decoded)
        seg = self._read_volume(s.mask, "_labels")
        if s.slice_index >= seg.shape[1]:
            raise DatasetError(f"{s.mask} has no slice {s.slice_index}: shape {seg.shape}")
        return as_mask(seg[:, s.slice_index])


def source_shapes(manifest: Manifest, sample_ids: list[str]) -> list[tuple[int, ...]]:
    """Each sample's decoded image shape, before resizing: what serving logs as the image size
    beside the drift features."""
    by_id = {s.sample_id: s for s in manifest.samples}
    missing = [i for i in sample_ids if i not in by_id]
    if missing:
        raise DatasetError(f"dataset {manifest.name}: no sample {missing[0]!r}")
    sources = _Sources(manifest)
    return [tuple(sources.image(by_id[i]).shape) for i in sample_ids]


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_memmap(path: Path, dtype: Any, shape: tuple[int, ...]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        del mm
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Cache:
    def __init__(
        self, directory: Path, manifest: Manifest, size: int, bias: bool, channels: int
    ) -> None:
        self.dir = directory
        n = len(manifest.samples)
        self.segmentation = manifest.kind == "segmentation"
        ids = "\n".join(s.sample_id for s in manifest.samples).encode()
        meta = {
            "preprocess_version": PREPROCESS_VERSION,
            "size": size,
            "bias_correction": bias,
            "samples": n,
            "sample_ids_sha256": hashlib.sha256(ids).hexdigest(),
            "masks": self.segmentation,
        }
        if channels != CHANNELS:  # absent for 3: caches built before channels varied stay valid
            meta["channels"] = channels
        shapes = {"images": (n, channels, size, size), "masks": (n, 1, size, size)}
        directory.mkdir(parents=True, exist_ok=True)
        meta_path = directory / "meta.json"
        fresh = True
        with contextlib.suppress(OSError, ValueError):
            fresh = json.loads(meta_path.read_text()) != meta
        for attempt in range(2):
            if fresh or attempt:
                _new_memmap(directory / "images.npy", np.float32, shapes["images"])
                if self.segmentation:
                    _new_memmap(directory / "masks.npy", np.uint8, shapes["masks"])
                _save_atomic(directory / "done.npy", np.zeros(n, dtype=bool))
                write_json_atomic(meta_path, meta)
            try:
                self.images = np.load(directory / "images.npy", mmap_mode="r+")
                self.masks = (
                    np.load(directory / "masks.npy", mmap_mode="r+") if self.segmentation else None
                )
                self.done = np.load(directory / "done.npy")
            except (OSError, ValueError):
                continue  # damaged cache: build it again
            if (
                self.images.shape == shapes["images"]
                and (self.masks is None or self.masks.shape == shapes["masks"])
                and self.done.shape == (n,)
            ):
                return
        raise DatasetError(f"{directory}: cannot build the array cache")

    def commit(self) -> None:
        # Rows written through the maps reach the page cache at once, so a crashed process
        # loses no row it marked done; no msync, which would stall on every commit.
        _save_atomic(self.dir / "done.npy", self.done)


def _gather(source: np.memmap, rows: np.ndarray) -> np.ndarray:
    """``source[rows]``, read from the file run by run: plain reads are several times
    faster than faulting the pages of the memory map in, and subsets are usually long runs
    of consecutive rows."""
    out = np.empty((len(rows), *source.shape[1:]), dtype=source.dtype)
    if not len(rows):
        return out
    row_bytes = out[0].nbytes
    starts = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist()]
    stops = [*starts[1:], len(rows)]
    with open(str(source.filename), "rb", buffering=0) as fh:
        for start, stop in zip(starts, stops, strict=True):
            view = out[start:stop].data.cast("B")
            fh.seek(source.offset + int(rows[start]) * row_bytes)
            done = 0
            while done < len(view):
                got = fh.readinto(view[done:])
                if not got:
                    raise DatasetError(f"{source.filename}: array cache is truncated; delete it")
                done += got
    return out


def _prepare(
    sources: _Sources,
    s: Sample,
    size: int,
    segmentation: bool,
    bias_correction: bool,
    channels: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    # the mask takes the image's geometry: the whole frame to size x size, centres aligned
    image = preprocess_slice(
        sources.image(s), size, channels=channels, bias_correction=bias_correction
    )
    return image, resize_mask(sources.mask(s), size) if segmentation else None


def _fill(
    cache: _Cache,
    sources: _Sources,
    manifest: Manifest,
    todo: list[int],
    size: int,
    bias_correction: bool,
    channels: int,
    bar: tqdm,
) -> None:
    segmentation = cache.masks is not None

    def prepare(row: int) -> tuple[np.ndarray, np.ndarray | None]:
        sample = manifest.samples[row]
        return _prepare(sources, sample, size, segmentation, bias_correction, channels)

    # 2D files decode and preprocess in threads (zlib, JPEG, numpy and torch release the
    # GIL); slices of volumes share one open volume and stay in order on this thread.
    volumes = any(manifest.samples[row].slice_index is not None for row in todo)
    workers = 1 if volumes else min(_MAX_WORKERS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(prepare, todo) if workers > 1 else map(prepare, todo)
        for n, (row, (image, mask)) in enumerate(zip(todo, results, strict=True), 1):
            cache.images[row] = image
            if cache.masks is not None:
                cache.masks[row] = mask
            cache.done[row] = True
            bar.update(1)
            if n % _FLUSH_EVERY == 0:
                cache.commit()


def load_arrays(
    manifest: Manifest,
    sample_ids: list[str],
    *,
    size: int,
    home: Path | str,
    progress: bool = False,
    bias_correction: bool = False,
    channels: int = CHANNELS,
) -> ArraySet:
    """Model-ready arrays for ``sample_ids``, cached under ``<home>/cache/<version>/<size>/``.

    Images are :func:`medops.transforms.preprocess_slice` of each sample (``channels``, 3 by
    default), masks :func:`medops.transforms.resize_mask` of its mask (thresholded at the
    manifest's mask threshold when it has one); labels come from the manifest.
    """
    if not isinstance(size, int) or size < 1:
        raise InvalidInputError(f"size must be a positive integer, got {size!r}")
    if not isinstance(channels, int) or not 1 <= channels <= 4:
        raise InvalidInputError(f"channels must be 1 to 4, got {channels!r}")
    unknown = [sid for sid in sample_ids if sid not in manifest.index]
    if unknown:
        raise InvalidInputError(
            f"{len(unknown)} sample id(s) are not in dataset {manifest.name}, e.g. {unknown[0]!r}"
        )
    rows = np.array([manifest.index[sid] for sid in sample_ids], dtype=np.intp)
    cache = _Cache(
        cache_dir(
            Path(home), manifest.version, size, bias_correction=bias_correction, channels=channels
        ),
        manifest,
        size,
        bias_correction,
        channels,
    )
    todo = sorted({int(r) for r in rows if not cache.done[r]})
    sources = _Sources(manifest)
    with tqdm(
        total=len(todo),
        desc=f"preprocessing {size}px",
        unit="slice",
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        try:
            _fill(cache, sources, manifest, todo, size, bias_correction, channels, bar)
        finally:
            if todo:
                cache.commit()
    samples = [manifest.samples[r] for r in rows]
    return ArraySet(
        images=_gather(cache.images, rows),
        masks=None if cache.masks is None else _gather(cache.masks, rows),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        sample_ids=[s.sample_id for s in samples],
        patient_ids=[s.patient_id for s in samples],
        decoded=len(todo),
    )
