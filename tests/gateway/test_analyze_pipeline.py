"""The clinical plane's pipelined flow (a unit test of its own logic, over a recording
predictor): batches prepared while the previous one is inferred, yet the same batches, the
same answer and the same prediction log as preprocessing everything first and inferring
slice batch by slice batch; a failing batch leaves nothing running."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

import medops.clinical.plane as plane_module
from medops.clinical import ClinicalPlane
from medops.clinical.types import Analysis, AnalyzeRequest, Chain, Route
from medops.errors import BackendUnavailableError
from medops.imaging.formats import write_nifti
from medops.imaging.image import Image
from medops.imaging.lgg import lgg_patient_volume
from medops.imaging.upload import Upload
from medops.modelspec import ModelInfo
from medops.monitoring import EmbeddingReducer, PredictionFeatures
from medops.monitoring.features import pooled_vectors
from medops.monitoring.store import PredictionRecord
from medops.rle import rle_encode
from medops.transforms import drop_small_components, preprocess_slice, restore_mask

SIZE = 64
BATCH = 4
CLS = ModelInfo("cls", "1", "classification", SIZE, ("normal", "tumour"), 0.5)
SEG = ModelInfo("seg", "1", "segmentation", SIZE, ("tumour",), 0.55, min_component_px=5)


class RecordingPredictor:
    """Deterministic outputs computed from each batch, slow enough that a pipeline shows."""

    def __init__(self, fail_at: int | None = None, classifier: ModelInfo = CLS) -> None:
        self.classifier = classifier
        self.batches: dict[str, list[np.ndarray]] = {"cls": [], "seg": []}
        self.returned: list[float] = []
        self.fail_at = fail_at

    async def route(self, model: str, routing: Mapping[str, str]) -> Route:
        return Route(self.classifier if model == "cls" else SEG, "1", "champion")

    async def predict(self, model: str, batch: np.ndarray, route: Route) -> np.ndarray:
        self.batches[model].append(batch.copy())
        if self.fail_at is not None and len(self.batches[model]) == self.fail_at:
            raise BackendUnavailableError("the backend went away")
        await asyncio.sleep(0.05)
        self.returned.append(time.perf_counter())
        return _outputs(model, batch)


def _outputs(model: str, batch: np.ndarray) -> np.ndarray:
    if model == "cls":
        p = batch.reshape(len(batch), -1).mean(axis=1)
        return np.stack([1 - p, p], axis=1).astype(np.float32)
    return batch[:, :1] ** 0.5


class WithReducers(PredictionFeatures):
    """Embedding reducers by model, as stored references would give them."""

    def __init__(self, reducers: dict[str, EmbeddingReducer]) -> None:
        super().__init__(None)
        self.reducers = reducers

    def _reducer(self, model: str, version: str) -> EmbeddingReducer | None:
        return self.reducers.get(model)


class ListStore:
    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []

    def record_many(self, records: Sequence[PredictionRecord]) -> None:
        self.records.extend(records)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory, lgg_dir: Path) -> tuple[bytes, np.ndarray]:
    """Ten real slices as a NIfTI upload, and the slices as the plane reads them back."""
    from medops.deid import UIDMap
    from medops.imaging.upload import read_upload

    patient = sorted(p for p in lgg_dir.iterdir() if p.is_dir())[0]
    array = lgg_patient_volume(patient).array[:, 5:15]
    path = write_nifti(Image(array), tmp_path_factory.mktemp("vol") / "v.nii.gz")
    body = path.read_bytes()
    image = read_upload(Upload((body,), None, "application/gzip"), UIDMap(b"k")).image
    return body, np.stack([image.slice(k) for k in range(image.num_slices)])


def _analyze(plane: ClinicalPlane, body: bytes, segment: str = "always") -> Analysis:
    request = AnalyzeRequest(
        Upload((body,), None, "application/gzip"),
        segment=segment,  # type: ignore[arg-type]
        request_id="req",
    )
    return asyncio.run(plane.analyze(request))


def test_pipelined_batches_answers_and_log_equal_the_sequential_reference(
    volume: tuple[bytes, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    body, slices = volume
    prepared: list[float] = []
    batched = plane_module.preprocess_slices

    def timed(*args: object, **kwargs: object) -> np.ndarray:
        prepared.append(time.perf_counter())
        return batched(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plane_module, "preprocess_slices", timed)
    # the reference: every slice preprocessed on its own, then batches in slice order
    inputs = np.stack([preprocess_slice(s, SIZE) for s in slices])
    predictor, store = RecordingPredictor(), ListStore()
    features = WithReducers(
        {  # one reducer per model, fitted on different vectors, so a mix-up shows
            "cls": EmbeddingReducer.fit(pooled_vectors(inputs), n_components=3),
            "seg": EmbeddingReducer.fit(pooled_vectors(inputs**2), n_components=2),
        }
    )
    plane = ClinicalPlane(
        predictor,
        {"c": Chain("cls", "seg")},
        default_chain="c",
        batch_size=BATCH,
        store=store,
        features=features,
    )
    a = _analyze(plane, body)

    chunks = [inputs[i : i + BATCH] for i in range(0, len(inputs), BATCH)]
    for model in ("cls", "seg"):
        assert len(predictor.batches[model]) == len(chunks)
        for sent, want in zip(predictor.batches[model], chunks, strict=True):
            assert sent.dtype == np.float32 and np.array_equal(sent, want)
    # the second batch was ready before the first one's answer came back: a pipeline
    assert prepared[1] < predictor.returned[0]

    seg_out = _outputs("seg", inputs)
    binary = drop_small_components(seg_out[:, 0] >= SEG.threshold, SEG.min_component_px)
    want_mask = restore_mask(binary.astype(np.uint8), slices.shape[-2:])
    assert np.array_equal(a.mask, want_mask)
    assert np.array_equal(a.probabilities, _outputs("cls", inputs)[:, 1].astype(float))

    # the log: the statistics, embeddings and masks the slice-by-slice computation gives
    shape = slices.shape[-2:]
    by_model = {(r.model, r.request_id): r for r in store.records}
    assert len(by_model) == 2 * len(slices)
    for k, x in enumerate(inputs):
        for model, axes in (("cls", 3), ("seg", 2)):
            expected = features(model, "1", x, original_shape=shape)
            assert sum(name.startswith("emb_") for name in expected) == axes
            assert by_model[(model, f"req.{k}")].features == expected
        assert by_model[("seg", f"req.{k}")].mask_rle == rle_encode(want_mask[k])


def test_auto_segments_the_flagged_slices_in_batches_of_their_own(
    volume: tuple[bytes, np.ndarray],
) -> None:
    body, slices = volume
    inputs = np.stack([preprocess_slice(s, SIZE) for s in slices])
    p = _outputs("cls", inputs)[:, 1]
    threshold = float(np.median(p))  # flags about half of the slices
    predictor = RecordingPredictor(classifier=dataclasses.replace(CLS, threshold=threshold))
    plane = ClinicalPlane(predictor, {"c": Chain("cls", "seg")}, default_chain="c", batch_size=3)
    a = _analyze(plane, body, segment="auto")
    wanted = np.flatnonzero(p >= threshold)
    assert 0 < len(wanted) < len(slices), "the inputs should flag some slices, not all"
    sent = np.concatenate(predictor.batches["seg"])
    assert np.array_equal(sent, inputs[wanted])
    assert [len(b) for b in predictor.batches["seg"]] == [
        len(wanted[i : i + 3]) for i in range(0, len(wanted), 3)
    ]
    assert np.array_equal(np.flatnonzero(a.segmented), wanted)
    untouched = np.setdiff1d(np.arange(len(slices)), wanted)
    assert not a.mask[untouched].any()


def test_a_failing_batch_fails_the_request_and_leaves_no_worker_behind(
    volume: tuple[bytes, np.ndarray],
) -> None:
    body, _ = volume
    predictor, store = RecordingPredictor(fail_at=2), ListStore()
    plane = ClinicalPlane(
        predictor, {"c": Chain("cls", "seg")}, default_chain="c", batch_size=BATCH, store=store
    )

    async def run() -> set[asyncio.Task[object]]:
        request = AnalyzeRequest(Upload((body,), None, "application/gzip"), segment="always")
        with pytest.raises(BackendUnavailableError, match="went away"):
            await plane.analyze(request)
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(run()) == set()
    assert store.records == []  # nothing logged for a request that failed
