"""The composition root: settings in, a running gateway out. No module-level state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from medops.clinical import Chain, ClinicalPlane
from medops.clinical.review import ReviewCache
from medops.errors import InvalidInputError, MedopsError
from medops.monitoring import PredictionFeatures
from medops.monitoring.metrics import GatewayMetrics
from medops.monitoring.store import PredictionStore
from medops.registry.audit import default_audit_path
from medops.service.auth import Authenticator

from .backends import Backend, make_backend
from .catalog import registry_catalog
from .dataplane import DataPlane
from .grpc import create_grpc_server
from .models import FileSource, ModelManager, ModelSource, RegistrySource
from .rest import create_app
from .routing import Router, RoutingConfig, RoutingStore
from .settings import GatewaySettings

if TYPE_CHECKING:
    from medops.tasks import Catalog

log = logging.getLogger("medops.gateway")


@dataclass
class Gateway:
    """Every part of one gateway, wired; ``serve()`` runs REST and gRPC in one event loop."""

    settings: GatewaySettings
    backend: Backend
    dataplane: DataPlane
    auth: Authenticator
    app: FastAPI
    clinical: ClinicalPlane | None = None
    grpc_port: int | None = None
    store: PredictionStore | None = None
    routing_store: RoutingStore | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _grpc: Any = None
    _server: uvicorn.Server | None = None

    async def start(self) -> None:
        """Connect the backend, load the models, start hot reload and the gRPC server."""
        await self.backend.start()
        await self.dataplane.sync_models()
        if self.settings.poll_seconds > 0:
            self._tasks.append(
                asyncio.create_task(self.dataplane.poll_forever(self.settings.poll_seconds))
            )
        if self.routing_store is not None:
            self._tasks.append(
                asyncio.create_task(
                    self.dataplane.follow_routing(self.settings.routing_poll_seconds)
                )
            )
        if self.settings.grpc_port is not None:
            self._grpc, self.grpc_port = create_grpc_server(
                self.dataplane,
                self.auth,
                self.settings.host,
                self.settings.grpc_port,
                self.settings.max_request_bytes,
            )
            await self._grpc.start()
        log.info(
            "gateway started",
            extra={
                "backend": self.backend.kind,
                "rest": f"{self.settings.host}:{self.settings.port}",
                "grpc": self.grpc_port,
                "loaded": [f"{m.name}:{m.version}" for m in self.dataplane.models.loaded()],
            },
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
            self._grpc = None
        if self.clinical is not None:
            await self.clinical.close()
        await self.dataplane.close()
        await self.backend.close()
        if self.store is not None:
            self.store.close()
        if self.routing_store is not None:
            self.routing_store.close()
        log.info("gateway stopped")

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        """Start with the REST server, stop before it exits (signals included)."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def serve(self) -> None:
        """Run until cancelled or interrupted."""
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        await self._server.serve()

    def request_exit(self) -> None:
        """Ask a running :meth:`serve` to stop gracefully (what SIGTERM does)."""
        if self._server is not None:
            self._server.should_exit = True


def _source(settings: GatewaySettings) -> ModelSource:
    if settings.model_files:
        return FileSource(settings.model_files)
    from medops.registry import Registry

    return RegistrySource(Registry(settings.mlflow_uri))


def task_catalog(settings: GatewaySettings) -> Catalog | None:
    """The task files of ``tasks_dir``, read once at start (None without the folder); files
    with problems stop the start, naming file and field."""
    from medops.tasks import TaskFileError, load_catalog, task_files

    if not settings.tasks_dir.is_dir():
        return None
    catalog, problems = load_catalog(task_files(settings.tasks_dir))
    if problems:
        raise TaskFileError(problems)
    return catalog


def served_models(
    settings: GatewaySettings,
    config: RoutingConfig | None,
    stored: RoutingConfig | None,
    catalog: Catalog | None,
) -> list[str]:
    """The models this gateway serves: the configured list (unset: every model the task
    files in ``catalog`` declare), the models given ONNX files, and those the routing
    document (the file's, or the fleet's in the routing store) names."""
    configured = settings.models
    if configured is None:
        configured = [] if catalog is None else [m for t in catalog.tasks() for m in t.models]
    names = [*configured, *settings.model_files]
    for document in (config, stored):
        if document is not None:
            names += list(document.models)
    return list(dict.fromkeys(names))


def declared_chains(
    settings: GatewaySettings, catalog: Catalog | None
) -> tuple[dict[str, Chain], str | None]:
    """The chains of the task files in ``catalog`` (:func:`task_catalog`), and why the
    default chain is not among them (None: it is, or there is none). A missing default chain
    is logged and its requests get 404 saying why, so a gateway of other models still
    starts. A step whose model this gateway does not serve answers 404 naming the served
    models when a request reaches it (``segment=never`` never does)."""
    folder = settings.tasks_dir
    default = settings.default_chain or None
    chains: dict[str, Chain] = {}
    if catalog is not None:
        for spec in catalog.chains():
            classifier, segmenter = catalog.chain_models(spec.name)
            chains[spec.name] = Chain(classifier=classifier, segmenter=segmenter)
    if default is None or default in chains:
        return chains, None
    if folder.is_dir():
        why = f"not declared in {folder}"
    else:
        why = f"task folder {folder} not found (MEDOPS_GATEWAY_TASKS_DIR)"
    log.warning("default chain not found", extra={"chain": default, "reason": why})
    return chains, f"the default chain {default!r} is {why}"


def build_gateway(settings: GatewaySettings) -> Gateway:
    """Wire settings into a gateway: source, backend, router, data plane, auth, REST app."""
    source = _source(settings)
    backend = make_backend(settings)
    # any model name: what the routing document names is served
    config = (
        RoutingConfig.from_file(settings.routing_file, known_models=None)
        if settings.routing_file
        else None
    )

    def registered(model: str, variant: str) -> tuple[Any, str] | None:
        """The registry and the version a variant serves (None: not from a registry)."""
        if not isinstance(source, RegistrySource):
            return None
        _, alias, version = router.config.for_model(model).variant(variant).target
        target = version or source.current(model, alias or "champion")
        return None if target is None else (source.registry, target)

    def vet(model: str, variant: str) -> str | None:
        """A canary of a version the promotion gate kept out is rolled back, not served."""
        found = registered(model, variant)
        return None if found is None else found[0].gate_refusal(model, found[1])

    def promote(model: str, variant: str) -> None:
        """A canary passed its last step: point the registry's champion alias at it."""
        found = registered(model, variant)
        if found is None:
            return
        registry, target = found
        try:
            registry.set_alias(model, "champion", target)
        except MedopsError as exc:
            # raised on: the canary stays at 100 % and the promotion is retried next interval
            log.warning("promotion not recorded", extra={"model": model, "reason": exc.message})
            raise
        log.info("champion alias moved", extra={"model": model, "version": target})

    routing_store = RoutingStore(settings.routing_store_url) if settings.routing_store_url else None
    fleet = routing_store.load() if routing_store is not None else None
    stored = None
    if fleet is not None:
        # a malformed stored document is the router's to refuse (logged); it serves nothing
        with contextlib.suppress(InvalidInputError):
            stored = RoutingConfig.from_document(fleet.document, known_models=None)
    catalog = task_catalog(settings)
    served = served_models(settings, config, stored, catalog)
    chains, no_default = declared_chains(settings, catalog)
    router = Router(
        config,
        audit_path=settings.routing_audit_file or default_audit_path(settings.home),
        known_models=served,
        on_promote=promote,
        vet=vet,
        ready_by_default=False,
        store=routing_store,
    )
    models = ModelManager(source, backend, served)
    metrics = GatewayMetrics(CollectorRegistry())
    dataplane = DataPlane(
        backend,
        models,
        router,
        timeout_s=settings.request_timeout_s,
        metrics=metrics,
        passthrough=settings.passthrough,
    )
    store = PredictionStore(settings.store_url) if settings.prediction_log else None
    auth = settings.authenticator()
    clinical = ClinicalPlane(
        dataplane,
        chains,
        default_chain=None if no_default else settings.default_chain or None,
        no_default=no_default,
        batch_size=settings.analyze_batch_size,
        deid_key=settings.deid_key.encode() if settings.deid_key else None,
        store=store,
        metrics=metrics,
        features=PredictionFeatures(settings.home),
        review=ReviewCache(settings.home / "review", settings.review_retention_s),
    )
    app = create_app(
        settings, dataplane, auth, clinical, store=store, catalog=registry_catalog(source, served)
    )
    gateway = Gateway(
        settings=settings,
        backend=backend,
        dataplane=dataplane,
        auth=auth,
        app=app,
        clinical=clinical,
        store=store,
        routing_store=routing_store,
    )
    app.router.lifespan_context = gateway.lifespan
    return gateway
