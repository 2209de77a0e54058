"""Ingesting a dataset folder into a versioned manifest."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tqdm import tqdm

from medops.data.layouts import LayoutOptions, detect_layout, scan
from medops.data.manifest import Manifest, compute_version
from medops.data.reading import read_bytes, sha256_bytes
from medops.errors import DatasetError, InvalidInputError

_GENERIC_NAMES = {"training", "train", "testing", "test", "validation", "val", "data"}


def default_name(root: Path) -> str:
    """Dataset name from the folder name; generic names (``Training``) get the parent's."""
    name = root.name
    if name.lower() in _GENERIC_NAMES and root.parent.name:
        name = f"{root.parent.name}-{name}"
    return _slug(name)


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    return slug or "dataset"


class _Hasher:
    """Hashes files once each (sha256 of the content), with an optional progress bar."""

    def __init__(self, root: Path, bar: tqdm | None) -> None:
        self.root = root
        self.bar = bar
        self.hashes: dict[str, str] = {}

    def __call__(self, rel: str) -> str:
        sha = self.hashes.get(rel)
        if sha is None:
            sha = self.hashes[rel] = sha256_bytes(read_bytes(self.root / rel, rel))
            if self.bar is not None:
                self.bar.update(1)
        return sha


def datasets_dir(home: Path) -> Path:
    return Path(home) / "datasets"


def ingest(
    path: Path | str,
    home: Path | str,
    *,
    name: str | None = None,
    progress: bool = False,
    layout: str | None = None,
    options: LayoutOptions | None = None,
) -> Manifest:
    """Ingest the dataset at ``path`` and save its manifest under ``home``.

    The layout is detected (see :mod:`medops.data.layouts`); every file is hashed and the
    manifest written to ``<home>/datasets/<name>/<version>/manifest.json``. An unknown or
    empty layout raises :class:`~medops.errors.DatasetError` naming the path, and so does a
    declared ``layout`` the folder does not read as. ``options``: what a task file declares
    beyond the files (an image-mask-folders mask threshold, samples kept together).
    """
    root = Path(path).expanduser().resolve()
    detected = detect_layout(root, options)
    if layout is not None and layout != detected:
        raise DatasetError(f"{root}: declared {layout}, but the folder reads as {detected}")
    if name is not None and not name.strip():
        raise InvalidInputError("name: must not be empty")
    dataset = _slug(name) if name else default_name(root)
    with tqdm(
        desc=f"hashing {dataset}", unit="file", disable=not progress, file=sys.stderr, leave=False
    ) as bar:
        hasher = _Hasher(root, bar)
        found = scan(root, detected, hasher, options)
        bar.total = len(set(found.files))
        bar.refresh()
        for rel in found.files:
            hasher(rel)
    hashes = {rel: hasher.hashes[rel] for rel in found.files}
    ids = [s.sample_id for s in found.samples]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{root}: two samples share one id; rename the clashing files")
    manifest = Manifest(
        name=dataset,
        layout=found.layout,
        kind=found.kind,
        root=root,
        classes=found.classes,
        samples=found.samples,
        patients=found.patients,
        version=compute_version(hashes, found.settings),
        hashes=hashes,
        info=found.info,
    )
    manifest.save(datasets_dir(Path(home)) / dataset / manifest.version / "manifest.json")
    return manifest
