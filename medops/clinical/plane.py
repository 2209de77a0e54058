"""The clinical data plane: an upload in, a clinical answer out, whatever the transport.

:meth:`ClinicalPlane.analyze` decodes and de-identifies the upload (``medops.imaging``),
preprocesses each slice with the training code (``medops.transforms.preprocess_slice``), runs
the chain's classifier on every slice and its segmenter on the slices the classifier flags (or
on all of them with ``segment=always``), applies the rule stored with the segmenter version,
writes the prediction log and encodes the answer. A request may name a declared chain, or one
served model instead (a classifier alone decides every slice; a segmenter alone masks every
slice). Nothing here names a model: tasks, sizes, classes and rules come from each version's
metadata. Each stage is timed once per request here.
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
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from medops.deid import UIDMap
from medops.errors import InvalidInputError, MedopsError, NotFoundError
from medops.imaging.upload import ReadUpload, read_upload
from medops.monitoring import PredictionFeatures, image_features, image_features_batch
from medops.monitoring.metrics import GatewayMetrics
from medops.monitoring.store import PredictionRecord
from medops.rle import rle_encode_volume
from medops.transforms import drop_small_components, preprocess_slices, restore_mask

from .encoders import encode
from .review import ReviewCache
from .types import DICOM, Analysis, AnalyzeRequest, Chain, LogStore, Prediction, Predictor, Route

log = logging.getLogger("medops.clinical")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,100}$")
"""Request ids usable as prediction log ids (the log's own token rule, room for a suffix)."""


class ClinicalPlane:
    """The analysis flow over a :class:`Predictor`; stateless between requests.

    ``chains`` are the declared chains by name (the task files' chain files);
    ``default_chain`` runs when a request names neither a model nor a chain (``no_default``:
    why there is none, for the 404 such a request gets). A request may
    name one served model instead: a classifier then decides every slice, a segmenter masks
    every slice (its task is read from the version's metadata, not from its name)."""

    def __init__(
        self,
        predictor: Predictor,
        chains: Mapping[str, Chain],
        *,
        default_chain: str | None = None,
        no_default: str | None = None,
        batch_size: int = 16,
        deid_key: bytes | None = None,
        store: LogStore | None = None,
        metrics: GatewayMetrics | None = None,
        features: PredictionFeatures | None = None,
        review: ReviewCache | None = None,
    ) -> None:
        if default_chain is not None and default_chain not in chains:
            known = ", ".join(chains) or "none"
            raise InvalidInputError(f"default chain {default_chain!r} is not declared ({known})")
        self.predictor = predictor
        self.chains = dict(chains)
        self.default_chain = default_chain
        self.no_default = no_default
        """Why there is no default chain, for the callers who relied on it."""
        self.batch_size = max(1, batch_size)
        self.deid_key = deid_key or secrets.token_bytes(32)
        self.store = store
        self.metrics = metrics
        self.features = features or PredictionFeatures(None)
        """Image statistics plus the embedding of each model version's drift reference."""
        self.review = review
        """Where de-identified studies are kept for the review page (None or off: nowhere)."""
        self._shadows: set[asyncio.Task[None]] = set()

    def _chain(self, request: AnalyzeRequest) -> tuple[str | None, Chain | None]:
        """The chain a request names (or the default); ``(None, None)`` for one model."""
        if request.model is not None and request.chain is not None:
            raise InvalidInputError("name a model or a chain, not both")
        if request.model is not None:
            return None, None
        name = request.chain or self.default_chain
        known = ", ".join(self.chains) or "none"
        if name is None:
            why = self.no_default or "there is no default chain"
            raise NotFoundError(f"name a model or a chain ({why}); chains: {known}")
        chain = self.chains.get(name)
        if chain is None:
            raise NotFoundError(f"unknown chain {name!r}; chains: {known}")
        return name, chain

    async def analyze(self, request: AnalyzeRequest) -> Analysis:
        clock = _Stages()
        first: Route | None = None
        try:
            chain_name, chain = self._chain(request)
            # a fresh map per request (nothing accumulates), keyed with the plane's secret
            uid_map = UIDMap(self.deid_key)
            read = await asyncio.to_thread(
                read_upload,
                request.upload,
                uid_map,
                sources=request.media_type == DICOM or request.keep_sources,
            )
            clock.lap("decode")
            if chain is None:
                assert request.model is not None
                first = await self.predictor.route(request.model, request.routing)
                chain = _single(first)
            else:
                first = await self.predictor.route(chain.models[0], request.routing)
                _expect(first, "classification" if chain.classifier else "segmentation")
            if chain.classifier is not None:
                analysis = await self._run(read, request, chain, first, clock)
            else:
                analysis = await self._segment_all(read, request, first, clock)
            analysis.chain = chain_name
            # the log, the review copy and the answer in one worker hop (each hop costs a wake-up)
            await asyncio.to_thread(self._finish, analysis, request)
            if request.log:
                self._spawn_shadows(analysis)
            clock.lap("postprocess")
        except MedopsError as exc:
            self._count(first, exc.status_code, clock)
            raise
        except Exception:
            self._count(first, 500, clock)
            raise
        self._count(first, 200, clock)
        return analysis

    # ------------------------------------------------------------------ the flow

    async def _infer(
        self,
        read: ReadUpload,
        route: Route,
        index: np.ndarray,
        clock: _Stages,
        *,
        ready: Sequence[np.ndarray] | None = None,
        finish: Callable[[np.ndarray, np.ndarray], None] | None = None,
        stats: dict[tuple[int, int], dict[str, float]] | None = None,
    ) -> tuple[Prediction, list[np.ndarray]]:
        """Run ``route`` on the slices ``index`` in batches of ``batch_size``, pipelined: the
        next batch is preprocessed (``ready``: inputs at hand, stacked only) in a worker thread
        while this one is inferred, and ``finish(chunk, probabilities)`` of a batch runs in
        one while the next is inferred. ``stats``, when given, gets the image statistics of
        every input for the prediction log (computed in the same worker, from the batch at
        hand). Batches are the same whatever the pipelining, so answers are too.

        Stages: the first batch's preparation is ``preprocess``; the rest of the section,
        inference with the later batches' preparation and finishing overlapped, ``infer``."""
        image = read.image
        size = route.info.input_size
        shape = image.shape[1:]
        starts = range(0, len(index), self.batch_size)

        def prepare(start: int) -> np.ndarray:
            """The batch at ``start``. The first batch of inputs at hand is only stacked, so
            it is stacked on the loop: nothing runs beside it, and a worker hop costs more."""
            chunk = index[start : start + self.batch_size]
            batch = (
                np.stack(ready[start : start + self.batch_size]).astype(np.float32, copy=False)
                if ready is not None
                else preprocess_slices([image.slice(int(k)) for k in chunk], size)
            )
            if stats is not None and ready is None:  # ready inputs have theirs already
                rows = image_features_batch(batch, original_shape=shape)
                for k, row in zip(chunk, rows, strict=True):
                    stats[(size, int(k))] = row
            return batch

        inputs: list[np.ndarray] = []
        outputs: list[np.ndarray] = []
        finishing: list[asyncio.Task[None]] = []
        upcoming: asyncio.Task[np.ndarray] | None = None
        try:
            batch = prepare(0) if ready is not None else await asyncio.to_thread(prepare, 0)
            clock.lap("preprocess")
            for i, start in enumerate(starts):
                chunk = index[start : start + self.batch_size]
                if i + 1 < len(starts):
                    upcoming = asyncio.create_task(asyncio.to_thread(prepare, starts[i + 1]))
                probs = np.asarray(await self.predictor.predict(route.info.name, batch, route))
                inputs.extend(batch)  # views of the batch: no copy per slice
                outputs.append(probs)
                if finish is not None:
                    finishing.append(asyncio.create_task(asyncio.to_thread(finish, chunk, probs)))
                if upcoming is not None:
                    batch, upcoming = await upcoming, None
            await asyncio.gather(*finishing)
        finally:
            # a failed batch leaves no worker running nor any exception unretrieved
            left = [t for t in (upcoming, *finishing) if t is not None]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        clock.lap("infer")
        return Prediction(np.concatenate(outputs), route), inputs

    async def _masks(
        self,
        read: ReadUpload,
        route: Route,
        index: np.ndarray,
        ready: Sequence[np.ndarray] | None,
        mask: np.ndarray,
        clock: _Stages,
        stats: dict[tuple[int, int], dict[str, float]] | None,
    ) -> tuple[Prediction, list[np.ndarray]]:
        """Segment the slices ``index`` (``ready``: their inputs, already at the segmenter's
        size) under the rule stored with the segmenter's version, into ``mask``."""
        _, h, w = read.image.shape
        rule = route.info

        def finish(chunk: np.ndarray, probabilities: np.ndarray) -> None:
            binary = drop_small_components(
                probabilities[:, 0] >= rule.threshold, rule.min_component_px
            ).astype(np.uint8)
            mask[chunk] = restore_mask(binary, (h, w))

        return await self._infer(read, route, index, clock, ready=ready, finish=finish, stats=stats)

    async def _run(
        self,
        read: ReadUpload,
        request: AnalyzeRequest,
        chain: Chain,
        cls_route: Route,
        clock: _Stages,
    ) -> Analysis:
        image = read.image
        z, h, w = image.shape
        cls_size = cls_route.info.input_size
        stats = self._stats(request)
        classifier, slices = await self._infer(read, cls_route, np.arange(z), clock, stats=stats)
        probs = classifier.probabilities
        n_classes = len(cls_route.info.classes)
        if probs.ndim != 2 or probs.shape[1] < 2 or probs.shape[1] != n_classes:
            raise MedopsError(
                f"{cls_route.info.name} answered shape {probs.shape}, expected (N, {n_classes})"
            )
        chosen = _decide(probs, cls_route)
        if n_classes > 2:
            # a multi-class classifier: its most probable class's probability, no flags
            positive_p = probs[np.arange(z), chosen].astype(float)
            flagged = np.zeros(z, bool)
        else:
            positive_p = probs[:, -1].astype(float)
            flagged = chosen.astype(bool)
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
            slice_classes=chosen,
            input_features=stats or {},
        )
        if request.segment == "never" or chain.segmenter is None:
            return analysis
        seg_route = await self.predictor.route(chain.segmenter, request.routing)
        _expect(seg_route, "segmentation")
        rule = seg_route.info
        gate = cls_route.info.threshold if rule.gate_threshold is None else rule.gate_threshold
        wanted = positive_p >= gate if request.segment == "auto" else np.ones(z, bool)
        index = np.flatnonzero(wanted)
        if index.size:
            ready = [slices[k] for k in index] if rule.input_size == cls_size else None
            segmenter, seg_in = await self._masks(read, seg_route, index, ready, mask, clock, stats)
            peaks = segmenter.probabilities.reshape(len(index), -1).max(axis=1)
            analysis.segment_max = {int(k): float(p) for k, p in zip(index, peaks, strict=True)}
            analysis.segment_inputs = {int(k): x for k, x in zip(index, seg_in, strict=True)}
            analysis.segmenter = segmenter
        analysis.segmented = np.asarray(wanted)
        analysis.positive = np.asarray(mask.reshape(z, -1).any(axis=1))
        return analysis

    async def _segment_all(
        self, read: ReadUpload, request: AnalyzeRequest, seg_route: Route, clock: _Stages
    ) -> Analysis:
        """A segmenter alone: a mask on every slice."""
        if request.segment == "never":
            raise InvalidInputError(
                f"segment=never leaves nothing to run: {seg_route.info.name} is a segmenter"
            )
        z, h, w = read.image.shape
        mask = np.zeros((z, h, w), np.uint8)
        index = np.arange(z)
        stats = self._stats(request)
        segmenter, seg_in = await self._masks(read, seg_route, index, None, mask, clock, stats)
        peaks = segmenter.probabilities.reshape(z, -1).max(axis=1).astype(float)
        positive = np.asarray(mask.reshape(z, -1).any(axis=1))
        return Analysis(
            request_id=request.request_id,
            image=read,
            probabilities=peaks,
            positive=positive,
            flagged=positive,
            mask=mask,
            segmented=np.ones(z, bool),
            classifier=None,
            segmenter=segmenter,
            inputs=seg_in,
            segment_max={int(k): float(p) for k, p in zip(index, peaks, strict=True)},
            segment_inputs={int(k): x for k, x in zip(index, seg_in, strict=True)},
            input_features=stats or {},
        )

    # ------------------------------------------------------------------ the prediction log

    def _stats(self, request: AnalyzeRequest) -> dict[tuple[int, int], dict[str, float]] | None:
        """Where the inputs' image statistics go while the models run (None: no log)."""
        return {} if request.log and self.store is not None else None

    def _records(self, a: Analysis, base_id: str) -> list[PredictionRecord]:
        """One entry per slice for the classifier, one per segmented slice for the segmenter.
        Image statistics and masks only; nothing identifies anyone. The statistics were
        computed while the models ran (``a.input_features``); the mask's RLE is shared with
        the JSON answer."""
        shape = a.image.image.shape[1:]

        def features(
            route: Route, index: Sequence[int], inputs: Sequence[np.ndarray]
        ) -> dict[int, dict[str, float]]:
            """Statistics and embedding of the inputs of slices ``index``, by slice."""
            size = route.info.input_size
            embedded = self.features.embeddings(route.info.name, route.version, inputs)
            out = {}
            for k, x, embedding in zip(index, inputs, embedded, strict=True):
                stats = a.input_features.get((size, k))
                if stats is None:
                    stats = image_features(x, original_shape=shape)
                out[k] = {**stats, **embedding}
            return out

        cls_features = (
            features(a.classifier.route, range(len(a.inputs)), a.inputs)
            if a.classifier is not None
            else {}
        )
        segmented = sorted(a.segment_max)
        seg_features = (
            features(
                a.segmenter.route,
                segmented,
                [a.segment_inputs.get(k, a.inputs[k]) for k in segmented],
            )
            if a.segmenter is not None
            else {}
        )
        if a.mask_rle is None:
            a.mask_rle = rle_encode_volume(a.mask)
        records = []
        for k in range(len(a.inputs)):
            if a.classifier is not None:
                cls = a.classifier.route
                classes = cls.info.classes
                row = a.classifier.probabilities[k]
                assert a.slice_classes is not None
                answered = int(a.slice_classes[k])
                records.append(
                    PredictionRecord(
                        request_id=f"{base_id}.{k}",
                        model=cls.info.name,
                        version=cls.version,
                        variant=cls.variant,
                        probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
                        features=cls_features[k],
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
                        features=seg_features[k],
                        area=float(a.mask[k].sum()) * a.image.image.pixel_area_mm2,
                        mask_rle=a.mask_rle[k],
                    )
                )
        return records

    def _finish(self, a: Analysis, request: AnalyzeRequest) -> None:
        """After the models: the prediction log and the review copy (when logged), then the
        answer in the media type asked for."""
        if request.log:
            self._log_predictions(a)
            self._keep_for_review(a)
        a.answer = encode(a, request.media_type)

    def _log_predictions(self, a: Analysis) -> None:
        """Write the prediction log; a failing store never fails the clinical answer."""
        if self.store is None:
            return
        base_id = _log_id(a.request_id)
        try:
            self.store.record_many(self._records(a, base_id))
        except MedopsError as exc:
            log.warning("prediction not logged", extra={"reason": exc.message})
            return
        a.prediction_ids = [f"{base_id}.{k}" for k in range(len(a.inputs))]

    # ------------------------------------------------------------------ shadow copies

    def _spawn_shadows(self, a: Analysis) -> None:
        """Ask each shadow variant of the classifier for the same slices, after the answer:
        what it decided goes to the log's shadow table under the same prediction ids, where
        the review queue compares it with the served decision. Only for a logged analysis."""
        if a.classifier is None or not a.prediction_ids or self.store is None:
            return
        for route in a.classifier.route.shadows:
            task = asyncio.create_task(self._shadow(a, route, a.prediction_ids))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    async def _shadow(self, a: Analysis, route: Route, ids: Sequence[str]) -> None:
        assert self.store is not None and a.classifier is not None
        same_size = route.info.input_size == a.classifier.info.input_size
        try:
            shadow, _ = await self._infer(
                a.image,
                route,
                np.arange(len(ids)),
                _Stages(),
                ready=a.inputs if same_size else None,
            )
            probs = shadow.probabilities
            if probs.ndim != 2 or probs.shape[1] != len(route.info.classes):
                raise MedopsError(f"{route.info.name} answered shape {probs.shape}")
            chosen = _decide(probs, route)
            classes = route.info.classes
            records = [
                PredictionRecord(
                    request_id=pid,
                    model=route.info.name,
                    version=route.version,
                    variant=route.variant,
                    probabilities={c: float(p) for c, p in zip(classes, probs[k], strict=True)},
                    features={},
                    decision=classes[int(chosen[k])],
                    confidence=float(probs[k, int(chosen[k])]),
                )
                for k, pid in enumerate(ids)
            ]
            await asyncio.to_thread(self.store.record_shadow, records)
        except MedopsError as exc:
            log.warning(
                "shadow copy not logged",
                extra={"model": route.info.name, "variant": route.variant, "reason": exc.message},
            )

    async def close(self) -> None:
        """Stop the shadow copies still running (their answers are never needed)."""
        tasks = list(self._shadows)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _keep_for_review(self, a: Analysis) -> None:
        """Keep the de-identified study for the review page (when on and logged); a failure
        here never fails the clinical answer."""
        if self.review is None or not self.review.enabled or not a.prediction_ids:
            return
        try:
            self.review.keep(a)
        except (OSError, MedopsError) as exc:
            log.warning("study not kept for review", extra={"reason": type(exc).__name__})

    # ------------------------------------------------------------------ metrics

    def _count(self, route: Route | None, status: int, clock: _Stages) -> None:
        """One request counted, each stage observed once (labelled by the first model: the
        classifier, else the segmenter); a request refused before routing has no model to
        count under."""
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


def _single(route: Route) -> Chain:
    """The one-model analysis of a routed version, by the task its metadata declares."""
    task = route.info.task
    if task == "classification":
        return Chain(classifier=route.info.name)
    if task == "segmentation":
        return Chain(segmenter=route.info.name)
    raise InvalidInputError(
        f"model {route.info.name} declares task {task!r}; /v1/analyze runs classification "
        "and segmentation models"
    )


def _decide(probs: np.ndarray, route: Route) -> np.ndarray:
    """The class index per row under the version's rule: two classes, the last at its
    operating threshold; more, the most probable."""
    if probs.shape[1] > 2:
        return np.asarray(probs.argmax(axis=1), np.int64)
    return np.asarray(probs[:, -1] >= route.info.threshold, np.int64)


def _expect(route: Route, task: str) -> None:
    """A chain's step must be served by a model of that step's task."""
    if route.info.task != task:
        raise MedopsError(
            f"model {route.info.name} declares task {route.info.task!r} but its chain step "
            f"needs {task}"
        )


def _log_id(request_id: str | None) -> str:
    return request_id if request_id and _ID.match(request_id) else uuid.uuid4().hex
