"""Dataset validation: a readable report of what is wrong with a dataset and where.

Every file is hashed again (a file changed since ingest is reported), decoded and checked:
shape, dtype, intensity range, binary masks, image/mask pairing, duplicate images, stray
files and empty folders, and, given splits, patient leakage. What a decode teaches is cached
beside the manifest by content hash, so validating an unchanged dataset again is fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from medops.data.layouts import _LGG_MASK, visible
from medops.data.manifest import Manifest, Sample, write_json_atomic
from medops.data.reading import (
    as_mask,
    decode_2d,
    is_dicom_file,
    is_image_name,
    is_nifti_name,
    read_bytes,
    read_volume,
    sha256_bytes,
)
from medops.data.splits import SPLIT_NAMES, Splits
from medops.errors import ImageReadError, MedopsError

Severity = Literal["error", "warning"]
_FACTS_FILE = "file-facts.json"
_FACTS_SCHEMA = 1
_ROOT_DOCS = {"data.csv", "dataset.json"}
_MAX_VALUES = 8
_SHAPES_SHOWN = 10


@dataclass(frozen=True)
class Issue:
    severity: Severity
    code: str
    message: str
    sample_id: str | None = None


@dataclass
class ValidationReport:
    """``ok`` is true when no issue is an error; warnings are worth reading but not fatal."""

    ok: bool
    issues: list[Issue]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def codes(self) -> set[str]:
        return {i.code for i in self.issues}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "issues": [vars(i) for i in self.issues],
            "stats": self.stats,
        }

    def to_text(self, max_issues: int = 50) -> str:
        s = self.stats
        lines = [
            f"dataset  {s.get('name')}  version {s.get('version')}  "
            f"({s.get('layout')}, {s.get('kind')})",
            f"result   {'OK' if self.ok else 'FAILED'}: "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)",
            f"patients {s.get('patients')}   samples {s.get('samples')}",
        ]
        if "positive_samples" in s:
            positive = s.get("positive_class", "tumour")
            lines.append(f"{positive}-positive samples {s['positive_samples']}")
        if "class_counts" in s:
            counts = ", ".join(f"{k} {v}" for k, v in s["class_counts"].items())
            lines.append(f"classes  {counts}")
        if s.get("image_shapes"):
            common = sorted(s["image_shapes"].items(), key=lambda kv: -kv[1])
            shapes = ", ".join(f"{k} ({v})" for k, v in common[:_SHAPES_SHOWN])
            if len(common) > _SHAPES_SHOWN:  # frames of hundreds of sizes (Kvasir-SEG: 333)
                shapes += f" and {len(common) - _SHAPES_SHOWN} other shapes"
            lines.append(f"shapes   {shapes}")
        if s.get("dtypes"):
            lines.append("dtypes   " + ", ".join(f"{k} ({v})" for k, v in s["dtypes"].items()))
        if "intensity" in s:
            lines.append(f"range    {s['intensity']['min']:g} .. {s['intensity']['max']:g}")
        for name, sp in s.get("splits", {}).items():
            extra = f", {sp['positive']} positive" if "positive" in sp else ""
            lines.append(f"{name:<8} {sp['patients']} patients, {sp['samples']} samples{extra}")
        if self.issues:
            lines.append("issues:")
            for issue in self.issues[:max_issues]:
                lines.append(f"  {issue.severity.upper():<7} {issue.code}: {issue.message}")
            if len(self.issues) > max_issues:
                lines.append(f"  ... and {len(self.issues) - max_issues} more")
        return "\n".join(lines)


class _Checker:
    def __init__(self, manifest: Manifest) -> None:
        self.m = manifest
        self.issues: list[Issue] = []
        self.facts: dict[str, dict[str, Any]] = {}
        self.memo: dict[str, tuple[str | None, dict[str, Any]]] = {}
        self.checked: dict[str, str | None] = {}
        self.used: set[str] = set()
        self.facts_path = manifest.directory / _FACTS_FILE if manifest.directory else None
        if self.facts_path is not None and self.facts_path.is_file():
            try:
                data = json.loads(self.facts_path.read_text())
                if data.get("schema") == _FACTS_SCHEMA:
                    self.facts = data["facts"]
            except (OSError, ValueError, KeyError, TypeError):
                self.facts = {}

    def add(self, severity: Severity, code: str, message: str, sid: str | None = None) -> None:
        self.issues.append(Issue(severity, code, message, sid))

    def save_facts(self) -> None:
        if self.facts_path is not None:
            # a cache that cannot be written only costs time
            with contextlib.suppress(OSError):
                facts = {k: v for k, v in self.facts.items() if k in self.used}  # drop stale
                write_json_atomic(self.facts_path, {"schema": _FACTS_SCHEMA, "facts": facts})

    # -- reading with hash verification --------------------------------------------------

    def _verified(self, rel: str) -> tuple[bytes | None, str | None]:
        """Bytes of a manifest file and its hash; reports a missing or changed file once."""
        first = rel not in self.checked
        try:
            data = read_bytes(self.m.root / rel, rel)
        except ImageReadError as exc:
            if first:
                self.add("error", "missing-file", str(exc))
            self.checked[rel] = None
            return None, None
        sha = sha256_bytes(data)
        expected = self.m.hashes.get(rel)
        if first and expected is not None and expected != sha:
            self.add("error", "changed-file", f"{rel} changed since ingest; ingest again")
        self.checked[rel] = sha
        return data, sha

    def file_facts(self, rel: str, role: str) -> dict[str, Any]:
        """Facts about a 2D image or mask file; ``{"error": ...}`` when unreadable."""
        key = f"{role}:{rel}"
        if key in self.memo:
            return self.memo[key][1]
        data, sha = self._verified(rel)
        if data is None or sha is None:
            facts: dict[str, Any] = {"error": f"{rel}: file not found", "missing": True}
        elif f"{role}:{sha}" in self.facts:
            facts = self.facts[f"{role}:{sha}"]
            self.used.add(f"{role}:{sha}")
        else:
            try:
                arr = decode_2d(data, rel)
                facts = _mask_facts(as_mask(arr)) if role == "mask" else _image_facts(arr)
            except MedopsError as exc:
                facts = {"error": str(exc)}
            self.facts[f"{role}:{sha}"] = facts
            self.used.add(f"{role}:{sha}")
        self.memo[key] = (sha, facts)
        return facts

    def volume_facts(self, rel: str, role: str) -> dict[str, Any]:
        """Facts about a volume (NIfTI file or DICOM series folder)."""
        key = f"{role}:{rel}"
        if key in self.memo:
            return self.memo[key][1]
        path = self.m.root / rel
        members = [k for k in self.m.hashes if k == rel or k.startswith(rel + "/")]
        shas = []
        for member in sorted(members):
            _, sha = self._verified(member)
            shas.append(sha or "")
        if not path.exists():
            facts: dict[str, Any] = {"error": f"{rel}: not found", "missing": True}
            sha_all = None
        else:
            sha_all = sha256_bytes("\n".join(shas).encode())
            self.used.add(f"{role}:{sha_all}")
            cached = self.facts.get(f"{role}:{sha_all}")
            if cached is not None:
                facts = cached
            else:
                try:
                    arr = read_volume(self.m.root, rel)
                    facts = _label_facts(arr) if role == "mask" else _image_facts(arr)
                except MedopsError as exc:
                    facts = {"error": str(exc)}
                self.facts[f"{role}:{sha_all}"] = facts
        self.memo[key] = (sha_all, facts)
        return facts

    def source_hash(self, rel: str, role: str) -> str | None:
        return self.memo.get(f"{role}:{rel}", (None, {}))[0]


def _image_facts(arr: np.ndarray) -> dict[str, Any]:
    finite = bool(np.isfinite(arr).all()) if arr.dtype.kind == "f" else True
    vals = arr[np.isfinite(arr)] if not finite else arr
    lo = float(vals.min()) if vals.size else 0.0
    hi = float(vals.max()) if vals.size else 0.0
    return {
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "min": lo,
        "max": hi,
        "finite": finite,
    }


def _mask_facts(mask: np.ndarray) -> dict[str, Any]:
    values = np.unique(mask)
    return {
        "shape": list(mask.shape),
        "values": [float(v) for v in values[:_MAX_VALUES]],
        "n_values": int(values.size),
        "nonzero": bool(values.size > 1 or (values.size == 1 and values[0] != 0)),
    }


def _label_facts(arr: np.ndarray) -> dict[str, Any]:
    facts = _mask_facts(arr)
    facts["shape"] = list(arr.shape)
    integral = arr.dtype.kind in "biu" or bool(np.all(np.mod(arr, 1) == 0))
    facts["label_map"] = bool(integral and (arr.size == 0 or float(arr.min()) >= 0))
    return facts


def _shape_text(shape: list[int]) -> str:
    # spatial axes in array order (slices, rows, columns), then channels: 256x256x3
    c, *spatial = shape
    return "x".join(str(n) for n in spatial) + (f"x{c}" if c > 1 else "")


def _check_samples(ck: _Checker, progress: bool) -> dict[str, Any]:
    m = ck.m
    shapes: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    lo, hi = np.inf, -np.inf
    volumes_seen: set[str] = set()
    for s in tqdm(
        m.samples, desc="validating", unit="slice", disable=not progress, file=sys.stderr
    ):
        volume = s.slice_index is not None
        if volume and s.image in volumes_seen:
            continue  # one volume, checked once for all its slices
        volumes_seen.add(s.image)
        sid = None if volume else s.sample_id
        facts = ck.volume_facts(s.image, "image") if volume else ck.file_facts(s.image, "image")
        if "error" in facts:
            if not facts.get("missing"):
                ck.add("error", "unreadable-image", facts["error"], sid)
            continue
        shape = facts["shape"]
        shapes[_shape_text(shape)] += 1
        dtypes[facts["dtype"]] += 1
        if not facts["finite"]:
            ck.add("error", "non-finite", f"{s.image} holds NaN or infinite values", sid)
        if facts["min"] == facts["max"]:
            ck.add("warning", "constant-image", f"{s.image} is constant ({facts['min']:g})", sid)
        lo, hi = min(lo, facts["min"]), max(hi, facts["max"])
        if m.kind == "segmentation":
            _check_mask(ck, s, shape, volume, sid)
    stats: dict[str, Any] = {"image_shapes": dict(shapes), "dtypes": dict(dtypes)}
    if np.isfinite(lo):
        stats["intensity"] = {"min": float(lo), "max": float(hi)}
    if len(dtypes) > 1:
        mix = ", ".join(f"{k} ({v})" for k, v in dtypes.items())
        ck.add("warning", "mixed-dtypes", f"images come in several dtypes: {mix}")
    return stats


def _check_mask(ck: _Checker, s: Sample, shape: list[int], volume: bool, sid: str | None) -> None:
    if s.mask is None:
        ck.add("error", "missing-mask", f"{s.image} has no mask", sid)
        return
    mf = ck.volume_facts(s.mask, "mask") if volume else ck.file_facts(s.mask, "mask")
    if "error" in mf:
        if not mf.get("missing"):
            ck.add("error", "unreadable-mask", mf["error"], sid)
        return
    expected = shape[1:]  # (H, W), or (Z, Y, X) for volumes
    got = mf["shape"][1:] if volume else mf["shape"]
    if list(got) != list(expected):
        ck.add(
            "error",
            "size-mismatch",
            f"mask {s.mask} is {'x'.join(map(str, got))} but image {s.image} is "
            f"{'x'.join(map(str, expected))}",
            sid,
        )
    threshold = ck.m.mask_threshold
    if volume:
        if not mf.get("label_map"):
            ck.add("error", "non-binary-mask", f"{s.mask} is not a label map of integers >= 0", sid)
    elif threshold is not None and threshold > 1:
        pass  # a declared cut reads many values (JPEG noise around 0 and 255) as two
    elif mf["n_values"] > 2 or (mf["n_values"] == 2 and mf["values"][0] != 0):
        shown = ", ".join(f"{v:g}" for v in mf["values"])
        more = ", ..." if mf["n_values"] > _MAX_VALUES else ""
        ck.add(
            "error",
            "non-binary-mask",
            f"{s.mask} has {mf['n_values']} values ({shown}{more}); expected 0 and one "
            "foreground value (or a mask threshold: label.mask_threshold of the task file)",
            sid,
        )


def _check_tree(ck: _Checker) -> None:
    """Files under the root that are not part of any sample, and empty folders."""
    m = ck.m
    known = set(m.hashes) | {s.image for s in m.samples}
    known |= {s.mask for s in m.samples if s.mask}
    class_dirs = set(m.classes) if m.layout == "class-folders" else set()
    skip_dirs = {"imagesTs"} if m.layout == "msd" else set()
    counts = m.class_counts()
    for cls in class_dirs:
        if counts.get(cls, 0) == 0:
            ck.add("error", "empty-folder", f"class folder {cls}/ holds no pictures")
    stack = [m.root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(p for p in folder.iterdir() if visible(p))
        except OSError as exc:
            ck.add("error", "unreadable-folder", f"{folder.name}/: {exc.strerror or exc}")
            continue
        rel_folder = folder.relative_to(m.root).as_posix()
        if not entries and folder != m.root and rel_folder not in class_dirs:
            ck.add("warning", "empty-folder", f"{rel_folder}/ is empty")
        for p in entries:
            rel = p.relative_to(m.root).as_posix()
            if p.is_dir():
                if rel not in known and rel not in skip_dirs:
                    stack.append(p)
                continue
            if rel in known or (folder == m.root and _is_doc(p.name)):
                continue
            _report_stray(ck, p, rel)


def _is_doc(name: str) -> bool:
    lower = name.lower()
    return (
        name in _ROOT_DOCS
        or lower.endswith((".md", ".txt", ".rst", ".csv", ".json"))
        or lower.startswith(("readme", "license", "licence"))
    )


def _report_stray(ck: _Checker, path: Path, rel: str) -> None:
    if (mask := _LGG_MASK.match(path.name)) and ck.m.layout == "lgg":
        image = f"{mask['case']}_{mask['n']}{path.suffix}"
        ck.add("error", "missing-image", f"mask {rel} has no image {image}")
        return
    if is_image_name(path.name) or is_nifti_name(path.name) or is_dicom_file(path):
        ck.add("warning", "unreferenced-file", f"{rel} is not part of any sample")
    else:
        ck.add("warning", "non-image-file", f"{rel} is not an image; it was not ingested")


def _in_order(splits: set[str | None]) -> list[str]:
    return [name for name in SPLIT_NAMES if name in splits]


def _check_duplicates(ck: _Checker, split_of: dict[str, str]) -> int:
    m = ck.m
    by_hash: dict[str, dict[str, Sample]] = defaultdict(dict)
    for s in m.samples:
        role_hash = ck.source_hash(s.image, "image") or m.hashes.get(s.image)
        if role_hash is not None:
            by_hash[role_hash].setdefault(s.image, s)
    groups = 0
    for group in by_hash.values():
        if len(group) < 2:
            continue
        groups += 1
        files = sorted(group)
        samples = [group[f] for f in files]
        names = " and ".join(files) if len(files) == 2 else ", ".join(files)
        splits = {split_of.get(s.patient_id) for s in samples} - {None}
        if m.kind == "classification" and len({s.label for s in samples}) > 1:
            labels = ", ".join(sorted({m.classes[s.label] for s in samples}))
            ck.add(
                "error", "conflicting-duplicates", f"{names} are identical but labelled {labels}"
            )
        elif len(splits) > 1:
            ck.add(
                "error",
                "duplicate-across-splits",
                f"{names} are identical but sit in {' and '.join(_in_order(splits))}",
            )
        else:
            ck.add("warning", "duplicate-image", f"{names} are identical", samples[1].sample_id)
    return groups


def _check_splits(ck: _Checker, splits: Splits) -> tuple[dict[str, str], dict[str, Any]]:
    m = ck.m
    where: dict[str, list[str]] = defaultdict(list)
    for name in SPLIT_NAMES:
        for p in splits.patients(name):
            where[p].append(name)
    for p, names in sorted(where.items()):
        if len(set(names)) > 1:
            ck.add("error", "patient-leakage", f"patient {p} is in {' and '.join(names)}")
    unknown = sorted(set(where) - set(m.patients))
    if unknown:
        ck.add(
            "error",
            "unknown-patient",
            f"{len(unknown)} patient(s) in the splits are not in the dataset, e.g. {unknown[0]}",
        )
    unassigned = sorted(set(m.patients) - set(where))
    if unassigned:
        ck.add(
            "warning",
            "unassigned-patient",
            f"{len(unassigned)} patient(s) are in no split, e.g. {unassigned[0]}",
        )
    if splits.version is not None and splits.version != m.version:
        ck.add(
            "warning",
            "stale-splits",
            f"splits were made for version {splits.version}, not {m.version}",
        )
    split_of = {p: names[0] for p, names in where.items()}
    stats: dict[str, Any] = {}
    for name in SPLIT_NAMES:
        members = set(splits.patients(name))
        samples = [s for s in m.samples if s.patient_id in members]
        entry: dict[str, Any] = {"patients": len(members), "samples": len(samples)}
        if m.kind == "segmentation":
            entry["positive"] = sum(s.label == 1 for s in samples)
        else:
            entry["class_counts"] = dict(Counter(m.classes[s.label] for s in samples))
        stats[name] = entry
    return split_of, stats


def validate(
    manifest: Manifest, splits: Splits | None = None, *, progress: bool = False
) -> ValidationReport:
    """Check every sample of ``manifest`` (and the split, if given); see the module doc."""
    ck = _Checker(manifest)
    stats: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "layout": manifest.layout,
        "kind": manifest.kind,
        "patients": len(manifest.patients),
        "samples": len(manifest.samples),
    }
    if manifest.kind == "segmentation":
        stats["positive_samples"] = sum(s.label == 1 for s in manifest.samples)
        stats["positive_class"] = manifest.classes[-1]
    else:
        stats["class_counts"] = manifest.class_counts()
    stats.update(_check_samples(ck, progress))
    _check_tree(ck)
    split_of: dict[str, str] = {}
    if splits is not None:
        split_of, stats["splits"] = _check_splits(ck, splits)
    stats["duplicate_groups"] = _check_duplicates(ck, split_of)
    ck.save_facts()
    order = {"error": 0, "warning": 1}
    issues = sorted(ck.issues, key=lambda i: order[i.severity])
    return ValidationReport(
        ok=not any(i.severity == "error" for i in issues), issues=issues, stats=stats
    )
