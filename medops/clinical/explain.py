"""Explanations: occlusion sensitivity of the classifier's decision and the segmenter's mask.

MONAI's :class:`~monai.visualize.OcclusionSensitivity` slides a soft (Gaussian) occluder over
each slice and asks the model again; where hiding a region lowers the model's score, that
region mattered. MONAI wants a torch module: :class:`_PortModule` is one whose forward asks
the clinical plane's :class:`~medops.clinical.types.Predictor` for the routed version, so an
explanation runs through any backend (in-process ONNX Runtime, Triton, any V2 server) and on
the very version that answered the analysis. MONAI batches the occluded variants
(``n_batch`` per predictor call).

Scores: the classifier's probability of the class it decided on that slice; the segmenter's
mean probability over the mask it predicted on the unoccluded slice (over the whole slice
when that mask is empty). Saliency is ``score(original) - score(occluded)`` at the model's
input size: positive where the region supported the answer.

``method="gradcam"``: MONAI's :class:`~monai.visualize.GradCAM` on the routed version's own
torch network (its logged weights, from ``torch_models``; a version served from a bare ONNX
file has none, and the request is refused with 409). One forward and backward pass per slice
instead of one prediction per occluder position; the map is the class's (or the mask
score's) gradient-weighted activation of a late encoder stage (classifier) or the last
decoder stage before the output (segmenter), :data:`GRADCAM_LAYERS`, upsampled and scaled by
its peak. It
explains the network's unmirrored pass (a version served with test-time flips averages two).
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from medops.errors import ConflictError, InvalidInputError, MedopsError

from .encoders import NotAcceptableError
from .plane import ClinicalPlane
from .types import DICOM, JSON, PNG, Analysis, AnalyzeRequest, Encoded, Prediction, Predictor

Target = Literal["auto", "classifier", "segmenter"]
TARGETS: tuple[Target, ...] = ("auto", "classifier", "segmenter")
Method = Literal["occlusion", "gradcam"]
METHODS: tuple[Method, ...] = ("occlusion", "gradcam")
TorchModels = Callable[[str, str], Any]
"""(model, version) -> that version's serving torch network with its weights (blocking);
raises :class:`ConflictError` when there are none."""
GRADCAM_LAYERS = {"classification": "layer3", "segmentation": "net.model.1.submodule.2"}
"""Grad-CAM's layer: the ResNet's third stage (a sixteenth of the input's side: its last, an
eighth coarser still, pointed at the tumour less often in ``bench/explain.py``); the ResUNet's
last up-sampling stage before the output block (half the input's side)."""
EXPLAIN_OFFERED = (JSON, PNG, DICOM)
"""JSON saliency arrays per slice, or one slice's heat map as a PNG or (for a DICOM upload) a
DICOM secondary capture of the heat map over the de-identified slice."""


@dataclass(frozen=True)
class OcclusionSettings:
    mask_fraction: float = 0.125
    """Occluder side as a share of the model's input size (16 px at 128)."""
    overlap: float = 0.5
    """Overlap of neighbouring occluder positions (MONAI's sliding-window overlap)."""
    n_batch: int = 64
    """Occluded variants MONAI builds at once; they reach the predictor in chunks of the
    plane's batch size."""


@dataclass(frozen=True)
class ExplainRequest:
    analyze: AnalyzeRequest
    """The upload and routing, as for an analysis (its ``media_type``: the explanation's)."""
    slices: Sequence[int] | None = None
    """The slices to explain (None: all)."""
    target: Target = "auto"
    """For a PNG heat map: whose saliency (``auto``: the segmenter's where it ran)."""
    method: Method = "occlusion"


@dataclass
class SliceSaliency:
    index: int
    classifier: np.ndarray | None = None
    """Saliency of the decided class at the classifier's input size, or None."""
    segmenter: np.ndarray | None = None
    """Saliency of the predicted mask at the segmenter's input size, or None (not segmented)."""


@dataclass
class Explanation:
    analysis: Analysis
    slices: list[SliceSaliency]
    settings: OcclusionSettings
    target: Target = "auto"
    seconds: float = 0.0
    answer: Encoded | None = field(default=None)
    method: Method = "occlusion"


class _PortModule:
    """Built lazily (torch is imported only when explaining)."""

    @staticmethod
    def make(score: Callable[[np.ndarray], np.ndarray]) -> Any:
        import torch
        from torch import nn

        class PortModule(nn.Module):
            """A torch module whose forward is a predictor call, scored per image ``(N, K)``."""

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                batch = x.detach().cpu().numpy().astype(np.float32, copy=False)
                return torch.from_numpy(np.ascontiguousarray(score(batch), dtype=np.float32))

        return PortModule()


def occlusion_map(
    module: Any, image: np.ndarray, settings: OcclusionSettings = OcclusionSettings()
) -> np.ndarray:
    """MONAI's occlusion map of one ``(C, S, S)`` input: the module's ``K`` outputs with each
    region occluded, ``(K, S, S)``."""
    import torch
    from monai.visualize import OcclusionSensitivity

    size = int(image.shape[-1])
    mask = max(2, round(size * settings.mask_fraction))
    occlusion = OcclusionSensitivity(
        nn_module=module,
        mask_size=mask,
        n_batch=settings.n_batch,
        verbose=False,
        overlap=settings.overlap,
        activate=False,
    )
    with torch.no_grad():
        occ, _ = occlusion(torch.from_numpy(np.ascontiguousarray(image[None], np.float32)))
    return np.asarray(occ[0].cpu().numpy(), dtype=np.float32)


class GradCam:
    """MONAI's Grad-CAM on one version's network: its hooks are registered once, and one map
    is computed at a time (the hooks hold the last pass's activations)."""

    def __init__(self, serving: Any, task: str, threshold: float) -> None:
        import torch
        from monai.visualize import GradCAM
        from torch import nn

        net = serving.model  # the network without the serving wrapper's flips and scaling

        class MaskScore(nn.Module):
            """The segmenter's score as a class: its mean probability over the mask it
            predicts (the whole slice when that is empty), ``(N, 1)``."""

            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                p = torch.sigmoid(self.net(x))[:, 0]
                region = (p >= threshold).float().detach()
                empty = region.sum(dim=(1, 2), keepdim=True) == 0
                region = torch.where(empty, torch.ones_like(region), region)
                return ((p * region).sum(dim=(1, 2)) / region.sum(dim=(1, 2)))[:, None]

        self.module = net if task == "classification" else MaskScore()
        layer = GRADCAM_LAYERS.get(task, "")
        if layer not in dict(self.module.named_modules()):
            raise ConflictError(f"Grad-CAM: this {task} network has no layer {layer!r}")
        # the raw rectified map: MONAI's default post-processing maps (min, max) to (1, 0)
        self._cam = GradCAM(nn_module=self.module, target_layers=layer, postprocessing=lambda m: m)
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray, class_index: int) -> np.ndarray:
        """The map of one ``(C, S, S)`` input for output ``class_index``, ``(S, S)``, scaled
        so that its peak is 1 (0 where nothing supported the output)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image[None], np.float32))
        with self._lock:
            cam = self._cam(x, class_idx=class_index)
        out = np.asarray(cam[0, 0].detach().cpu().numpy(), dtype=np.float32)
        peak = float(out.max())
        return out / peak if peak > 0 else out


class Explainer:
    """Occlusion (any backend) or Grad-CAM (where ``torch_models`` has the version's weights)
    explanations of the clinical plane's analyses."""

    CACHED = 8
    """Grad-CAM networks kept (a version each; the oldest is dropped)."""

    def __init__(
        self,
        plane: ClinicalPlane,
        settings: OcclusionSettings | None = None,
        torch_models: TorchModels | None = None,
    ) -> None:
        self.plane = plane
        self.predictor: Predictor = plane.predictor
        self.settings = settings or OcclusionSettings()
        self.torch_models = torch_models
        self._cams: dict[tuple[str, str], GradCam] = {}
        self._cams_lock = threading.Lock()

    def _gradcam(self, prediction: Prediction) -> GradCam:
        """The Grad-CAM of the routed version (built once, from its torch weights)."""
        assert self.torch_models is not None  # explain() refuses gradcam without them
        info, version = prediction.info, prediction.route.version
        key = (info.name, version)
        with self._cams_lock:
            if key not in self._cams:
                serving = self.torch_models(info.name, version)
                self._cams[key] = GradCam(serving, info.task, info.threshold)
                while len(self._cams) > self.CACHED:
                    self._cams.pop(next(iter(self._cams)))
            return self._cams[key]

    async def explain(self, request: ExplainRequest) -> Explanation:
        import time

        media_type = request.analyze.media_type
        if media_type not in EXPLAIN_OFFERED:
            raise NotAcceptableError(
                f"an explanation is answered as {' or '.join(EXPLAIN_OFFERED)}, not {media_type}"
            )
        if request.target not in TARGETS:
            raise InvalidInputError(f"target must be one of {TARGETS}, got {request.target!r}")
        if request.method not in METHODS:
            raise InvalidInputError(f"method must be one of {METHODS}, got {request.method!r}")
        if request.method == "gradcam" and self.torch_models is None:
            raise ConflictError("method=gradcam needs the versions' torch weights; use occlusion")
        # a DICOM answer needs the de-identified source datasets, which a DICOM analysis reads
        inner = DICOM if media_type == DICOM else JSON
        analysis = await self.plane.analyze(replace(request.analyze, media_type=inner, log=False))
        z = analysis.image.image.num_slices
        wanted = list(range(z)) if request.slices is None else list(request.slices)
        bad = [k for k in wanted if not 0 <= k < z]
        if bad:
            raise InvalidInputError(f"slices: {bad} out of range; the image has {z} slice(s)")
        if media_type in (PNG, DICOM) and len(wanted) != 1:
            raise NotAcceptableError(
                f"{media_type} holds one slice's heat map; name one with slices=K (of {z})"
            )
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        out = []
        explain_slice = self._slice if request.method == "occlusion" else self._gradcam_slice
        for k in dict.fromkeys(wanted):
            out.append(await asyncio.to_thread(explain_slice, analysis, k, loop))
        explanation = Explanation(
            analysis,
            out,
            self.settings,
            request.target,
            time.perf_counter() - start,
            method=request.method,
        )
        explanation.answer = await asyncio.to_thread(encode_explanation, explanation, media_type)
        return explanation

    # ------------------------------------------------------------------ per slice

    def _call(
        self, prediction: Prediction, loop: asyncio.AbstractEventLoop
    ) -> Callable[[np.ndarray], np.ndarray]:
        """A blocking predictor call on the routed version (from MONAI's worker thread), in
        chunks of the plane's batch size (what a Triton model's ``max_batch_size`` allows)."""
        route = prediction.route
        chunk = self.plane.batch_size

        def call(batch: np.ndarray) -> np.ndarray:
            parts = []
            for start in range(0, len(batch), chunk):
                part = np.ascontiguousarray(batch[start : start + chunk], np.float32)
                future = asyncio.run_coroutine_threadsafe(
                    self.predictor.predict(route.info.name, part, route), loop
                )
                parts.append(np.asarray(future.result()))
            return np.concatenate(parts)

        return call

    def _slice(self, a: Analysis, k: int, loop: asyncio.AbstractEventLoop) -> SliceSaliency:
        result = SliceSaliency(index=k)
        if a.classifier is not None:
            assert a.slice_classes is not None
            chosen = int(a.slice_classes[k])
            call = self._call(a.classifier, loop)

            def class_score(batch: np.ndarray) -> np.ndarray:
                return call(batch)[:, chosen : chosen + 1]

            x = a.inputs[k]
            base = float(a.classifier.probabilities[k, chosen])
            occ = occlusion_map(_PortModule.make(class_score), x, self.settings)[0]
            result.classifier = base - occ
        if a.segmenter is not None and k in a.segment_max:
            seg = a.segmenter
            x = _segmenter_input(a, k)
            call = self._call(seg, loop)
            probs = call(x[None])[0, 0]
            region = probs >= seg.info.threshold
            if not region.any():
                region = np.ones_like(region)
            weights = region.astype(np.float32) / float(region.sum())

            def mask_score(batch: np.ndarray) -> np.ndarray:
                p = call(batch)[:, 0]
                return (p * weights).sum(axis=(1, 2))[:, None]

            base = float((probs * weights).sum())
            occ = occlusion_map(_PortModule.make(mask_score), x, self.settings)[0]
            result.segmenter = base - occ
        return result

    def _gradcam_slice(
        self, a: Analysis, k: int, _loop: asyncio.AbstractEventLoop
    ) -> SliceSaliency:
        result = SliceSaliency(index=k)
        if a.classifier is not None:
            assert a.slice_classes is not None
            result.classifier = self._gradcam(a.classifier)(a.inputs[k], int(a.slice_classes[k]))
        if a.segmenter is not None and k in a.segment_max:
            result.segmenter = self._gradcam(a.segmenter)(_segmenter_input(a, k), 0)
        return result


def _segmenter_input(a: Analysis, k: int) -> np.ndarray:
    """Slice ``k`` as the segmenter saw it (at its own input size)."""
    from medops.transforms import preprocess_slice

    assert a.segmenter is not None
    ready = a.segment_inputs.get(k)
    if ready is not None:
        return ready
    return preprocess_slice(a.image.image.slice(k), a.segmenter.info.input_size)


# ---------------------------------------------------------------------- answers


def _rounded(saliency: np.ndarray | None) -> dict[str, Any] | None:
    if saliency is None:
        return None
    return {
        "size": list(saliency.shape),
        "max": round(float(saliency.max()), 6),
        "saliency": np.round(saliency.astype(np.float64), 5).tolist(),
    }


def explanation_json(e: Explanation) -> dict[str, Any]:
    a = e.analysis
    classes = a.classifier.info.classes if a.classifier is not None else None
    models = {
        role: None
        if p is None
        else {"name": p.info.name, "version": p.route.version, "variant": p.route.variant}
        for role, p in (("classifier", a.classifier), ("segmenter", a.segmenter))
    }
    return {
        "request_id": a.request_id,
        "method": e.method,
        **(
            {"mask_fraction": e.settings.mask_fraction, "overlap": e.settings.overlap}
            if e.method == "occlusion"
            else {}
        ),
        "seconds": round(e.seconds, 4),
        "models": models,
        "shape": list(a.image.image.shape),
        "slices": [
            {
                "index": s.index,
                **(
                    {"class": classes[int(a.slice_classes[s.index])]}
                    if classes is not None and a.slice_classes is not None
                    else {}
                ),
                "classifier": _rounded(s.classifier),
                "segmenter": _rounded(s.segmenter),
            }
            for s in e.slices
        ],
    }


def chosen_saliency(e: Explanation, s: SliceSaliency) -> np.ndarray:
    """The saliency a heat map shows: the named target, or the segmenter's where it ran."""
    if e.target == "classifier" or (e.target == "auto" and s.segmenter is None):
        if s.classifier is None:
            raise InvalidInputError("target=classifier: no classifier ran in this analysis")
        return s.classifier
    if s.segmenter is None:
        raise InvalidInputError(f"target=segmenter: slice {s.index} was not segmented")
    return s.segmenter


def heat_map_png(saliency: np.ndarray, shape: tuple[int, int]) -> bytes:
    """A "hot" RGBA heat map of the positive saliency at the image's size: transparent where
    nothing mattered, red to yellow (and opaque) where occlusion cost most."""
    from PIL import Image as PILImage

    from medops.transforms import restore_mask

    positive = np.clip(saliency, 0.0, None)
    peak = float(positive.max())
    v = positive / peak if peak > 0 else positive
    v = restore_mask(v, shape)
    rgba = np.zeros((*shape, 4), np.uint8)
    rgba[..., 0] = np.clip(v * 2.0, 0, 1) * 255
    rgba[..., 1] = np.clip(v * 2.0 - 1.0, 0, 1) * 255
    rgba[..., 3] = v * 255
    out = io.BytesIO()
    PILImage.fromarray(rgba, "RGBA").save(out, format="PNG")
    return out.getvalue()


def encode_explanation(e: Explanation, media_type: str) -> Encoded:
    if media_type == JSON:
        body = json.dumps(explanation_json(e), separators=(",", ":"))
        return Encoded(body.encode(), JSON)
    if media_type == PNG:
        (only,) = e.slices
        _, h, w = e.analysis.image.image.shape
        return Encoded(heat_map_png(chosen_saliency(e, only), (h, w)), PNG)
    if media_type == DICOM:
        (only,) = e.slices
        return Encoded(heat_map_dicom(e, only), DICOM, "heat-map-sc.dcm")
    raise MedopsError(f"no encoder for {media_type}")


def heat_map_dicom(e: Explanation, s: SliceSaliency) -> bytes:
    """A DICOM secondary capture (RGB) of the heat map blended over the de-identified slice, in
    the source's study (a new series), for a PACS viewer."""
    import highdicom as hd
    from PIL import Image as PILImage

    from .preview import slice_png

    sources = e.analysis.image.sources
    if sources is None:
        raise NotAcceptableError("a DICOM heat map needs a DICOM upload (file, series or ZIP)")
    _, h, w = e.analysis.image.image.shape
    saliency = chosen_saliency(e, s)
    heat = PILImage.open(io.BytesIO(heat_map_png(saliency, (h, w))))
    picture = PILImage.open(io.BytesIO(slice_png(e.analysis.image, s.index))).convert("RGBA")
    picture.alpha_composite(heat)
    pixels = np.asarray(picture.convert("RGB"))
    explained = e.analysis.segmenter if saliency is s.segmenter else e.analysis.classifier
    assert explained is not None
    name = explained.info.name
    source = sources[s.index]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medops",
        patient_orientation=_patient_orientation(source),
        # highdicom annotates the spacing as ints; DICOM's Pixel Spacing is decimal
        pixel_spacing=_pixel_spacing(source),  # type: ignore[arg-type]
        series_description=f"medops {e.method} heat map ({name} v{explained.route.version})",
    )
    if "Laterality" not in sc:
        # Type 2C in General Series (paired body parts): present and empty when unknown
        sc.Laterality = source.get("Laterality", "")
    out = io.BytesIO()
    sc.save_as(out)
    return out.getvalue()


def _pixel_spacing(source: Any) -> tuple[float, float]:
    rows, cols = (float(v) for v in source.get("PixelSpacing", (1.0, 1.0)))
    return rows, cols


def _patient_orientation(source: Any) -> tuple[str, str]:
    """Patient Orientation (the directions of the rows and the columns, e.g. ``("L", "P")``)
    from the source's Image Orientation (Patient): each direction's dominant axis."""
    cosines = [float(v) for v in source.get("ImageOrientationPatient", (1, 0, 0, 0, 1, 0))]

    def letter(v: list[float]) -> str:
        axis = int(np.argmax(np.abs(v)))
        return ("L", "P", "H")[axis] if v[axis] > 0 else ("R", "A", "F")[axis]

    return letter(cosines[:3]), letter(cosines[3:])


def parse_slices(text: str | None) -> list[int] | None:
    """``slices=3`` or ``slices=1,2,5`` (None: all)."""
    if text is None or not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInputError(
            f"slices: expected slice numbers separated by commas, got {text[:40]!r}"
        ) from None
