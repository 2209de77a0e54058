"""A reviewer's feedback on one logged prediction, as the web pages and API clients send it.

``{"request_id": PREDICTION_ID, "label": CLASS, "mask_rle": {"size", "counts"},
"reviewer_role": ROLE}``: checked here for its shape (unknown fields, types, the role), then
by the prediction log itself (an unknown id, a label that is none of the model's classes, a
malformed mask or one of another size than the predicted one), each refusal naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from medops.errors import InvalidInputError
from medops.monitoring.store import REVIEWER_ROLES

FIELDS = frozenset({"request_id", "label", "mask_rle", "reviewer_role"})


class FeedbackStore(Protocol):
    def record_feedback(
        self,
        request_id: str,
        label: str | None = None,
        mask_rle: Mapping[str, Any] | None = None,
        *,
        reviewer_role: str = "radiologist",
        time_s: float | None = None,
    ) -> None: ...


def record_feedback(store: FeedbackStore, body: Any) -> str:
    """Store one feedback document; returns its request id."""
    if not isinstance(body, dict):
        raise InvalidInputError("feedback must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidInputError(f"feedback: unknown field(s) {', '.join(unknown)}")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidInputError("request_id: expected a slice's prediction_id")
    label = body.get("label")
    if label is not None and not isinstance(label, str):
        raise InvalidInputError("label: expected a class name")
    role = body.get("reviewer_role", "radiologist")
    if role not in REVIEWER_ROLES:
        raise InvalidInputError(f"reviewer_role: expected one of {', '.join(REVIEWER_ROLES)}")
    store.record_feedback(request_id, label, body.get("mask_rle"), reviewer_role=role)
    return request_id
