"""Settings of the gateway (``MEDOPS_GATEWAY_`` prefix); only the entry point reads the env."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from medops.service.auth import ApiKeySettings

BackendKind = Literal["onnx", "triton-http", "triton-grpc", "v2-http"]


class GatewaySettings(ApiKeySettings):
    """The gateway's settings; the API-key ones (``MEDOPS_GATEWAY_AUTH_ENABLED``,
    ``..._API_KEYS_FILE``, ``..._CREDENTIALS_FILE``, ``..._LOCAL_MODE``) come from
    :class:`ApiKeySettings`."""

    # populate_by_name: fields with a second environment name are still set by field name
    model_config = SettingsConfigDict(
        env_prefix="MEDOPS_GATEWAY_", extra="ignore", populate_by_name=True
    )

    host: str = "127.0.0.1"
    """Address the REST server binds."""

    port: int = 8080
    """Port of the REST server (Open Inference Protocol over HTTP and the clinical API)."""

    grpc_port: int | None = 8081
    """Port of the gRPC server (``inference.GRPCInferenceService``); ``None`` disables it."""

    backend: BackendKind = "onnx"
    """Where inference runs: ``onnx`` (in-process ONNX Runtime), ``triton-http`` (Triton over
    HTTP with binary tensors), ``triton-grpc`` (Triton over gRPC) or ``v2-http`` (any server
    speaking the Open Inference Protocol over HTTP with JSON tensors)."""

    backend_url: str = "127.0.0.1:8000"
    """``host:port`` (or ``http://host:port``) of the remote backend; unused by ``onnx``."""

    passthrough: bool = True
    """Forward V2 requests and answers between a caller and a backend that speak the same wire
    (REST binary tensors to ``triton-http``, gRPC to ``triton-grpc``) as bytes, without
    decoding and re-encoding tensors; validation still reads what the contract needs. ``false``
    re-encodes them (to compare, or to debug a backend)."""

    shared_memory: bool = False
    """Hand input tensors to Triton through POSIX shared memory instead of the socket. Only
    when the gateway and Triton share a host and ``/dev/shm`` (a sidecar, or one machine);
    ``triton-http`` and ``triton-grpc`` backends."""

    shared_memory_slots: int = 32
    """Shared memory regions (one per request in flight; busier requests go inline)."""

    shared_memory_slot_bytes: int = 4 * 1024 * 1024
    """Size of each region; larger requests go inline."""

    home: Path = Field(
        default=Path(".medops"), validation_alias=AliasChoices("MEDOPS_GATEWAY_HOME", "MEDOPS_HOME")
    )
    """The medops home (``MEDOPS_GATEWAY_HOME``, else ``MEDOPS_HOME``): credentials live here."""

    tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MEDOPS_GATEWAY_TRACKING_URI", "MEDOPS_TRACKING_URI"),
    )
    """MLflow tracking URI of the model registry (``MEDOPS_GATEWAY_TRACKING_URI``, else
    ``MEDOPS_TRACKING_URI``); defaults to ``sqlite:///<home>/mlflow.db``."""

    models: list[str] | None = None
    """The registered models this gateway serves (``MEDOPS_GATEWAY_MODELS``, a JSON list;
    unset: every model the task files of ``tasks_dir`` declare), whatever their task:
    preprocessing and decision rules come from each version's metadata.
    The models named by ``model_files`` and by the routing document are served too. One
    absent from the routing document is served from its ``champion`` alias once that exists;
    until then it alone answers 503 and readiness does not wait for it."""

    model_files: dict[str, Path] = Field(default_factory=dict)
    """Serve these ONNX files (model name -> path) as version ``1`` instead of asking the
    registry; for a laptop without a registry and for tests."""

    tasks_dir: Path = Field(
        default=Path("tasks"),
        validation_alias=AliasChoices("MEDOPS_GATEWAY_TASKS_DIR", "MEDOPS_TASKS_DIR"),
    )
    """The task files (``MEDOPS_GATEWAY_TASKS_DIR``, else ``MEDOPS_TASKS_DIR``), read once at
    start: their chain files are the chains ``/v1/analyze?chain=NAME`` runs; a file with
    problems stops the start. The gateway image ships the repository's ``tasks/``."""

    default_chain: str | None = "brain-tumor-two-stage"
    """The chain ``/v1/analyze`` runs when a request names neither a model nor a chain: a chain
    file of ``tasks_dir``. Empty or ``None``, or not declared there (a warning at start): such
    requests get 404 saying why and naming the chains."""

    poll_seconds: float = 10.0
    """How often the registry aliases are checked; a moved alias is loaded and swapped in
    without a restart. ``0`` disables hot reload."""

    max_request_bytes: int = 256 * 1024 * 1024
    """Largest accepted request body; larger ones get 413."""

    request_timeout_s: float = 30.0
    """Deadline of one backend call; past it the caller gets 504."""

    routing_file: Path | None = None
    """Routing document (JSON or YAML) loaded at start; defaults to champion-only routing.
    Readiness waits for every model the document names."""

    routing_audit_file: Path | None = None
    """Where the routing audit trail is appended (JSON lines); default
    ``<home>/audit/routing.jsonl``, the file ``medops models promote/demote`` also writes."""

    routing_store_url: str | None = None
    """Where the routing document, its revision, the progressive-delivery state and the audit
    trail live, shared by every replica: ``sqlite:///PATH`` (replicas on one machine) or
    ``postgresql://...`` (the chart points it at the prediction log's database; the routing has
    tables of its own). Changes are compare-and-set on the revision. Unset: this process alone
    holds the routing, as one gateway needs."""

    routing_poll_seconds: float = 2.0
    """How often a replica looks for a revision another replica committed to the routing
    store (one small query); a new revision is served within this interval."""

    onnx_threads: int = 2
    """Intra-op threads of each in-process ONNX Runtime session."""

    onnx_spinning: bool = False
    """Whether those threads spin while they wait for work (ONNX Runtime's own default). Off
    leaves the cores to preprocessing and the event loop: on 2 cores it cut a one-slice
    ``/v1/analyze`` from about 47 to 28 ms p50 (``bench/analyze.py``; ``--spinning`` measures
    the old default)."""

    preprocess_threads: int = 1
    """Torch threads of the shared preprocessing's resize (``/v1/analyze``), set by ``medops
    serve`` for its process; the models have their own (``onnx_threads``), and one thread
    keeps the resize from fighting them (same output bit for bit)."""

    analyze_batch_size: int = 16
    """Slices per backend call when analysing a volume."""

    deid_key: str | None = None
    """Secret keying the pseudonymous UIDs of de-identified uploads: the same upload gets the
    same UIDs in every answer (JSON, DICOM SEG) and across replicas sharing the key. A random
    key per start when unset."""

    prediction_log: bool = True
    """Log every analysed slice (probabilities, image statistics, mask; no patient data) for
    drift and quality monitoring."""

    prediction_store_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "MEDOPS_GATEWAY_PREDICTION_STORE_URL", "MEDOPS_GATEWAY_STORE_URL"
        ),
    )
    """Where the prediction log goes: ``sqlite:///PATH`` or ``postgresql://...``; defaults to
    ``sqlite:///<home>/monitoring/predictions.db``, where the monitor service reads it. Also
    read as ``MEDOPS_GATEWAY_STORE_URL``, the name the chart shares with the monitor's
    ``MEDOPS_MONITOR_STORE_URL``."""

    review_retention_s: float = 0.0
    """Keep each logged analysis, de-identified (its JSON answer and slice previews, never the
    uploaded files), under ``<home>/review`` for this many seconds, so the review page can
    reopen the studies of its review queue. ``0`` (default): nothing is kept."""

    monitor_url: str | None = None
    """Base URL of the monitor service (``http://host:port``); the operator console's drift
    chart reads its evaluations through ``GET /v1/monitor/history`` with the caller's key.
    Unset: that endpoint answers 404 saying so."""

    grafana_url: str | None = None
    """Grafana's base URL as the console's users open it (``https://grafana.example``); the
    operator console links medops's dashboards there. Unset: no links."""

    uvloop: bool = False
    """Run on uvloop: cheaper REST requests, but grpc.aio then polls from a helper thread and
    gets slower; for REST-only replicas."""

    log_level: str = "INFO"
    """Level of the JSON log lines written to stderr."""

    @property
    def mlflow_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    @property
    def store_url(self) -> str:
        default = f"sqlite:///{self.home.resolve() / 'monitoring' / 'predictions.db'}"
        return self.prediction_store_url or default

    @property
    def medops_home(self) -> Path:
        return self.home
