"""The clinical plane's vocabulary: what a request asks, how models are reached, what an
analysis holds. Shared by the plane and the encoders (and by every caller)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from medops.imaging.upload import ReadUpload, Upload
from medops.modelspec import ModelInfo
from medops.monitoring.store import PredictionRecord

SegmentMode = Literal["auto", "always", "never"]
SEGMENT_MODES: tuple[SegmentMode, ...] = ("auto", "always", "never")

JSON = "application/json"
PNG = "image/png"
NIFTI = "application/x-nifti"
NIFTI_GZ = "application/gzip"
DICOM = "application/dicom"
OFFERED = (JSON, PNG, NIFTI, NIFTI_GZ, DICOM)
"""Answer encodings: JSON, or the mask as one PNG slice, NIfTI (plain or gzipped) or a
DICOM SEG referencing the de-identified source series."""


@dataclass(frozen=True)
class Encoded:
    body: bytes
    media_type: str
    filename: str | None = None
    """A download name for mask files (``Content-Disposition``)."""


@dataclass(frozen=True)
class Route:
    """The version and variant routing chose for one model and one request."""

    info: ModelInfo
    version: str
    variant: str
    handle: object = None
    """The predictor's own reference to the chosen version."""
    shadows: tuple[Route, ...] = ()
    """Shadow variants routing chose for this request: they answer a copy, never the caller."""
    shadow: bool = False
    """This route is a shadow copy (its answers are logged apart, never served)."""


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray
    route: Route

    @property
    def info(self) -> ModelInfo:
        return self.route.info


class Predictor(Protocol):
    """What the plane needs from whoever serves the models."""

    async def route(self, model: str, routing: Mapping[str, str]) -> Route:
        """Choose the version for one request (A/B, canary, pinned by header), with the shadow
        copies routing asks for (a predictor may offer none)."""
        ...

    async def predict(self, model: str, batch: np.ndarray, route: Route) -> np.ndarray:
        """Probabilities of the contract's input ``(N, 3, S, S)`` on the routed version."""
        ...


class LogStore(Protocol):
    def record_many(self, records: Sequence[PredictionRecord]) -> None: ...

    def record_shadow(self, records: Sequence[PredictionRecord]) -> None: ...


@dataclass(frozen=True)
class Chain:
    """The models of one analysis: a slice classifier and, optionally, a segmenter run on
    the slices it flags (its version carries the rule chosen with that classifier); or a
    segmenter alone, run on every slice."""

    classifier: str | None = None
    segmenter: str | None = None

    def __post_init__(self) -> None:
        if self.classifier is None and self.segmenter is None:
            raise ValueError("a chain needs a classifier, a segmenter or both")

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m in (self.classifier, self.segmenter) if m is not None)


@dataclass(frozen=True)
class AnalyzeRequest:
    upload: Upload
    segment: SegmentMode = "auto"
    media_type: str = JSON
    """The answer's encoding, one of :data:`OFFERED`."""
    routing: Mapping[str, str] = field(default_factory=dict)
    """The caller's routing keys (for the gateway: its request headers)."""
    request_id: str | None = None
    """Becomes the prediction log id (with a slice suffix) when it is a safe token."""
    model: str | None = None
    """Run this one served model (a classifier: a class per slice; a segmenter: a mask on
    every slice) instead of a chain."""
    chain: str | None = None
    """Run this declared chain; neither ``model`` nor ``chain``: the plane's default chain."""
    log: bool = True
    """Write the prediction log (off for an explanation: the same slices are analysed again)."""
    keep_sources: bool = False
    """Keep the de-identified source datasets in the analysis (``image.sources``) whatever the
    answer's encoding, for a caller that builds DICOM objects of its own."""


@dataclass
class Analysis:
    request_id: str | None
    image: ReadUpload
    probabilities: np.ndarray
    """Per slice: P(positive class) from a binary classifier, the decided class's
    probability from a multi-class one, the highest pixel probability from a segmenter
    alone."""
    positive: np.ndarray
    """The served slice decision: a mask survived the rule (or, with ``segment=never`` or no
    segmenter, the classifier at its operating threshold)."""
    flagged: np.ndarray
    """The classifier's own decision at its operating threshold (its prediction log)."""
    mask: np.ndarray
    segmented: np.ndarray
    classifier: Prediction | None
    segmenter: Prediction | None
    inputs: list[np.ndarray]
    """The first model's inputs (preprocessed slices), for the prediction log's statistics."""
    segment_max: dict[int, float]
    """Highest positive probability of every segmented slice."""
    segment_inputs: dict[int, np.ndarray] = field(default_factory=dict)
    """The segmenter's inputs by slice index (its own input size), for its prediction log."""
    prediction_ids: list[str] | None = None
    """Per-slice ids in the prediction log (for feedback), when logging is on."""
    answer: Encoded | None = None
    """The answer in the request's media type, once encoded."""
    slice_classes: np.ndarray | None = None
    """The classifier's class index per slice under its rule (two classes: the last at the
    operating threshold; more: the most probable)."""
    chain: str | None = None
    """The declared chain that ran (None: one model)."""
    input_features: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    """Image statistics of the model inputs by (input size, slice), computed while the models
    ran, for the prediction log (empty when it is off)."""
    mask_rle: list[dict[str, Any]] | None = None
    """The mask's RLE per slice once computed (the prediction log and the JSON answer share
    it)."""

    @property
    def first(self) -> Prediction:
        """The first model that ran (the classifier, else the segmenter): what the answer's
        routing headers and the request's metrics name."""
        first = self.classifier or self.segmenter
        assert first is not None
        return first

    @property
    def decision(self) -> str | None:
        """The study's class name. A binary classifier: its last class when any slice is
        positive, its first otherwise; a multi-class one: the most probable class over the
        slices; a segmenter alone: its (first) class when any mask survives, else None."""
        if self.classifier is None:
            assert self.segmenter is not None
            return self.segmenter.info.classes[0] if bool(self.positive.any()) else None
        classes = self.classifier.info.classes
        if len(classes) > 2:
            return classes[int(self.classifier.probabilities.sum(axis=0).argmax())]
        return classes[-1] if bool(self.positive.any()) else classes[0]
