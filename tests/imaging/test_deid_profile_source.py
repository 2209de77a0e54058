"""The hand-transcribed PS3.15 Annex E table against a second, machine-readable copy: the one
the ``dicom-anonymizer`` package (Kitware) ships for the same edition of the standard.

Every difference must be listed, with its reason, in :data:`KNOWN_DIFFERENCES`; any other
difference, and any listed one that no longer occurs, fails."""

from __future__ import annotations

from typing import Any

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import dictionary_has_tag, keyword_for_tag

from medops.deid_profile import BASIC_PROFILE, REPEATING_GROUP_ACTIONS, action_for

EDITION = "dicomfields_2024b"
"""The edition ``medops.deid_profile`` transcribes (its docstring says 2024b)."""

ACTION_OF_CATEGORY = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
"""dicom-anonymizer's category names -> the standard's action codes (as our table writes them)."""

KNOWN_DIFFERENCES: dict[int, tuple[str | None, str | None, str]] = {
    # tag: (our action, dicom-anonymizer's action, why the difference is right). None: absent.
    # Empty: for edition 2024b the two copies agree row for row (617 attributes, 3 repeating
    # groups), as of dicom-anonymizer 2.1.0.
}


def _their_table() -> tuple[dict[int, str], set[tuple[int, int, int, str]]]:
    """dicom-anonymizer's rows as ``{tag: action}`` and its repeating groups as
    ``(group base, group mask, element or -1 for any, action)``, the shape of ours."""
    database = dicom_anonymization_database_selector(EDITION)
    rows: dict[int, str] = {}
    groups: set[tuple[int, int, int, str]] = set()
    for category, action in ACTION_OF_CATEGORY.items():
        for entry in database[category]:
            if len(entry) == 4:  # (group, element, group mask, element mask)
                group, element, group_mask, element_mask = entry
                groups.add((group, group_mask, element if element_mask else -1, action))
                continue
            tag = (entry[0] << 16) | entry[1]
            assert tag not in rows, f"{tag:08X} appears in two categories of {EDITION}"
            rows[tag] = action
    return rows, groups


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag) if dictionary_has_tag(tag) else "(not in pydicom's dictionary)"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


def _compare(ours: dict[int, str], theirs: dict[int, str]) -> tuple[dict[str, Any], list[str]]:
    """Differences not explained by :data:`KNOWN_DIFFERENCES`, and listed ones that are gone."""
    found = {
        tag: (ours.get(tag), theirs.get(tag))
        for tag in ours.keys() | theirs.keys()
        if ours.get(tag) != theirs.get(tag)
    }
    unexplained = {
        _name(tag): pair
        for tag, pair in found.items()
        if tag not in KNOWN_DIFFERENCES or KNOWN_DIFFERENCES[tag][:2] != pair
    }
    stale = [_name(tag) for tag in KNOWN_DIFFERENCES if tag not in found]
    return unexplained, stale


def test_the_basic_profile_table_matches_a_second_machine_readable_copy() -> None:
    theirs, _ = _their_table()
    assert len(theirs) > 600  # the comparison reads a real table, not an empty module
    unexplained, stale = _compare(BASIC_PROFILE, theirs)
    assert not unexplained, f"(ours, dicom-anonymizer's) differ, unexplained: {unexplained}"
    assert not stale, f"listed as known differences but the copies now agree: {stale}"


def test_a_mistranscribed_dropped_or_missing_row_would_fail_the_comparison() -> None:
    theirs, _ = _their_table()
    kept_name = {**BASIC_PROFILE, 0x00100010: "K"}
    dropped = {t: a for t, a in BASIC_PROFILE.items() if t != 0x00100030}
    unknown = {**BASIC_PROFILE, 0x00111234: "X"}
    assert _compare(kept_name, theirs)[0] == {"(0010,0010) PatientName": ("K", "Z")}
    assert _compare(dropped, theirs)[0] == {"(0010,0030) PatientBirthDate": (None, "Z")}
    assert list(_compare(unknown, theirs)[0]) == ["(0011,1234) (not in pydicom's dictionary)"]


def test_the_repeating_group_rows_match_too() -> None:
    _, groups = _their_table()
    assert set(REPEATING_GROUP_ACTIONS) == groups
    # and the engine applies them: any curve element, overlay data and comments
    assert action_for(0x50221234) == "X"
    assert action_for(0x60043000) == action_for(0x601E4000) == "X"
    assert action_for(0x60040010) is None  # overlay rows, columns: not identifying
