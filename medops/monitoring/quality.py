"""Concept drift: the model's quality on the predictions reviewers confirmed or corrected."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from medops.rle import dice, rle_decode


@dataclass(frozen=True)
class Quality:
    """Quality over the reviewed predictions of one window (None where nothing to score)."""

    labelled: int
    accuracy: float | None
    sensitivity: float | None
    """Recall of the positive (tumour) classes: any label but ``negative_label``."""
    masks: int
    dice: float | None
    """Mean Dice of predicted masks against reviewers' masks."""

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _mask_dice(predicted: str | None, reviewed: str | None) -> float | None:
    if predicted is None or reviewed is None or pd.isna(predicted) or pd.isna(reviewed):
        return None
    return dice(rle_decode(json.loads(predicted)), rle_decode(json.loads(reviewed)))


def window_quality(window: pd.DataFrame, *, negative_label: str = "no_tumour") -> Quality:
    """Accuracy and sensitivity (labels) and Dice (masks) of a :meth:`PredictionStore.window`."""
    if window.empty or "feedback_label" not in window.columns:
        return Quality(0, None, None, 0, None)
    labelled = window[window["feedback_label"].notna() & window["decision"].notna()]
    accuracy = sensitivity = None
    if len(labelled):
        correct = labelled["decision"] == labelled["feedback_label"]
        accuracy = float(correct.mean())
        positive = labelled["feedback_label"] != negative_label
        if positive.any():
            sensitivity = float((labelled.loc[positive, "decision"] != negative_label).mean())
    scores = [
        d
        for d in (
            _mask_dice(p, r)
            for p, r in zip(window["mask_rle"], window["feedback_mask_rle"], strict=True)
        )
        if d is not None
    ]
    return Quality(
        labelled=len(labelled),
        accuracy=accuracy,
        sensitivity=sensitivity,
        masks=len(scores),
        dice=float(np.mean(scores)) if scores else None,
    )


def quality_over_time(
    window: pd.DataFrame, *, freq: str = "1D", negative_label: str = "no_tumour"
) -> pd.DataFrame:
    """Quality per period (``freq``, a pandas offset) of prediction time: the concept-drift curve.

    One row per period with reviewed predictions: ``labelled, accuracy, sensitivity, masks,
    dice``, indexed by the period's start.
    """
    if window.empty:
        return pd.DataFrame(columns=["labelled", "accuracy", "sensitivity", "masks", "dice"])
    reviewed = window[window["feedback_time"].notna()]
    rows = {
        start: window_quality(part, negative_label=negative_label).to_dict()
        for start, part in reviewed.groupby(pd.Grouper(key="time", freq=freq))
        if len(part)
    }
    return pd.DataFrame.from_dict(rows, orient="index")
