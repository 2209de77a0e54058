"""The clinical data plane: an upload in, a clinical answer out, whatever the transport.

:meth:`ClinicalPlane.analyze` decodes and de-identifies the upload (``medops.imaging``),
preprocesses each slice with the training code (``medops.transforms.preprocess_slice``), runs
the chain's classifier on every slice and its segmenter on the slices the classifier flags (or
on all of them with ``segment=always``), applies the rule stored with the segmenter version,
writes the prediction log and encodes the answer. Each stage is timed once per request here.
Models are reached through a :class:`Predictor` (the gateway's data plane, or any client of
a V2 server), so a REST route, a DICOM listener and a web page share this one flow.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import uuid

import numpy as np

from medops.deid import UIDMap
from medops.errors import MedopsError
from medops.imaging.upload import ReadUpload, read_upload
from medops.monitoring import PredictionFeatures
from medops.monitoring.metrics import GatewayMetrics
from medops.monitoring.store import PredictionRecord
from medops.rle import rle_encode
from medops.transforms import drop_small_components, preprocess_slice, restore_mask

from .encoders import encode
from .types import DICOM, Analysis, AnalyzeRequest, Chain, LogStore, Prediction, Predictor, Route

log = logging.getLogger("medops.clinical")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,100}$")
"""Request ids usable as prediction log ids (the log's own token rule, room for a suffix)."""


class ClinicalPlane:
    """The analysis flow over a :class:`Predictor`; stateless between requests."""

    def __init__(
        self,
        predictor: Predictor,
        chain: Chain,
        *,
        batch_size: int = 16,
        deid_key: bytes | None = None,
        store: LogStore | None = None,
        metrics: GatewayMetrics | None = None,
        features: PredictionFeatures | None = None,
    ) -> None:
        self.predictor = predictor
        self.chain = chain
        self.batch_size = max(1, batch_size)
        self.deid_key = deid_key or secrets.token_bytes(32)
        self.store = store
        self.metrics = metrics
        self.features = features or PredictionFeatures(None)
        """Image statistics plus the embedding of each model version's drift reference."""

    async def analyze(self, request: AnalyzeRequest) -> Analysis:
        clock = _Stages()
        cls_route: Route | None = None
        try:
            # a fresh map per request (nothing accumulates), keyed with the plane's secret
            uid_map = UIDMap(self.deid_key)
            read = await asyncio.to_thread(
                read_upload, request.upload, uid_map, sources=request.media_type == DICOM
            )
            clock.lap("decode")
            cls_route = await self.predictor.route(self.chain.classifier, request.routing)
            analysis = await self._run(read, request, cls_route, clock)
            await self._log_predictions(analysis)
            analysis.answer = await asyncio.to_thread(encode, analysis, request.media_type)
            clock.lap("postprocess")
        except MedopsError as exc:
            self._count(cls_route, exc.status_code, clock)
            raise
        except Exception:
            self._count(cls_route, 500, clock)
            raise
        self._count(cls_route, 200, clock)
        return analysis

    # ------------------------------------------------------------------ the flow

    async def _predict(self, batch: list[np.ndarray], route: Route) -> Prediction:
        """Every batch of one image goes to the version routing chose for it."""
        parts = []
        for start in range(0, len(batch), self.batch_size):
            chunk = np.stack(batch[start : start + self.batch_size]).astype(np.float32, copy=False)
            parts.append(await self.predictor.predict(route.info.name, chunk, route))
        return Prediction(np.concatenate(parts), route)

    async def _run(
        self, read: ReadUpload, request: AnalyzeRequest, cls_route: Route, clock: _Stages
    ) -> Analysis:
        image = read.image
        z, h, w = image.shape
        cls_size = cls_route.info.input_size
        slices = await asyncio.to_thread(
            lambda: [preprocess_slice(image.slice(k), cls_size) for k in range(z)]
        )
        clock.lap("preprocess")
        classifier = await self._predict(slices, cls_route)
        clock.lap("infer")
        probs = classifier.probabilities
        if probs.ndim != 2 or probs.shape[1] < 2:
            raise MedopsError(
                f"{cls_route.info.name} answered shape {probs.shape}, expected (N, 2)"
            )
        positive_p = probs[:, -1].astype(float)
        flagged = positive_p >= cls_route.info.threshold
        mask = np.zeros((z, h, w), np.uint8)
        analysis = Analysis(
            request_id=request.request_id,
            image=read,
            probabilities=positive_p,
            positive=flagged,
            flagged=flagged,
            mask=mask,
            segmented=np.zeros(z, bool),
            classifier=classifier,
            segmenter=None,
            inputs=slices,
            segment_max={},
        )
        if request.segment == "never" or self.chain.segmenter is None:
            return analysis
        seg_route = await self.predictor.route(self.chain.segmenter, request.routing)
        rule = seg_route.info
        gate = cls_route.info.threshold if rule.gate_threshold is None else rule.gate_threshold
        wanted = positive_p >= gate if request.segment == "auto" else np.ones(z, bool)
        index = np.flatnonzero(wanted)
        if index.size:
            seg_size = rule.input_size
            seg_in = (
                [slices[k] for k in index]
                if seg_size == cls_size
                else await asyncio.to_thread(
                    lambda: [preprocess_slice(image.slice(int(k)), seg_size) for k in index]
                )
            )
            clock.lap("preprocess")
            segmenter = await self._predict(seg_in, seg_route)
            clock.lap("infer")
            binary = drop_small_components(
                segmenter.probabilities[:, 0] >= rule.threshold, rule.min_component_px
            ).astype(np.uint8)
            mask[index] = restore_mask(binary, (h, w))
            peaks = segmenter.probabilities.reshape(len(index), -1).max(axis=1)
            analysis.segment_max = {int(k): float(p) for k, p in zip(index, peaks, strict=True)}
            analysis.segment_inputs = {int(k): x for k, x in zip(index, seg_in, strict=True)}
            analysis.segmenter = segmenter
        analysis.segmented = np.asarray(wanted)
        analysis.positive = np.asarray(mask.reshape(z, -1).any(axis=1))
        return analysis

    # ------------------------------------------------------------------ the prediction log

    def _records(self, a: Analysis, base_id: str) -> list[PredictionRecord]:
        """One entry per slice for the classifier, one per segmented slice for the segmenter.
        Image statistics and masks only; nothing identifies anyone."""
        shape = a.image.image.shape[1:]
        cls = a.classifier.route
        classes = cls.info.classes
        records = []
        for k, inputs in enumerate(a.inputs):
            features = self.features(cls.info.name, cls.version, inputs, original_shape=shape)
            row = a.classifier.probabilities[k]
            answered = len(classes) - 1 if a.flagged[k] else int(row[:-1].argmax())
            records.append(
                PredictionRecord(
                    request_id=f"{base_id}.{k}",
                    model=cls.info.name,
                    version=cls.version,
                    variant=cls.variant,
                    probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
                    features=features,
                    decision=classes[answered],
                    confidence=float(row[answered]),
                )
            )
            if a.segmenter is not None and k in a.segment_max:
                seg = a.segmenter.route
                records.append(
                    PredictionRecord(
                        request_id=f"{base_id}.{k}",
                        model=seg.info.name,
                        version=seg.version,
                        variant=seg.variant,
                        probabilities={"max": a.segment_max[k]},
                        features=self.features(
                            seg.info.name,
                            seg.version,
                            a.segment_inputs.get(k, inputs),
                            original_shape=shape,
                        ),
                        area=float(a.mask[k].sum()) * a.image.image.pixel_area_mm2,
                        mask_rle=rle_encode(a.mask[k]),
                    )
                )
        return records

    async def _log_predictions(self, a: Analysis) -> None:
        """Write the prediction log; a failing store never fails the clinical answer."""
        if self.store is None:
            return
        base_id = _log_id(a.request_id)
        try:
            records = await asyncio.to_thread(self._records, a, base_id)
            await asyncio.to_thread(self.store.record_many, records)
        except MedopsError as exc:
            log.warning("prediction not logged", extra={"reason": exc.message})
            return
        a.prediction_ids = [f"{base_id}.{k}" for k in range(len(a.inputs))]

    # ------------------------------------------------------------------ metrics

    def _count(self, route: Route | None, status: int, clock: _Stages) -> None:
        """One request counted, each stage observed once (labelled by the classifier, which
        every analysis has); a request refused before routing has no model to count under."""
        if self.metrics is None or route is None:
            return
        labels = {"model": route.info.name, "version": route.version, "variant": route.variant}
        for stage, seconds in clock.spent.items():
            self.metrics.observe_stage(**labels, stage=stage, seconds=seconds)
        self.metrics.observe_request(**labels, status=status, seconds=clock.total())


class _Stages:
    """Seconds per stage of one request; a stage entered twice (two models) adds up."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.spent: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.spent[stage] = self.spent.get(stage, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


def _log_id(request_id: str | None) -> str:
    return request_id if request_id and _ID.match(request_id) else uuid.uuid4().hex
