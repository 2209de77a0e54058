"""The dataset manifest: what a dataset holds, where, and its content-hash version."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from medops.errors import DatasetError

MANIFEST_SCHEMA = 1
"""Bumped whenever the way files become samples changes; part of every version hash."""

Kind = Literal["segmentation", "classification"]
UNKNOWN_LABEL = -1
"""Label of a segmentation sample whose mask is missing."""


@dataclass(frozen=True)
class Sample:
    """One 2D training example.

    ``image`` and ``mask`` are paths relative to the dataset root (for volumes, the volume file
    or the DICOM series folder, with ``slice_index`` the slice along the third voxel axis).
    ``label``: for segmentation 1 when the mask is non-empty, 0 when empty, -1 when missing;
    for classification the index of the class in ``Manifest.classes``.
    """

    sample_id: str
    patient_id: str
    image: str
    mask: str | None
    label: int
    slice_index: int | None = None


PatientAttrs = dict[str, str | float | None]


@dataclass
class Manifest:
    """A versioned dataset: its samples, patients and the content hash of every file.

    ``version`` is the first 16 hex digits of a sha256 over the sorted (path, content hash)
    pairs, so the same files always give the same version and any changed, added, removed or
    renamed file gives a new one; a layout's reading settings (a mask threshold, declared
    groups) count too.
    """

    name: str
    layout: str
    kind: Kind
    root: Path
    classes: list[str]
    samples: list[Sample]
    patients: dict[str, PatientAttrs]
    version: str
    hashes: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)
    """Layout-specific descriptive metadata (MSD dataset.json fields, ...)."""
    path: Path | None = field(default=None, compare=False)
    """Where this manifest was saved (``.../<name>/<version>/manifest.json``), if it was."""

    @cached_property
    def by_id(self) -> dict[str, Sample]:
        return {s.sample_id: s for s in self.samples}

    @cached_property
    def index(self) -> dict[str, int]:
        """Position of each sample id in ``samples``."""
        return {s.sample_id: i for i, s in enumerate(self.samples)}

    @property
    def mask_threshold(self) -> int | None:
        """A mask pixel is foreground at this value or above; None: any non-zero value."""
        value = self.info.get("mask_threshold")
        return int(value) if isinstance(value, int) else None

    def image_path(self, sample: Sample) -> Path:
        return self.root / sample.image

    def mask_path(self, sample: Sample) -> Path | None:
        return None if sample.mask is None else self.root / sample.mask

    def patient_labels(self) -> dict[str, int]:
        """One label per patient: has-tumour (max) for segmentation, majority class otherwise."""
        per: dict[str, list[int]] = {}
        for s in self.samples:
            per.setdefault(s.patient_id, []).append(s.label)
        if self.kind == "segmentation":
            return {p: max(labels) for p, labels in per.items()}
        return {p: Counter(labels).most_common(1)[0][0] for p, labels in per.items()}

    def class_counts(self) -> dict[str, int]:
        """Samples per class name (segmentation: no_tumour / tumour slices)."""
        counts = Counter(s.label for s in self.samples)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    @property
    def directory(self) -> Path | None:
        return None if self.path is None else self.path.parent

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "name": self.name,
            "layout": self.layout,
            "kind": self.kind,
            "root": str(self.root),
            "version": self.version,
            "classes": list(self.classes),
            "info": self.info,
            "patients": self.patients,
            "samples": [asdict(s) for s in self.samples],
            "hashes": dict(sorted(self.hashes.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> Manifest:
        where = str(path) if path else "manifest"
        if data.get("schema") != MANIFEST_SCHEMA:
            raise DatasetError(
                f"{where}: manifest schema {data.get('schema')!r} is not {MANIFEST_SCHEMA}; "
                "ingest the dataset again"
            )
        try:
            return cls(
                name=data["name"],
                layout=data["layout"],
                kind=data["kind"],
                root=Path(data["root"]),
                classes=list(data["classes"]),
                samples=[Sample(**s) for s in data["samples"]],
                patients=dict(data["patients"]),
                version=data["version"],
                hashes=dict(data["hashes"]),
                info=dict(data.get("info", {})),
                path=path,
            )
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{where}: malformed manifest ({exc})") from None

    def save(self, path: Path) -> Path:
        """Write the manifest atomically as JSON; remembers ``path``."""
        write_json_atomic(path, self.to_dict())
        self.path = path
        return path


def compute_version(hashes: dict[str, str], settings: dict[str, Any] | None = None) -> str:
    """The content version of a dataset: its files, and the ``settings`` that shaped its
    samples (none for the layouts whose files say everything)."""
    digest = hashlib.sha256(f"medops-manifest-{MANIFEST_SCHEMA}\n".encode())
    for rel, sha in sorted(hashes.items()):
        digest.update(f"{rel}\0{sha}\n".encode())
    if settings:
        digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_manifest(path: Path | str) -> Manifest:
    """Load a manifest from its ``manifest.json``, its version folder, or the dataset folder
    holding the versions (the most recently written version is taken)."""
    p = Path(path)
    if p.is_dir():
        if (p / "manifest.json").is_file():
            p = p / "manifest.json"
        else:
            found = sorted(p.glob("*/manifest.json"), key=lambda f: f.stat().st_mtime)
            if not found:
                raise DatasetError(f"{path}: no manifest.json here; run `medops data ingest`")
            p = found[-1]
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: malformed manifest (not a JSON object)")
    return Manifest.from_dict(data, path=p.resolve())
