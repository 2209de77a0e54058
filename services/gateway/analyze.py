"""``POST /v1/analyze``: an image in, a clinical answer out.

Decode and de-identify (``medops.imaging``), preprocess each slice with the training code
(``medops.transforms.preprocess_slice``), run the classifier on every slice, then the segmenter
on the slices it flags (or on all of them with ``segment=always``), batched slice-wise. The
answer is JSON by default (probabilities, decisions, areas, volume, an RLE mask, models and
routing variants); ``Accept`` picks a mask file instead: ``image/png`` (one slice),
``application/x-nifti`` (``.nii``), ``application/gzip`` (``.nii.gz``) or
``application/dicom`` (a DICOM SEG referencing the de-identified source series).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
import tempfile
import time
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from medops.deid import UIDMap
from medops.errors import InvalidInputError, MedopsError, UnsupportedMediaTypeError
from medops.imaging.image import Image
from medops.modelspec import CLASSIFIER, SEGMENTER
from medops.monitoring import PredictionFeatures
from medops.monitoring.metrics import GatewayMetrics
from medops.monitoring.store import PredictionRecord, PredictionStore
from medops.rle import rle_encode, rle_encode_volume
from medops.service.logs import REQUEST_ID
from medops.transforms import drop_small_components, preprocess_slice, restore_mask

from .dataplane import DataPlane, Prediction
from .models import LoadedModel

log = logging.getLogger("medops.gateway.analyze")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,100}$")
"""Request ids usable as prediction log ids (the log's own token rule, room for a suffix)."""

JSON = "application/json"
PNG = "image/png"
NIFTI = "application/x-nifti"
NIFTI_GZ = "application/gzip"
DICOM = "application/dicom"
OFFERED = (JSON, PNG, NIFTI, NIFTI_GZ, DICOM)
SEGMENT_MODES = ("auto", "always", "never")


class NotAcceptableError(MedopsError):
    status_code = 406


def choose_media_type(accept: str | None) -> str:
    """The best offered media type for an ``Accept`` header (JSON when anything goes)."""
    if not accept:
        return JSON
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media, q = fields[0].lower(), 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        ranked.append((-q, i, media))
    for neg_q, _, media in sorted(ranked):
        if neg_q >= 0:
            continue
        if media in ("*/*", "application/*"):
            return JSON
        if media in OFFERED:
            return media
        if media == "image/*":
            return PNG
    raise NotAcceptableError(f"cannot answer with {accept!r}; offered: {', '.join(OFFERED)}")


@dataclass
class Upload:
    data: bytes | None
    files: list[bytes]
    filename: str | None
    content_type: str | None


@dataclass
class Analysis:
    image: Image
    probabilities: np.ndarray
    positive: np.ndarray
    """The served slice decision: a tumour mask survived the two-stage rule (or, with
    ``segment=never``, the classifier at its operating threshold)."""
    flagged: np.ndarray
    """The classifier's own decision at its operating threshold (its prediction log)."""
    mask: np.ndarray
    segmented: np.ndarray
    classifier: Prediction
    segmenter: Prediction | None
    inputs: list[np.ndarray]
    """The classifier's inputs (preprocessed slices), for the prediction log's statistics."""
    segment_max: dict[int, float]
    """Highest tumour probability of every segmented slice."""
    prediction_ids: list[str] | None = None
    """Per-slice ids in the prediction log (for feedback), when logging is on."""


class Analyzer:
    """The two-stage flow over a :class:`DataPlane`; stateless between requests."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        batch_size: int = 16,
        deid_key: bytes | None = None,
        store: PredictionStore | None = None,
        metrics: GatewayMetrics | None = None,
        home: Path | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.features = PredictionFeatures(home)
        """Image statistics plus the embedding of each model version's drift reference."""
        self.batch_size = max(1, batch_size)
        self.deid_key = deid_key or secrets.token_bytes(32)
        self.store = store
        self.metrics = metrics

    def uid_map(self) -> UIDMap:
        """A fresh map per request (nothing accumulates) with the gateway's key."""
        return UIDMap(self.deid_key)

    # ------------------------------------------------------------------ input

    async def _upload(self, request: Request) -> Upload:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            try:
                form = await request.form()
            except Exception as exc:  # the multipart parser raises its own types
                raise InvalidInputError(
                    f"malformed multipart body ({type(exc).__name__})"
                ) from None
            parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not parts:
                raise InvalidInputError("multipart body holds no file part")
            files = [await p.read() for p in parts]
            if len(files) == 1:
                return Upload(files[0], [], parts[0].filename, parts[0].content_type)
            return Upload(None, files, None, DICOM)
        body = await request.body()
        if not body:
            raise InvalidInputError("empty body: send an image file or a multipart upload")
        return Upload(body, [], None, content_type or None)

    @staticmethod
    def _segment_mode(request: Request) -> str:
        mode = request.query_params.get("segment", "auto").lower()
        if mode not in SEGMENT_MODES:
            raise InvalidInputError(f"segment must be one of {SEGMENT_MODES}, got {mode!r}")
        return mode

    # ------------------------------------------------------------------ the flow

    async def _predict(
        self, model: str, batch: list[np.ndarray], chosen: tuple[LoadedModel, str]
    ) -> Prediction:
        """All batches of one image go to the variant routing chose for it."""
        parts = []
        first: Prediction | None = None
        for start in range(0, len(batch), self.batch_size):
            chunk = np.stack(batch[start : start + self.batch_size]).astype(np.float32, copy=False)
            p, chosen = await self.dataplane.predict(model, chunk, chosen=chosen)
            first = first or p
            parts.append(p.probabilities)
        assert first is not None
        return Prediction(np.concatenate(parts), first.info, first.version, first.variant)

    async def _route(self, model: str, headers: Mapping[str, str]) -> tuple[LoadedModel, str]:
        """Route once per image; the chosen version fixes the preprocessing size too."""
        entry, variant, _ = await self.dataplane.choose(model, None, headers)
        return entry, variant

    async def analyze(self, image: Image, mode: str, headers: Mapping[str, str]) -> Analysis:
        z, h, w = image.shape
        cls_route = await self._route(CLASSIFIER, headers)
        cls_size = cls_route[0].info.input_size
        slices = await asyncio.to_thread(
            lambda: [preprocess_slice(image.slice(k), cls_size) for k in range(z)]
        )
        classifier = await self._predict(CLASSIFIER, slices, cls_route)
        probs = classifier.probabilities
        if probs.ndim != 2 or probs.shape[1] < 2:
            raise MedopsError(f"{CLASSIFIER} answered shape {probs.shape}, expected (N, 2)")
        tumour = probs[:, -1].astype(float)
        flagged = tumour >= classifier.info.threshold
        mask = np.zeros((z, h, w), np.uint8)
        segmenter = None
        segment_max: dict[int, float] = {}
        if mode == "never":
            return Analysis(
                image,
                tumour,
                flagged,
                flagged,
                mask,
                np.zeros(z, bool),
                classifier,
                None,
                slices,
                {},
            )
        # the segmenter version carries the rule chosen with its classifier on validation data
        seg_route = await self._route(SEGMENTER, headers)
        rule = seg_route[0].info
        gate = classifier.info.threshold if rule.gate_threshold is None else rule.gate_threshold
        wanted = np.asarray(tumour >= gate) if mode == "auto" else np.ones(z, bool)
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
            segmenter = await self._predict(SEGMENTER, seg_in, seg_route)
            binary = drop_small_components(
                segmenter.probabilities[:, 0] >= rule.threshold, rule.min_component_px
            ).astype(np.uint8)
            mask[index] = restore_mask(binary, (h, w))
            peaks = segmenter.probabilities.reshape(len(index), -1).max(axis=1)
            segment_max = {int(k): float(p) for k, p in zip(index, peaks, strict=True)}
        positive = np.asarray(mask.reshape(z, -1).any(axis=1))
        return Analysis(
            image,
            tumour,
            positive,
            flagged,
            mask,
            wanted,
            classifier,
            segmenter,
            slices,
            segment_max,
        )

    # ------------------------------------------------------------------ answers

    @staticmethod
    def _model(p: Prediction | None) -> dict[str, Any] | None:
        if p is None:
            return None
        return {
            "name": p.info.name,
            "version": p.version,
            "variant": p.variant,
            "threshold": p.info.threshold,
        }

    def to_json(self, a: Analysis) -> dict[str, Any]:
        image = a.image
        area_px = a.mask.reshape(a.mask.shape[0], -1).sum(axis=1)
        pixel_area = image.pixel_area_mm2
        volumetric = image.num_slices > 1
        return {
            "request_id": REQUEST_ID.get(),
            "image": {
                "format": image.source_format,
                "shape": list(image.shape),
                "spacing_mm": [round(s, 6) for s in image.spacing],
                "deidentified": bool(
                    image.metadata.get("deidentified", image.source_format != "dicom")
                ),
                **{
                    key: image.metadata[key]
                    for key in ("study_instance_uid", "series_instance_uid")
                    if key in image.metadata
                },
            },
            "models": {
                "classifier": self._model(a.classifier),
                "segmenter": self._model(a.segmenter),
            },
            "decision": "tumour" if bool(a.positive.any()) else "no tumour",
            "threshold": a.classifier.info.threshold,
            **(
                {
                    "rule": {
                        "gate_threshold": a.segmenter.info.gate_threshold,
                        "min_component_px": a.segmenter.info.min_component_px,
                    }
                }
                if a.segmenter is not None
                else {}
            ),
            "slices": [
                {
                    "index": k,
                    "probability": round(float(a.probabilities[k]), 6),
                    "tumour": bool(a.positive[k]),
                    "segmented": bool(a.segmented[k]),
                    "area_mm2": round(float(area_px[k]) * pixel_area, 4),
                    **({"prediction_id": a.prediction_ids[k]} if a.prediction_ids else {}),
                }
                for k in range(image.num_slices)
            ],
            "tumour_area_mm2": round(float(area_px.sum()) * pixel_area, 4),
            "tumour_volume_ml": (
                round(float(area_px.sum()) * image.voxel_volume_ml, 6) if volumetric else None
            ),
            "mask": {"encoding": "coco-rle", "slices": rle_encode_volume(a.mask)},
        }

    @staticmethod
    def to_png(a: Analysis) -> bytes:
        from PIL import Image as PILImage

        if a.mask.shape[0] != 1:
            raise NotAcceptableError(
                f"image/png holds one slice; this image has {a.mask.shape[0]}: "
                f"ask for {NIFTI}, {NIFTI_GZ} or {DICOM}"
            )
        out = io.BytesIO()
        PILImage.fromarray(a.mask[0] * np.uint8(255)).save(out, format="PNG")
        return out.getvalue()

    @staticmethod
    def to_nifti(a: Analysis, gz: bool) -> bytes:
        from medops.imaging.formats import write_nifti

        mask_image = Image(a.mask[None], a.image.affine, {}, "nifti")
        with tempfile.TemporaryDirectory(prefix="medops-mask-") as tmp:
            path = write_nifti(mask_image, Path(tmp) / ("mask.nii.gz" if gz else "mask.nii"))
            return path.read_bytes()

    def _records(self, a: Analysis, base_id: str) -> list[PredictionRecord]:
        """Prediction log entries: one per slice for the classifier, one per segmented slice
        for the segmenter. Image statistics and masks only; nothing identifies anyone."""
        shape = a.image.shape[1:]
        cls = a.classifier
        classes = cls.info.classes
        records = []
        for k, inputs in enumerate(a.inputs):
            features = self.features(cls.info.name, cls.version, inputs, original_shape=shape)
            row = cls.probabilities[k]
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
            seg = a.segmenter
            if seg is not None and k in a.segment_max:
                records.append(
                    PredictionRecord(
                        request_id=f"{base_id}.{k}",
                        model=seg.info.name,
                        version=seg.version,
                        variant=seg.variant,
                        probabilities={"max": a.segment_max[k]},
                        features=self.features(
                            seg.info.name, seg.version, inputs, original_shape=shape
                        ),
                        area=float(a.mask[k].sum()) * a.image.pixel_area_mm2,
                        mask_rle=rle_encode(a.mask[k]),
                    )
                )
        return records

    async def _log_predictions(self, a: Analysis) -> None:
        """Write the prediction log; a failing store never fails the clinical answer."""
        if self.store is None:
            return
        rid = REQUEST_ID.get() or ""
        base_id = rid if _ID.match(rid) else uuid.uuid4().hex
        try:
            records = await asyncio.to_thread(self._records, a, base_id)
            await asyncio.to_thread(self.store.record_many, records)
        except MedopsError as exc:
            log.warning("prediction not logged", extra={"reason": exc.message})
            return
        a.prediction_ids = [f"{base_id}.{k}" for k in range(len(a.inputs))]

    def _stage(self, a: Analysis | None, stage: str, seconds: float) -> None:
        if self.metrics is not None and a is not None:
            c = a.classifier
            self.metrics.observe_stage(
                model=c.info.name,
                version=c.version,
                variant=c.variant,
                stage=stage,
                seconds=seconds,
            )

    async def handle(self, request: Request) -> Response:
        media = choose_media_type(request.headers.get("accept"))
        mode = self._segment_mode(request)
        upload = await self._upload(request)
        sources = None
        start = time.perf_counter()
        if media == DICOM:
            from .seg import read_with_sources

            image, sources = await asyncio.to_thread(read_with_sources, upload, self.uid_map())
        else:
            image = await asyncio.to_thread(_read, upload, self.uid_map())
        decoded = time.perf_counter()
        result = await self.analyze(image, mode, request.headers)
        self._stage(result, "decode", decoded - start)
        await self._log_predictions(result)
        headers = {
            "x-medops-variant": result.classifier.variant,
            "x-medops-model-version": result.classifier.version,
        }
        try:
            return await self._answer(result, media, sources, headers)
        finally:
            self._stage(result, "total", time.perf_counter() - start)

    async def _answer(
        self, result: Analysis, media: str, sources: Any, headers: dict[str, str]
    ) -> Response:
        if media == JSON:
            return JSONResponse(self.to_json(result), headers=headers)
        if media == PNG:
            return Response(self.to_png(result), media_type=PNG, headers=headers)
        if media in (NIFTI, NIFTI_GZ):
            gz = media == NIFTI_GZ
            headers["content-disposition"] = f'attachment; filename="mask.nii{".gz" if gz else ""}"'
            body = await asyncio.to_thread(self.to_nifti, result, gz)
            return Response(body, media_type=media, headers=headers)
        from .seg import build_seg

        assert sources is not None
        body = await asyncio.to_thread(
            build_seg, result.mask, result.image, sources, self._model(result.segmenter)
        )
        headers["content-disposition"] = 'attachment; filename="mask-seg.dcm"'
        return Response(body, media_type=DICOM, headers=headers)


def _read(upload: Upload, uid_map: UIDMap) -> Image:
    from medops.imaging.dicom import read_dicom_series_bytes
    from medops.imaging.io import read_image_bytes

    if upload.files:
        return read_dicom_series_bytes(upload.files, name="<upload>", uid_map=uid_map)
    assert upload.data is not None
    return read_image_bytes(
        upload.data, filename=upload.filename, content_type=upload.content_type, uid_map=uid_map
    )


def zip_dicoms(data: bytes) -> list[bytes] | None:
    """The DICOM members of a ZIP upload, or None when ``data`` is no ZIP."""
    from medops.imaging.dicom import is_dicom_bytes
    from medops.imaging.io import MAX_DECOMPRESSED_BYTES

    if not data.startswith(b"PK"):
        return None
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > MAX_DECOMPRESSED_BYTES:
            raise InvalidInputError("<upload>: the ZIP expands beyond the size limit")
        contents = [archive.read(m) for m in members]
    except zipfile.BadZipFile as exc:
        raise InvalidInputError(f"<upload>: damaged ZIP archive ({exc})") from None
    found = [b for b in contents if is_dicom_bytes(b[:132])]
    if not found:
        raise UnsupportedMediaTypeError("<upload>: the ZIP holds no DICOM file")
    return found
