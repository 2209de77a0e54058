"""De-identification of DICOM datasets by the PS3.15 Annex E Basic Confidentiality Profile.

One function, :func:`deidentify_dataset`, applies the profile's attribute table
(:mod:`medops.deid_profile`) to a dataset and every dataset nested in its sequences, replaces
UIDs through a :class:`UIDMap` (the same original UID always gets the same new one within a
map, so the files of one study stay linked), removes every private attribute, marks the
dataset as de-identified and returns a :class:`DeidReport` that names what changed without
ever holding an original value. The readers call it by default; every service boundary that
accepts DICOM calls it too.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from medops.deid_profile import action_for
from medops.errors import ImageReadError, PHIError

PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
"""The PS3.16 CID 7050 code of the profile applied (code value, scheme, meaning)."""

DEIDENTIFICATION_METHOD = "DICOM PS3.15 E.1 Basic Application Confidentiality Profile"

# Dummy values per VR for the "D" action: non-empty, valid for the VR, and identifying nobody.
_TEXT_DUMMY = "ANONYMOUS"
_DUMMY_BY_VR: dict[str, Any] = {
    "AE": _TEXT_DUMMY,
    "AS": "000Y",
    "CS": _TEXT_DUMMY,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": _TEXT_DUMMY,
    "LT": _TEXT_DUMMY,
    "PN": _TEXT_DUMMY,
    "SH": _TEXT_DUMMY,
    "ST": _TEXT_DUMMY,
    "TM": "000000",
    "UC": _TEXT_DUMMY,
    "UR": "http://example.invalid",
    "UT": _TEXT_DUMMY,
}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"}
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}

# File-meta attributes that can name a sending site or carry private content.
_META_REMOVE = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


class UIDMap:
    """Replaces UIDs (and patient IDs) consistently: same input, same output, within one map.

    The new UID is ``2.25.<128-bit keyed hash of the original>`` (a UUID-derived root, so no
    organisational root is needed), so it is deterministic for a given key and needs no
    storage; pass the same ``key`` to keep the mapping across processes. Without a key a
    random one is drawn, so two maps never link the same patient.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self._seen: dict[str, str] = {}

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str | bytes) -> str:
        """The replacement for ``original`` (at most 44 characters, a valid UID)."""
        if isinstance(original, bytes):  # a UID read with VR UN
            original = original.decode("ascii", "replace")
        original = str(original).strip().rstrip("\x00").strip()
        new = self._seen.get(original)
        if new is None:
            new = "2.25." + str(int.from_bytes(self._digest("uid", original)[:16], "big"))
            self._seen[original] = new
        return new

    def pseudonym(self, value: str, prefix: str = "ANON-") -> str:
        """A stable pseudonym for an identifier such as PatientID (keeps patient grouping)."""
        return prefix + self._digest("id", str(value).strip()).hex()[:16].upper()

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True)
class DeidChange:
    """One attribute the profile acted on: where it was and what was done (never its value)."""

    path: str
    """Keyword path, e.g. ``ReferencedImageSequence[0].ReferencedSOPInstanceUID``."""
    tag: str
    """``(GGGG,EEEE)``."""
    action: str
    """``X`` removed, ``Z`` emptied, ``D`` dummy value, ``U`` UID replaced."""


@dataclass
class DeidReport:
    """What :func:`deidentify_dataset` changed; safe to log and store (no original values)."""

    changes: list[DeidChange] = field(default_factory=list)
    private_tags_removed: int = 0
    burned_in_annotation: bool = False
    """True when the dataset declared burned-in annotation and the caller chose ``flag``."""
    profile: str = DEIDENTIFICATION_METHOD

    def count(self, action: str) -> int:
        """How many attributes got ``action``."""
        return sum(1 for c in self.changes if c.action == action)

    @property
    def uids_replaced(self) -> int:
        return self.count("U")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return {
            "profile": self.profile,
            "private_tags_removed": self.private_tags_removed,
            "burned_in_annotation": self.burned_in_annotation,
            "counts": {a: self.count(a) for a in ("X", "Z", "D", "U")},
            "changes": [{"path": c.path, "tag": c.tag, "action": c.action} for c in self.changes],
        }


def deidentify_dataset(
    ds: Dataset,
    *,
    uid_map: UIDMap | None = None,
    burned_in: Literal["refuse", "flag"] = "refuse",
) -> DeidReport:
    """De-identify ``ds`` in place by the Basic Application Level Confidentiality Profile.

    Every attribute the profile lists gets its action, in the dataset and in every sequence
    item below it; a compound action resolves to the one that keeps the attribute present
    with no information in it (``X/Z`` -> ``Z``; ``Z/D``, ``X/D``, ``X/Z/D`` -> ``D``;
    ``X/Z/U*`` keeps the sequence and de-identifies its items). Person names the profile does
    not list are emptied too, since a name is a name wherever it sits. Patient ID becomes a
    stable pseudonym of ``uid_map``, so studies of one patient still group together.

    ``burned_in="refuse"`` raises :class:`PHIError` when the dataset says its pixels carry
    burned-in annotation (which no attribute rewrite can remove); ``"flag"`` proceeds and
    sets ``report.burned_in_annotation``. Raises :class:`PHIError` before changing anything.
    """
    if burned_in not in ("refuse", "flag"):
        raise ValueError(f"burned_in must be 'refuse' or 'flag', not {burned_in!r}")
    has_burned_in = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    if has_burned_in and burned_in == "refuse":
        raise PHIError(
            "the DICOM dataset declares BurnedInAnnotation=YES: its pixels may show patient "
            "identifiers, so it is refused (de-identify the pixels first)"
        )
    uid_map = uid_map if uid_map is not None else UIDMap()
    report = DeidReport(burned_in_annotation=has_burned_in)
    _deidentify_items(ds, "", uid_map, report)

    meta = getattr(ds, "file_meta", None)
    if isinstance(meta, FileMetaDataset):
        for tag in _META_REMOVE:
            if tag in meta:
                del meta[tag]
                report.changes.append(DeidChange(_keyword(tag), _tag_str(tag), "X"))
        if "SOPInstanceUID" in ds:
            # The profile lists MediaStorageSOPInstanceUID as U; it must equal SOPInstanceUID.
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            report.changes.append(DeidChange("MediaStorageSOPInstanceUID", "(0002,0003)", "U"))

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    return report


def deidentify_bytes(
    data: bytes,
    *,
    uid_map: UIDMap | None = None,
    burned_in: Literal["refuse", "flag"] = "refuse",
    filename: str = "<upload>",
) -> tuple[bytes, DeidReport]:
    """De-identify one DICOM file held in memory; returns the new file's bytes and the report."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if len(ds) == 0:
            raise ValueError("no DICOM attributes found")
    except Exception as exc:  # pydicom raises many kinds; the caller needs one typed error
        raise ImageReadError(f"{filename}: not a readable DICOM file ({exc})") from None
    try:
        report = deidentify_dataset(ds, uid_map=uid_map, burned_in=burned_in)
    except PHIError as exc:
        raise PHIError(f"{filename}: {exc.message}") from None
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue(), report


def _deidentify_items(ds: Dataset, path: str, uid_map: UIDMap, report: DeidReport) -> None:
    for elem in list(ds):
        tag = int(elem.tag)
        where = f"{path}{elem.keyword or _tag_str(tag)}"
        if elem.tag.is_private:
            del ds[elem.tag]
            report.private_tags_removed += 1
            report.changes.append(DeidChange(where, _tag_str(tag), "X"))
            continue
        action = action_for(tag)
        if action is None:
            if elem.VR == "PN" and not elem.is_empty:
                elem.value = ""
                report.changes.append(DeidChange(where, _tag_str(tag), "Z"))
            elif elem.VR == "SQ":
                for i, item in enumerate(elem.value):
                    _deidentify_items(item, f"{where}[{i}].", uid_map, report)
            continue
        applied = _apply(ds, elem, action, where, uid_map, report)
        if applied:
            report.changes.append(DeidChange(where, _tag_str(tag), applied))


def _apply(
    ds: Dataset,
    elem: pydicom.DataElement,
    action: str,
    where: str,
    uid_map: UIDMap,
    report: DeidReport,
) -> str | None:
    """Apply one profile action; return the simple action taken, or None if nothing changed."""
    if action == "K":
        return None
    if action == "X":
        del ds[elem.tag]
        return "X"
    if action == "X/Z/U*":
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                _deidentify_items(item, f"{where}[{i}].", uid_map, report)
            return None
        action = "Z"
    if action == "U":
        if elem.is_empty:
            return None
        if isinstance(elem.value, bytes):  # read as UN (implicit VR, unknown tag): parse it
            parts = [p.strip("\x00 ") for p in elem.value.decode("ascii", "replace").split("\\")]
            mapped = [uid_map.uid(p) for p in parts if p]
            ds[elem.tag] = pydicom.DataElement(
                elem.tag, "UI", mapped[0] if len(mapped) == 1 else mapped
            )
        elif isinstance(elem.value, (list, MultiValue)):
            elem.value = [uid_map.uid(v) for v in elem.value]
        else:
            elem.value = uid_map.uid(elem.value)
        return "U"
    if action == "X/Z":
        action = "Z"
    if action in ("Z/D", "X/D", "X/Z/D", "C"):
        action = "D"
    if action == "Z":
        elem.value = _empty_value(elem.VR)
        return "Z"
    # D: a dummy value; the patient ID keeps a stable pseudonym so a patient's files group.
    if elem.keyword == "PatientID" and not elem.is_empty:
        elem.value = uid_map.pseudonym(str(elem.value))
    else:
        elem.value = _dummy_value(elem.VR, uid_map)
    return "D"


def _empty_value(vr: str) -> Any:
    if vr == "SQ":
        return Sequence([])
    if vr in _BINARY_VRS:
        return b""
    if vr in _NUMERIC_VRS:
        return None
    return ""


def _dummy_value(vr: str, uid_map: UIDMap) -> Any:
    if vr == "SQ":
        return Sequence([])
    if vr == "UI":
        return uid_map.uid("dummy")
    if vr in _NUMERIC_VRS:
        return 0
    if vr in _BINARY_VRS:
        return b"\x00\x00"
    return _DUMMY_BY_VR.get(vr, _TEXT_DUMMY)


def _tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _keyword(tag: int) -> str:
    return pydicom.datadict.keyword_for_tag(tag) or _tag_str(tag)
