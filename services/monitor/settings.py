"""Settings of the monitor (``MEDOPS_MONITOR_`` prefix); only entry points read the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from medops.service.auth import ApiKeySettings


class MonitorSettings(ApiKeySettings):
    """The monitor's settings; the API-key ones (``MEDOPS_MONITOR_AUTH_ENABLED``,
    ``..._API_KEYS_FILE``, ``..._CREDENTIALS_FILE``, ``..._LOCAL_MODE``) come from
    :class:`ApiKeySettings` and name the same files as the gateway's by default."""

    # populate_by_name: fields with a second environment name are still set by field name
    model_config = SettingsConfigDict(
        env_prefix="MEDOPS_MONITOR_", extra="ignore", populate_by_name=True
    )

    host: str = "127.0.0.1"
    """Address to bind; ``0.0.0.0`` in a container."""
    port: int = 8090
    """HTTP port: the API, health and ``/metrics``."""
    home: Path | None = Field(
        default=None, validation_alias=AliasChoices("MEDOPS_MONITOR_HOME", "MEDOPS_HOME")
    )
    """Where references and the local API keys live (``<home>/monitoring/reference``,
    ``<home>/gateway/api-keys.json``): ``MEDOPS_MONITOR_HOME``, else ``MEDOPS_HOME``, else
    the library's default home."""
    max_request_bytes: int = 16 * 1024 * 1024
    """Largest accepted request body (a feedback with a reviewer's mask); larger ones get 413."""
    log_level: str = "INFO"
    """Level of the JSON log lines written to stderr."""
    store_url: str | None = None
    """Prediction log the gateway writes: ``sqlite:///PATH`` or ``postgresql://...``; defaults
    to ``sqlite:///<home>/monitoring/predictions.db``."""
    models: list[str] = Field(default_factory=list)
    """Models to evaluate; empty: every model found in the log."""
    interval_s: float = 60.0
    """Seconds between evaluations; 0 disables the loop (``POST /v1/evaluate`` still works)."""
    window_size: int = 500
    """Newest predictions per window."""
    min_window: int = 100
    """Smallest window judged for drift; a calibrated reference also needs the window it was
    calibrated for (100 predictions by default), and judges its newest that many."""
    drift_share_threshold: float = 0.1
    """Share of drifted columns that flags a window, for references stored without a
    calibrated alarm only (a calibrated one flags at its thresholds' stated rate)."""
    sustained_windows: int = 3
    """Drifted windows in a row that trigger retraining."""
    accuracy_threshold: float | None = 0.8
    """Accuracy on reviewed predictions below which retraining is triggered."""
    sensitivity_threshold: float | None = None
    """Sensitivity on reviewed predictions below which retraining is triggered."""
    dice_threshold: float | None = 0.7
    """Mean Dice on reviewed masks below which retraining is triggered."""
    min_feedback: int = 20
    """Reviewed predictions needed before quality can trigger anything."""
    negative_label: str = "no_tumour"
    """The classifier's negative class; every other label counts as positive for sensitivity."""
    triggers: list[Literal["local", "webhook", "github", "kfp"]] = Field(default_factory=list)
    """Retraining actions, in order; empty: count triggers only."""
    pipeline_command: list[str] = Field(
        default_factory=lambda: ["medops", "pipeline", "run", "--preset", "fast"]
    )
    """Command of the ``local`` action."""
    webhook_url: str | None = None
    """URL the ``webhook`` action POSTs the trigger event to."""
    github_repository: str | None = None
    """``owner/name`` for the ``github`` action (``repository_dispatch``)."""
    github_token: SecretStr | None = None
    """Token with ``repo`` scope for the ``github`` action."""
    github_event_type: str = "medops-retrain"
    """``event_type`` of the dispatch; workflows filter on it."""
    kfp_host: str | None = None
    """Kubeflow Pipelines API endpoint for the ``kfp`` action."""
    kfp_package: Path | None = None
    """Compiled pipeline YAML the ``kfp`` action submits."""

    @property
    def medops_home(self) -> Path:
        if self.home is not None:
            return self.home
        from medops.settings import MedopsSettings

        return MedopsSettings().home
