"""When to retrain, and how to ask for it.

:class:`RetrainPolicy` turns the monitor's verdicts into at most one trigger per episode:
sustained drift (``sustained_windows`` drifted windows in a row) or a quality drop (accuracy,
sensitivity or Dice below its threshold on enough reviewed predictions). After firing it
stays quiet until the condition clears, then re-arms. Actions carry the trigger out: run the
pipeline locally, POST a webhook, send a GitHub ``repository_dispatch``, or start a Kubeflow
run.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from medops.errors import BackendUnavailableError
from medops.monitoring.quality import Quality

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriggerEvent:
    """Why a retraining was asked for; the JSON body of webhooks."""

    model: str
    reason: str
    """``drift`` or ``quality``."""
    detail: dict[str, Any]
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _State:
    drift_streak: int = 0
    armed: bool = True


class RetrainPolicy:
    """Sustained drift or a quality drop -> one trigger per episode, per model."""

    def __init__(
        self,
        *,
        sustained_windows: int = 3,
        accuracy_threshold: float | None = 0.8,
        sensitivity_threshold: float | None = None,
        dice_threshold: float | None = 0.7,
        min_feedback: int = 20,
    ) -> None:
        if sustained_windows < 1:
            raise ValueError("sustained_windows must be at least 1")
        self.sustained_windows = sustained_windows
        self.accuracy_threshold = accuracy_threshold
        self.sensitivity_threshold = sensitivity_threshold
        self.dice_threshold = dice_threshold
        self.min_feedback = min_feedback
        self._state: dict[str, _State] = {}

    def _quality_breaches(self, quality: Quality | None) -> dict[str, float]:
        if quality is None:
            return {}
        out: dict[str, float] = {}
        checks = (
            ("accuracy", quality.accuracy, self.accuracy_threshold, quality.labelled),
            ("sensitivity", quality.sensitivity, self.sensitivity_threshold, quality.labelled),
            ("dice", quality.dice, self.dice_threshold, quality.masks),
        )
        for name, value, limit, n in checks:
            if value is not None and limit is not None and n >= self.min_feedback and value < limit:
                out[name] = value
        return out

    def observe(
        self, model: str, *, drift_detected: bool | None, quality: Quality | None = None
    ) -> TriggerEvent | None:
        """Feed one evaluation; return the event to act on, or None.

        ``drift_detected=None`` (window too small to judge) leaves the drift streak as it is.
        """
        state = self._state.setdefault(model, _State())
        if drift_detected is not None:
            state.drift_streak = state.drift_streak + 1 if drift_detected else 0
        breaches = self._quality_breaches(quality)
        sustained = state.drift_streak >= self.sustained_windows
        if not sustained and not breaches:
            state.armed = True
            return None
        if not state.armed:
            return None
        state.armed = False
        if breaches:
            return TriggerEvent(model, "quality", {"below_threshold": breaches})
        return TriggerEvent(model, "drift", {"drifted_windows": state.drift_streak})

    def rearm(self, model: str) -> None:
        """Forget that this episode fired (its actions failed): the next evaluation retries."""
        self._state.setdefault(model, _State()).armed = True


class RetrainAction(Protocol):
    """Something that asks for a retraining run; raises on failure."""

    name: str

    def __call__(self, event: TriggerEvent) -> None: ...


class LocalPipelineAction:
    """Start ``medops pipeline run --preset fast`` (or ``command``) in the background."""

    name = "local"

    def __init__(
        self,
        command: Sequence[str] = ("medops", "pipeline", "run", "--preset", "fast"),
        *,
        cwd: Path | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.cwd = cwd
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def __call__(self, event: TriggerEvent) -> None:
        out: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"retrain-{event.model}-{int(event.time)}.log", "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                self.command, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            raise BackendUnavailableError(f"retrain: cannot start {self.command[0]!r}") from exc
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.processes.append(proc)
        log.info("retrain: started local pipeline pid=%s for %s", proc.pid, event.model)


class WebhookAction:
    """POST the event (or ``body(event)``) as JSON to ``url``."""

    name = "webhook"

    def __init__(
        self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.timeout = timeout

    def body(self, event: TriggerEvent) -> dict[str, Any]:
        return event.to_dict()

    def __call__(self, event: TriggerEvent) -> None:
        try:
            resp = httpx.post(
                self.url, json=self.body(event), headers=self.headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(
                f"retrain: webhook unreachable ({type(exc).__name__})"
            ) from exc
        if resp.status_code >= 300:
            raise BackendUnavailableError(f"retrain: webhook answered {resp.status_code}")


class GitHubDispatchAction(WebhookAction):
    """A ``repository_dispatch`` event: GitHub Actions workflows ``on: repository_dispatch``."""

    name = "github"

    def __init__(
        self,
        repository: str,
        token: str,
        *,
        event_type: str = "medops-retrain",
        api_url: str = "https://api.github.com",
        timeout: float = 10.0,
    ) -> None:
        super().__init__(
            f"{api_url.rstrip('/')}/repos/{repository}/dispatches",
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {token}",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            timeout=timeout,
        )
        self.event_type = event_type

    def body(self, event: TriggerEvent) -> dict[str, Any]:
        return {"event_type": self.event_type, "client_payload": event.to_dict()}


class KFPAction:
    """Start a run of a compiled pipeline package on a Kubeflow Pipelines API server."""

    name = "kfp"

    def __init__(
        self,
        host: str,
        package_path: Path,
        *,
        arguments: Mapping[str, Any] | None = None,
        experiment_name: str = "medops-retrain",
    ) -> None:
        self.host = host
        self.package_path = package_path
        self.arguments = dict(arguments or {})
        self.experiment_name = experiment_name

    def __call__(self, event: TriggerEvent) -> None:
        import kfp

        try:
            client = kfp.Client(host=self.host)
            client.create_run_from_pipeline_package(
                str(self.package_path),
                arguments=self.arguments,
                run_name=f"retrain-{event.model}-{int(event.time)}",
                experiment_name=self.experiment_name,
            )
        except Exception as exc:  # kfp raises many transport types
            raise BackendUnavailableError(
                f"retrain: Kubeflow run failed ({type(exc).__name__})"
            ) from exc
