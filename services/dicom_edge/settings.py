"""Settings of the DICOM edge (``MEDOPS_DICOM_`` prefix); only the entry point reads the env."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from medops.service.auth import ApiKeySettings


class DicomEdgeSettings(ApiKeySettings):
    """The edge's settings; the API-key ones (``MEDOPS_DICOM_AUTH_ENABLED``, ...) come from
    :class:`ApiKeySettings` and guard its HTTP side (the outbox listing)."""

    model_config = SettingsConfigDict(
        env_prefix="MEDOPS_DICOM_", extra="ignore", populate_by_name=True
    )

    ae_title: str = "MEDOPS"
    """The edge's own AE title (called AE of incoming associations, calling AE of C-STORE SCU)."""
    host: str = "127.0.0.1"
    """Address the DIMSE listener and the HTTP side bind; ``0.0.0.0`` in a container."""
    port: int = 11112
    """DIMSE port (C-ECHO, C-STORE)."""
    http_port: int = 8070
    """HTTP port: health, readiness, ``/metrics`` and the admin outbox listing."""
    allowed_calling_aes: list[str] = Field(default_factory=list)
    """Calling AE titles admitted (``MEDOPS_DICOM_ALLOWED_CALLING_AES``, a JSON list); any
    other is rejected at association. Empty: every association is rejected."""
    unsupported_sop_class: Literal["refuse", "store"] = "refuse"
    """What happens to an instance of a storage class the edge cannot analyse: ``refuse``
    answers a failure status; ``store`` acknowledges and keeps it in the spool, unanalysed."""
    home: Path = Field(
        default=Path(".medops"), validation_alias=AliasChoices("MEDOPS_DICOM_HOME", "MEDOPS_HOME")
    )
    """The medops home (``MEDOPS_DICOM_HOME``, else ``MEDOPS_HOME``): default keys live here."""
    spool_dir: Path | None = None
    """Where received instances, the outbox and the undeliverable results are kept (a
    persistent volume in a cluster); defaults to ``<home>/dicom-edge``. They hold patient
    data: protect it like the PACS's own storage."""
    quiet_s: float = 10.0
    """A series is complete once no instance of it arrived for this many seconds."""
    scan_interval_s: float = 0.5
    """Seconds between looks at the spool for complete series and due results."""
    endpoint_url: str = "http://127.0.0.1:8080"
    """The V2 endpoint the models are reached through: the medops gateway (routing applies)."""
    endpoint_api_key: SecretStr | None = None
    """A client key of that gateway."""
    endpoint_timeout_s: float = 60.0
    """Seconds one inference request may take."""
    chain: str = "brain-tumor"
    """The chain run on every series (a classifier and the segmenter it gates)."""
    classifier: str | None = "brain-tumor-classifier"
    """The chain's classifier (None: its segmenter alone masks every slice)."""
    segmenter: str = "brain-tumor-segmenter"
    """The chain's segmenter, whose mask becomes the SEG."""
    segment: Literal["auto", "always"] = "auto"
    """``auto``: segment the slices the classifier flags; ``always``: every slice."""
    store_url: str | None = None
    """Prediction log the analyses are written to (``sqlite:///PATH`` or ``postgresql://...``,
    the gateway's, so the monitor sees DIMSE traffic too); None: not logged. It holds
    de-identified statistics and masks only."""
    deid_key: SecretStr | None = None
    """Key of the de-identification UID map the models and the prediction log see; random per
    process when unset (the map back to original UIDs never leaves the process)."""
    destination: Literal["stow", "dimse"] = "stow"
    """How results are sent back: STOW-RS (``stow_url``) or C-STORE (``dest_*``)."""
    stow_url: str | None = None
    """DICOMweb root of the destination PACS (e.g. ``http://pacs:8042/dicom-web``)."""
    dest_host: str = "127.0.0.1"
    """C-STORE destination host."""
    dest_port: int = 104
    """C-STORE destination port."""
    dest_ae_title: str = "PACS"
    """C-STORE destination AE title."""
    send_attempts: int = 3
    """Tries per delivery round (exponential backoff between them)."""
    retry_initial_s: float = 1.0
    """First wait between tries; doubles each time."""
    retry_max_s: float = 300.0
    """Longest wait between delivery rounds of a result that keeps failing."""
    poll_url: str | None = None
    """DICOMweb root of a PACS to poll (QIDO-RS, then WADO-RS for new series); None: no
    polling, the edge only listens."""
    poll_interval_s: float = 60.0
    """Seconds between QIDO-RS queries."""
    poll_modality: str = "MR"
    """The polling rule: series of this modality ..."""
    poll_series_description: str | None = None
    """... whose description matches this pattern (``*`` and ``?``, any case; matched by the
    edge on the QIDO-RS answer) ..."""
    poll_days: int | None = None
    """... of studies dated within the last this many days (None: any date)."""
    poll_limit: int = 100
    """Most series taken per query."""
    log_level: str = "INFO"
    """Level of the JSON log lines written to stderr."""
    max_request_bytes: int = 1024 * 1024 * 1024
    """Largest accepted HTTP request body (a STOW-RS request carries whole series)."""

    @property
    def medops_home(self) -> Path:
        return self.home

    @property
    def spool_root(self) -> Path:
        return self.spool_dir or self.home / "dicom-edge"
