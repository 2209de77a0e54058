"""The transport-neutral core: health, metadata and inference, whatever the wire.

REST and gRPC layers translate their messages to :class:`InferRequest` and back; everything
else (routing, version choice, validation, deadlines, shadow copies) happens here once.

Pass-through: a request keeps the bytes it arrived in (its tensors are views of them), so a
backend speaking the caller's wire forwards them, and the answer goes back as the backend
wrote it. Validation reads the header and each float tensor once (the NaN rule); the answer
is decoded only when the plane needs its numbers (a classifier's prediction counts, a shadow
comparison). ``passthrough=False`` re-encodes every request and answer instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from typing import Any

import numpy as np

from medops.clinical.types import Route
from medops.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    InvalidInputError,
    MedopsError,
    NotFoundError,
)
from medops.modelspec import INPUT_NAME, OUTPUT_NAME
from medops.monitoring.metrics import GatewayMetrics
from medops.service.logs import MODEL, VARIANT

from .backends import Backend
from .models import LoadedModel, MissingVersionError, ModelManager, ref_of
from .routing import Router
from .types import InferRequest, InferResponse, Tensor, count_nonfinite

log = logging.getLogger("medops.gateway.dataplane")

SERVER_NAME = "medops-gateway"


def _medops_version() -> str:
    try:
        return _pkg_version("medops")
    except PackageNotFoundError:
        return "unknown"


EXTENSIONS = ["binary_tensor_data", "medops_analyze", "medops_routing"]


class DataPlane:
    def __init__(
        self,
        backend: Backend,
        models: ModelManager,
        router: Router,
        *,
        timeout_s: float = 30.0,
        metrics: GatewayMetrics | None = None,
        passthrough: bool = True,
    ) -> None:
        self.backend = backend
        self.models = models
        self.router = router
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.passthrough = passthrough
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    def wanted(self) -> list[tuple[str, str]]:
        """Every (model, reference) some routing variant serves."""
        out = []
        for name in self.models.models:
            for _variant, alias, version in self.router.variants(name):
                out.append((name, ref_of(alias, version)))
        return out

    async def sync_models(self) -> None:
        """Load every variant's version; only loaded variants get traffic."""
        await self.models.sync(self.wanted())
        for name in self.models.models:
            for variant, alias, version in self.router.variants(name):
                loaded = self.models.get(name, ref_of(alias, version)) is not None
                self.router.set_ready(name, variant, loaded)

    async def poll_forever(self, every_s: float) -> None:
        """Hot reload: reload moved aliases every ``every_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.sync_models()
            except Exception:  # the loop must outlive any single failure
                log.exception("model poll failed")

    async def follow_routing(self, every_s: float) -> None:
        """Serve the routing revision other replicas commit: adopt it every ``every_s`` seconds
        and load the variants it names, until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            try:
                if await asyncio.to_thread(self.router.refresh):
                    await self.sync_models()
            except Exception:  # the loop must outlive a store that is briefly away
                log.exception("routing refresh failed")

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()

    # ------------------------------------------------------------------ health

    async def live(self) -> bool:
        return True

    def _baseline_ref(self, name: str) -> str:
        """The reference of the baseline variant (what readiness and metadata describe)."""
        routing = self.router.config.for_model(name)
        _, alias, version = routing.variant(routing.baseline).target
        return ref_of(alias, version)

    def _default_entry(self, name: str) -> LoadedModel | None:
        return self.models.get(name, self._baseline_ref(name))

    def required(self, name: str) -> bool:
        """Whether readiness waits for ``name``: the routing document names it, or it is
        served by the default routing (its champion) and that champion exists. A model absent
        from the document whose champion is missing is not served: it answers 503 alone."""
        if name in self.router.config.models:
            return True
        ref = self._baseline_ref(name)
        return self.models.get(name, ref) is not None or not self.models.missing(name, ref)

    async def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Ready when the backend answers and every served model's baseline is loaded; with
        each known model's state (``ready``, ``version``, ``served`` and a ``reason`` when
        not ready)."""
        live = await self.backend.live()
        states: dict[str, dict[str, Any]] = {}
        for name in self.models.models:
            ref = self._baseline_ref(name)
            entry = self.models.get(name, ref)
            ok = entry is not None and live and await self.backend.ready(name, entry.version)
            state: dict[str, Any] = {
                "ready": ok,
                "version": entry.version if entry is not None else None,
                "served": self.required(name),
            }
            if not ok:
                if not live:
                    state["reason"] = "the inference backend is unavailable"
                elif entry is not None:
                    state["reason"] = f"the backend has not loaded version {entry.version}"
                else:
                    state["reason"] = self.models.problem(name, ref) or "not loaded yet"
            states[name] = state
        ready = live and all(s["ready"] for s in states.values() if s["served"])
        return ready, states

    async def ready(self) -> bool:
        ready, _ = await self.readiness()
        return ready

    def _check_model(self, name: str) -> None:
        if not self.models.serves(name):
            raise NotFoundError(f"unknown model {name!r}; served: {', '.join(self.models.models)}")

    def _entry(self, name: str, version: str | None) -> LoadedModel:
        self._check_model(name)
        entry = self.models.by_version(name, version) if version else self._default_entry(name)
        if entry is None:
            if version:
                raise NotFoundError(f"model {name} version {version} is not served")
            ref = self._baseline_ref(name)
            reason = self.models.problem(name, ref)
            if reason and self.models.missing(name, ref):
                raise MissingVersionError(reason)
            why = f": {reason}" if reason else " yet"
            raise BackendUnavailableError(f"model {name} is not loaded{why}")
        return entry

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        self._check_model(name)
        try:
            entry = self._entry(name, version)
        except BackendUnavailableError:
            return False
        return await self.backend.ready(name, entry.version)

    async def model_index(self) -> list[dict[str, Any]]:
        """Every served model with its state: ``name``, ``version`` (the baseline's), ``state``
        (``READY`` or ``UNAVAILABLE``, with a ``reason``), whether readiness waits for it
        (``served``), and the loaded versions' task and classes from their metadata."""
        _, states = await self.readiness()
        index = []
        for name, state in states.items():
            row: dict[str, Any] = {
                "name": name,
                "version": state["version"] or "",
                "state": "READY" if state["ready"] else "UNAVAILABLE",
                "served": state["served"],
            }
            if "reason" in state:
                row["reason"] = state["reason"]
            entry = self._default_entry(name)
            if entry is not None:
                row["task"] = entry.info.task
                row["classes"] = list(entry.info.classes)
            row["versions"] = sorted({m.version for m in self.models.loaded() if m.name == name})
            index.append(row)
        return index

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": _medops_version(), "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        entry = self._entry(name, version)
        meta = dict(entry.metadata)
        meta["name"] = name
        meta["versions"] = sorted({m.version for m in self.models.loaded() if m.name == name})
        meta["platform"] = meta.get("platform") or "onnxruntime_onnx"
        meta["parameters"] = {
            "task": entry.info.task,
            "input_size": entry.info.input_size,
            "classes": list(entry.info.classes),
            "threshold": entry.info.threshold,
            "accepts_nonfinite": entry.info.accepts_nonfinite,
            "version": entry.version,
            # a segmenter's rule, so remote callers of the clinical plane apply it too
            "gate_threshold": entry.info.gate_threshold,
            "min_component_px": entry.info.min_component_px,
        }
        return meta

    # ------------------------------------------------------------------ inference

    def _validate(self, request: InferRequest, entry: LoadedModel) -> None:
        declared = {t["name"]: t for t in entry.metadata.get("inputs", [])}
        given = {t.name for t in request.inputs}
        missing = set(declared) - given
        if missing:
            raise InvalidInputError(f"model {request.model}: missing input(s) {sorted(missing)}")
        for t in request.inputs:
            what = f"model {request.model}: input {t.name!r}"
            spec = declared.get(t.name)
            if spec is None:
                raise InvalidInputError(f"{what} is unexpected; expected {sorted(declared)}")
            if spec.get("datatype") and t.datatype != spec["datatype"]:
                raise InvalidInputError(f"{what} must be {spec['datatype']}, got {t.datatype}")
            shape = list(spec.get("shape", []))
            ok = len(shape) == len(t.shape) and all(
                d < 0 or d == g for d, g in zip(shape, t.shape, strict=True)
            )
            if shape and not ok:
                raise InvalidInputError(f"{what} has shape {t.shape}, expected {shape} (-1: any)")
            nonfinite = 0 if entry.info.accepts_nonfinite else count_nonfinite(t.data.dtype, t.data)
            if nonfinite:
                raise InvalidInputError(
                    f"{what} holds {nonfinite} non-finite value(s) (NaN or ±Inf) of "
                    f"{t.data.size}; this model does not accept them"
                )
        if request.outputs is not None:
            known = {o["name"] for o in entry.metadata.get("outputs", [])}
            unknown = set(request.outputs) - known
            if unknown:
                raise InvalidInputError(
                    f"model {request.model}: unknown output(s) {sorted(unknown)}"
                )

    async def choose(
        self, model: str, version: str | None, headers: Mapping[str, str]
    ) -> tuple[LoadedModel, str, tuple[tuple[str, str | None, str | None], ...]]:
        """The loaded model, variant and shadow copies for one request."""
        self._check_model(model)
        if version:
            return self._entry(model, version), "pinned", ()
        decision = self.router.route(model, headers)
        ref = ref_of(decision.alias, decision.version)
        entry = self.models.get(model, ref)
        if entry is None:
            # A variant added by a routing change that has not been loaded yet.
            entry = await self.models.ensure(model, ref)
        return entry, decision.variant, tuple(decision.shadow)

    async def infer(
        self, request: InferRequest, headers: Mapping[str, str] | None = None
    ) -> InferResponse:
        """Route, validate and run one V2 request; the answer names the variant and version.
        Its count and its ``infer`` and ``total`` stages are observed here, once."""
        start = time.perf_counter()
        if not self.passthrough:
            request.wire = None
        entry, variant, shadow = await self.choose(request.model, request.version, headers or {})
        labels = {"model": request.model, "version": entry.version, "variant": variant}
        status = 500
        try:
            response, seconds = await self._infer(request, entry, variant)
            status = 200
        except MedopsError as exc:
            status = exc.status_code
            raise
        finally:
            if self.metrics is not None:
                total = time.perf_counter() - start
                self.metrics.observe_request(**labels, status=status, seconds=total)
                if status == 200:
                    self.metrics.observe_stage(**labels, stage="infer", seconds=seconds)
        for s_variant, alias, version in shadow:
            self._spawn_shadow(request, response, s_variant, ref_of(alias, version))
        return response

    async def _infer(
        self, request: InferRequest, entry: LoadedModel, variant: str
    ) -> tuple[InferResponse, float]:
        """Validate and run on a chosen version; feeds progressive delivery's analysis and
        the per-class prediction counts. Returns the answer and the backend's seconds."""
        MODEL.set(request.model)
        VARIANT.set(variant)
        self._validate(request, entry)
        start = time.perf_counter()
        ok = False
        try:
            response = await self._run(request, entry.version)
            ok = True
        finally:
            elapsed = time.perf_counter() - start
            if variant != "pinned":
                self.router.observe(request.model, variant, ok=ok, latency_s=elapsed)
        if self.metrics is not None:
            self._count_predictions(response, entry, variant)
        response.variant = variant
        return response, elapsed

    def _count_predictions(self, response: InferResponse, entry: LoadedModel, variant: str) -> None:
        """Answered classes and their probabilities, for classifiers (cheap: an argmax)."""
        assert self.metrics is not None
        classes = entry.info.classes
        if entry.info.task != "classification" or not response.tensors():
            return
        probs = np.asarray(response.tensors()[0].data)
        if probs.ndim != 2 or probs.shape[1] != len(classes):
            return
        for row in probs:
            k = int(row.argmax())
            self.metrics.observe_prediction(
                model=entry.name,
                version=entry.version,
                variant=variant,
                predicted_class=classes[k],
                confidence=float(row[k]),
            )

    async def _run(self, request: InferRequest, version: str) -> InferResponse:
        try:
            # a deadline on this task (wait_for would start another task per request)
            async with asyncio.timeout(self.timeout_s):
                return await self.backend.infer(request, version, self.timeout_s)
        except TimeoutError:
            raise BackendTimeoutError(
                f"model {request.model}: backend did not answer within {self.timeout_s:g} s"
            ) from None

    def _spawn_shadow(
        self, request: InferRequest, primary: InferResponse, variant: str, ref: str
    ) -> None:
        task = asyncio.create_task(self._shadow(request, primary, variant, ref))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self, request: InferRequest, primary: InferResponse, variant: str, ref: str
    ) -> None:
        """Run a copy on the shadow variant; log and report agreement, never answer with it."""
        start = time.perf_counter()
        try:
            entry = await self.models.ensure(request.model, ref)
            answer = await self._run(request, entry.version)
        except MedopsError as exc:
            self.router.observe(
                request.model, variant, ok=False, latency_s=time.perf_counter() - start
            )
            log.warning(
                "shadow request failed",
                extra={"model": request.model, "variant": variant, "reason": exc.message},
            )
            return
        disagreed = _disagree(primary, answer)
        self.router.observe(
            request.model,
            variant,
            ok=True,
            latency_s=time.perf_counter() - start,
            disagreed=disagreed,
        )
        log.info(
            "shadow compared",
            extra={
                "model": request.model,
                "variant": variant,
                "version": entry.version,
                "disagreed": disagreed,
            },
        )

    # ------------------------------------------------------------------ the clinical plane's port

    async def route(self, model: str, routing: Mapping[str, str]) -> Route:
        """Route once per image: every batch of it goes to this version (whose input size
        fixes the preprocessing too), and to the shadow copies routing chose (one that cannot
        be loaded is left out, logged)."""
        entry, variant, shadow = await self.choose(model, None, routing)
        shadows = []
        for s_variant, alias, version in shadow:
            try:
                s_entry = await self.models.ensure(model, ref_of(alias, version))
            except MedopsError as exc:
                log.warning(
                    "shadow variant not loaded",
                    extra={"model": model, "variant": s_variant, "reason": exc.message},
                )
                continue
            shadows.append(Route(s_entry.info, s_entry.version, s_variant, s_entry, shadow=True))
        return Route(entry.info, entry.version, variant, handle=entry, shadows=tuple(shadows))

    async def predict(self, model: str, batch: np.ndarray, route: Route) -> np.ndarray:
        """Probabilities for the contract's input ``(N, 3, S, S)`` on a routed version (the
        clinical plane times and counts its requests itself)."""
        request = InferRequest(
            model=model, inputs=[Tensor(INPUT_NAME, batch)], outputs=[OUTPUT_NAME]
        )
        entry = route.handle
        assert isinstance(entry, LoadedModel)
        if route.shadow:
            # a copy: its variant's health is observed, its answers are not counted as served
            start, ok = time.perf_counter(), False
            try:
                response = await self._run(request, entry.version)
                ok = True
            finally:
                self.router.observe(
                    model, route.variant, ok=ok, latency_s=time.perf_counter() - start
                )
        else:
            response, _ = await self._infer(request, entry, route.variant)
        return np.asarray(response.tensors()[0].data)


def _disagree(a: InferResponse, b: InferResponse) -> bool:
    """Whether two answers differ in decision: argmax for (N, K), thresholded masks otherwise."""
    x, y = np.asarray(a.tensors()[0].data), np.asarray(b.tensors()[0].data)
    if x.shape != y.shape:
        return True
    if x.ndim == 2:
        return bool(np.any(x.argmax(axis=1) != y.argmax(axis=1)))
    return bool(np.mean((x >= 0.5) != (y >= 0.5)) > 0.01)
