"""Settings of the library and the command line (``MEDOPS_`` prefix).

Services keep their own settings classes with their own prefixes; only entry points read the
environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MedopsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDOPS_", extra="ignore")

    home: Path = Field(default=Path(".medops"))
    """Where medops keeps its state: datasets, caches, the MLflow database, credentials."""

    data_dir: Path = Field(default=Path("../shared/data"))
    """Folder holding the input datasets (``lgg-mri-segmentation``, ...)."""

    tasks_dir: Path = Field(default=Path("tasks"))
    """Folder of task files (``medops tasks list``; chains resolve their tasks there)."""

    tracking_uri: str | None = None
    """MLflow tracking URI; defaults to ``sqlite:///<home>/mlflow.db``."""

    @property
    def mlflow_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.home.resolve() / "mlartifacts"

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home
