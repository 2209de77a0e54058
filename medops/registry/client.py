"""The model registry: MLflow runs, registered models, aliases and their ONNX files.

Every call goes through one :class:`mlflow.MlflowClient` bound to the given tracking URI (no
global MLflow state), so the pipeline and the serving gateway can each hold a registry.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from medops.errors import (
    InvalidInputError,
    MedopsError,
    NotFoundError,
    RegistryUnavailableError,
)
from medops.modelspec import (
    CHALLENGER,
    CHAMPION,
    INPUT_NAME,
    META_CLASSES,
    META_INPUT_SIZE,
    META_TASK,
    META_THRESHOLD,
    MODEL_NAMES,
    OUTPUT_NAME,
    ModelInfo,
)
from medops.registry.card import render_model_card
from medops.registry.gate import GateDecision

MODEL_DIR = "model"
"""Run artifact folder holding ``model.onnx`` and its MLmodel (with the signature)."""
ONNX_FILE = "model.onnx"
WEIGHTS_PATH = "weights/model.pt"
REPORT_PATH = "report/report.html"
CARD_PATH = "model_card.md"
GATE_PATH = "gate.json"

TAG_DATASET = "dataset_version"
TAG_COMMIT = "git_commit"
TAG_GATE = "gate.promote"


@dataclass(frozen=True)
class RegisteredVersion:
    """One model version created by :meth:`Registry.log_and_register`."""

    name: str
    version: str
    run_id: str


@dataclass(frozen=True)
class ResolvedModel:
    """A model version ready to serve: its facts and a local copy of its ONNX file."""

    info: ModelInfo
    onnx_path: Path
    run_id: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class VersionSummary:
    version: str
    run_id: str
    aliases: tuple[str, ...]
    dataset_version: str | None
    git_commit: str | None
    metrics: dict[str, float]
    created_at_ms: int


@dataclass(frozen=True)
class ModelSummary:
    """A registered model, its aliases (alias -> version) and its versions, newest first."""

    name: str
    aliases: dict[str, str]
    versions: list[VersionSummary] = field(default_factory=list)


def current_git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def read_onnx_info(path: Path, *, name: str = "", version: str = "") -> ModelInfo:
    """Serving facts from an ONNX file's ``metadata_props`` (see :mod:`medops.modelspec`)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for bad files
        raise InvalidInputError(f"{path.name}: not a readable ONNX model ({exc})") from exc
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        return ModelInfo(
            name=name,
            version=version,
            task=meta[META_TASK],
            input_size=int(meta[META_INPUT_SIZE]),
            classes=tuple(json.loads(meta[META_CLASSES])),
            threshold=float(meta[META_THRESHOLD]),
        )
    except (KeyError, ValueError) as exc:
        raise InvalidInputError(
            f"{path.name}: ONNX metadata_props lack or garble a medops key ({exc})"
        ) from exc


def _signature(info: ModelInfo) -> Any:
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size = info.input_size
    out_shape: tuple[int, ...] = (
        (-1, 1, size, size) if info.task == "segmentation" else (-1, len(info.classes))
    )
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size), INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), out_shape, OUTPUT_NAME)]),
    )


class Registry:
    """MLflow-backed registry of the three medops models.

    ``tracking_uri`` is ``sqlite:///...`` (embedded; artifacts go to ``artifact_root``, by
    default ``mlartifacts`` beside the database) or ``http(s)://`` for an ``mlflow server``
    (which then stores and proxies artifacts). Downloaded ONNX files are cached per version in
    ``cache_dir`` (default: ``registry-cache`` beside an embedded database, else a folder in
    the system's temporary directory).
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        artifact_root: Path | None = None,
        cache_dir: Path | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.timeout_s = timeout_s
        scheme = urlparse(tracking_uri).scheme
        self._remote = scheme in {"http", "https"}
        if artifact_root is None and scheme == "sqlite":
            db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
            artifact_root = db.parent / "mlartifacts"
        self.artifact_root = artifact_root
        if cache_dir is None and scheme == "sqlite":
            cache_dir = (
                Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "registry-cache"
            )
        elif cache_dir is None:
            key = "".join(c if c.isalnum() else "_" for c in tracking_uri)[-80:]
            cache_dir = Path(tempfile.gettempdir()) / "medops-registry-cache" / key
        self.cache_dir = cache_dir
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # ------------------------------------------------------------------ health

    def check(self) -> None:
        """Raise :class:`RegistryUnavailableError` unless the registry answers now.

        Cheap and bounded by ``timeout_s``: the pipeline calls it before any training.
        """
        if self._remote:
            url = self.tracking_uri.rstrip("/") + "/health"
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                    ok = resp.status == 200
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                raise RegistryUnavailableError(
                    f"model registry at {self.tracking_uri} is unreachable ({exc}); start it "
                    "(mlflow server) or set MEDOPS_TRACKING_URI"
                ) from exc
            if not ok:
                raise RegistryUnavailableError(
                    f"model registry at {self.tracking_uri} answered /health with {resp.status}"
                )
            return
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryUnavailableError(
                    f"model registry database folder {db.parent} cannot be created ({exc})"
                ) from exc
            if not os.access(db.parent, os.W_OK):
                raise RegistryUnavailableError(f"model registry folder {db.parent} is read-only")
        with self._errors("reach the model registry"):
            self._client.search_registered_models(max_results=1)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn MLflow and transport failures into medops errors that say what failed."""
        import requests
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MedopsError:
            raise
        except requests.exceptions.RequestException as exc:
            raise RegistryUnavailableError(
                f"could not {action}: registry {self.tracking_uri} unreachable ({exc})"
            ) from exc
        except MlflowException as exc:
            code = exc.error_code
            if code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFoundError(f"could not {action}: {exc.message}") from exc
            if code in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS"}:
                raise InvalidInputError(f"could not {action}: {exc.message}") from exc
            if "API request" in str(exc) or "Max retries" in str(exc):
                raise RegistryUnavailableError(
                    f"could not {action}: registry {self.tracking_uri} unreachable ({exc.message})"
                ) from exc
            raise RegistryUnavailableError(f"could not {action}: {exc.message}") from exc

    # ------------------------------------------------------------- registration

    def _experiment_id(self, name: str) -> str:
        exp = self._client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        location = None
        if self.artifact_root is not None:
            location = self.artifact_root.resolve().as_uri() + f"/{name}"
        return str(self._client.create_experiment(name, artifact_location=location))

    def log_and_register(
        self,
        name: str,
        *,
        onnx_path: Path,
        dataset_version: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        report_html: Path | None = None,
        model_card: str | None = None,
        subgroups: Mapping[str, Mapping[str, Any]] | None = None,
        weights_path: Path | None = None,
        artifacts: Mapping[str, Path] | None = None,
        git_commit: str | None = None,
        tags: Mapping[str, str] | None = None,
        aliases: tuple[str, ...] = (CHALLENGER,),
        run_name: str | None = None,
    ) -> RegisteredVersion:
        """Log one training run and register its ONNX model as a new version of ``name``.

        The run gets ``params``, ``metrics``, the HTML report, the model card (rendered from
        ``metrics``/``subgroups`` unless given), the ONNX file with its MLmodel signature, the
        torch weights (for warm starts) and any extra ``artifacts`` (artifact path -> file).
        The version is tagged with the dataset version and git commit and receives
        ``aliases``. All or nothing: if anything fails once the version exists, the version is
        deleted again (and a registered model this call created is removed).
        """
        if name not in MODEL_NAMES:
            raise InvalidInputError(f"model name {name!r} is not one of {', '.join(MODEL_NAMES)}")
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise InvalidInputError(f"ONNX file {onnx_path} does not exist")
        for label, path in [("report_html", report_html), ("weights_path", weights_path)]:
            if path is not None and not Path(path).is_file():
                raise InvalidInputError(f"{label}: {path} does not exist")
        info = read_onnx_info(onnx_path, name=name)
        self.check()
        commit = git_commit or current_git_commit()
        clean_metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        card = model_card or render_model_card(
            name,
            dataset_version=dataset_version,
            metrics=clean_metrics,
            subgroups=subgroups,
            params=params,
        )
        run_tags = {
            TAG_DATASET: dataset_version,
            TAG_COMMIT: commit,
            "medops.model": name,
            **(tags or {}),
        }
        with self._errors(f"log a training run for {name}"):
            experiment_id = self._experiment_id(name)
            run = self._client.create_run(experiment_id, tags=run_tags, run_name=run_name)
        run_id = run.info.run_id
        try:
            self._log_run(run_id, info, onnx_path, params, clean_metrics, report_html, card)
            if weights_path is not None:
                with self._errors("log the weights"):
                    self._copy_as(run_id, Path(weights_path), WEIGHTS_PATH)
            for artifact_path, file in (artifacts or {}).items():
                with self._errors(f"log artifact {artifact_path}"):
                    self._copy_as(run_id, Path(file), artifact_path)
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.set_terminated(run_id, "FAILED")
            raise
        return self._create_version(name, run, info, run_tags, aliases)

    def _copy_as(self, run_id: str, file: Path, artifact_path: str) -> None:
        parent, _, base = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / base
            shutil.copyfile(file, target)
            self._client.log_artifact(run_id, str(target), parent or None)

    def _log_run(
        self,
        run_id: str,
        info: ModelInfo,
        onnx_path: Path,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        report_html: Path | None,
        card: str,
    ) -> None:
        import mlflow.onnx
        import onnx
        from mlflow.entities import Metric, Param

        with self._errors("log params and metrics"):
            now = _now_ms()
            self._client.log_batch(
                run_id,
                metrics=[
                    Metric(k, v, now, 0) for k, v in metrics.items() if not math.isnan(float(v))
                ],
                params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            )
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / MODEL_DIR
            mlflow.onnx.save_model(
                onnx.load(str(onnx_path)),
                str(model_dir),
                signature=_signature(info),
                save_as_external_data=False,  # one self-contained file, easy to download
                # stated, not inferred: inference imports the model in a subprocess (seconds)
                pip_requirements=[f"onnx=={onnx.__version__}", "onnxruntime"],
            )
            (Path(tmp) / CARD_PATH).write_text(card)
            with self._errors("upload the model and its card"):
                self._client.log_artifacts(run_id, str(model_dir), MODEL_DIR)
                self._client.log_artifact(run_id, str(Path(tmp) / CARD_PATH))
        if report_html is not None:
            self._copy_as(run_id, Path(report_html), REPORT_PATH)

    def _create_version(
        self,
        name: str,
        run: Any,
        info: ModelInfo,
        tags: Mapping[str, str],
        aliases: tuple[str, ...],
    ) -> RegisteredVersion:
        from mlflow.exceptions import MlflowException

        run_id = run.info.run_id
        created_model = False
        with self._errors(f"register {name}"):
            try:
                self._client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                self._client.create_registered_model(
                    name, description=render_model_card(name, dataset_version="-", metrics={})
                )
                created_model = True
        version: str | None = None
        try:
            with self._errors(f"register {name}"):
                mv = self._client.create_model_version(
                    name,
                    source=f"{run.info.artifact_uri}/{MODEL_DIR}",
                    run_id=run_id,
                    tags={
                        **{k: tags[k] for k in (TAG_DATASET, TAG_COMMIT)},
                        "medops.task": info.task,
                        "medops.input_size": str(info.input_size),
                    },
                )
                version = str(mv.version)
            for alias in aliases:
                self.set_alias(name, alias, version)
            with self._errors("close the run"):
                self._client.set_terminated(run_id, "FINISHED")
        except BaseException:
            with contextlib.suppress(Exception):
                if version is not None:
                    self._client.delete_model_version(name, version)
                if created_model and not self._client.search_model_versions(f"name='{name}'"):
                    self._client.delete_registered_model(name)
            with contextlib.suppress(Exception):
                self._client.set_terminated(run_id, "FAILED")
            raise
        return RegisteredVersion(name=name, version=version, run_id=run_id)

    # ------------------------------------------------------------------ aliases

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` of ``name`` at ``version`` (moving it if it was elsewhere)."""
        with self._errors(f"set alias {alias} of {name} to version {version}"):
            self._client.set_registered_model_alias(name, alias, str(version))

    def get_alias(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points to now, or None; one cheap registry call."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"read alias {alias} of {name}"):
            try:
                return str(self._client.get_model_version_by_alias(name, alias).version)
            except MlflowException as exc:
                if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                    return None
                raise

    def _version(self, name: str, alias_or_version: str) -> Any:
        ref = str(alias_or_version)
        with self._errors(f"find {name} {ref}"):
            if ref.isdigit():
                return self._client.get_model_version(name, ref)
            return self._client.get_model_version_by_alias(name, ref)

    # ------------------------------------------------------------------ reading

    def resolve(self, name: str, alias_or_version: str) -> ResolvedModel:
        """The version behind an alias (``champion``) or a number, with a local ONNX copy.

        The download is cached per version, so resolving an unchanged alias again costs two
        small registry calls.
        """
        mv = self._version(name, alias_or_version)
        version = str(mv.version)
        target = self.cache_dir / name / version / ONNX_FILE
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                with self._errors(f"download {name} version {version}"):
                    got = self._client.download_artifacts(
                        mv.run_id, f"{MODEL_DIR}/{ONNX_FILE}", tmp
                    )
                os.replace(got, target)  # atomic: concurrent readers never see half a file
        with self._errors(f"read run of {name} version {version}"):
            metrics = dict(self._client.get_run(mv.run_id).data.metrics)
        info = read_onnx_info(target, name=name, version=version)
        return ResolvedModel(info=info, onnx_path=target, run_id=mv.run_id, metrics=metrics)

    def weights_path(self, name: str, alias_or_version: str) -> Path:
        """A local copy of the torch weights logged with a version (for warm starts)."""
        mv = self._version(name, alias_or_version)
        target = self.cache_dir / name / str(mv.version) / "model.pt"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                with self._errors(f"download weights of {name} version {mv.version}"):
                    try:
                        got = self._client.download_artifacts(mv.run_id, WEIGHTS_PATH, tmp)
                    except Exception as exc:
                        raise NotFoundError(
                            f"{name} version {mv.version} has no logged weights ({WEIGHTS_PATH})"
                        ) from exc
                os.replace(got, target)
        return target

    def download_artifact(self, name: str, alias_or_version: str, path: str, dst: Path) -> Path:
        """Any artifact of the run behind a version (``report/report.html``, ``gate.json``)."""
        mv = self._version(name, alias_or_version)
        dst.mkdir(parents=True, exist_ok=True)
        with self._errors(f"download {path} of {name} version {mv.version}"):
            return Path(self._client.download_artifacts(mv.run_id, path, str(dst)))

    def list_models(self) -> list[ModelSummary]:
        """Each registered model with its aliases and versions (newest first) and metrics."""
        out: list[ModelSummary] = []
        with self._errors("list registered models"):
            models = sorted(self._client.search_registered_models(), key=lambda m: m.name)
            for model in models:
                versions = self._client.search_model_versions(f"name='{model.name}'")
                aliases = {a: str(v) for a, v in (model.aliases or {}).items()}
                summaries = []
                for mv in sorted(versions, key=lambda v: -int(v.version)):
                    run_metrics = (
                        dict(self._client.get_run(mv.run_id).data.metrics) if mv.run_id else {}
                    )
                    summaries.append(
                        VersionSummary(
                            version=str(mv.version),
                            run_id=mv.run_id or "",
                            aliases=tuple(
                                sorted(a for a, v in aliases.items() if v == str(mv.version))
                            ),
                            dataset_version=mv.tags.get(TAG_DATASET),
                            git_commit=mv.tags.get(TAG_COMMIT),
                            metrics=run_metrics,
                            created_at_ms=int(mv.creation_timestamp or 0),
                        )
                    )
                out.append(
                    ModelSummary(
                        name=model.name,
                        aliases=aliases,
                        versions=summaries,
                    )
                )
        return out

    def version_tags(self, name: str, alias_or_version: str) -> dict[str, str]:
        """The tags of one model version."""
        return dict(self._version(name, alias_or_version).tags)

    def attach(
        self,
        name: str,
        version: str,
        *,
        metrics: Mapping[str, float] | None = None,
        artifacts: Mapping[str, str | Path] | None = None,
    ) -> None:
        """Add metrics and artifacts (artifact path -> file) to a version's run afterwards,
        e.g. the two-stage system evaluation that needs both models."""
        from mlflow.entities import Metric

        mv = self._version(name, version)
        with self._errors(f"attach evidence to {name} version {mv.version}"):
            now = _now_ms()
            clean = {k: float(v) for k, v in (metrics or {}).items() if not math.isnan(float(v))}
            if clean:
                self._client.log_batch(
                    mv.run_id, metrics=[Metric(k, v, now, 0) for k, v in clean.items()]
                )
            for artifact_path, file in (artifacts or {}).items():
                self._copy_as(mv.run_id, Path(file), artifact_path)

    # --------------------------------------------------------------------- gate

    def record_gate(
        self, name: str, version: str, decision: GateDecision, *, move_champion: bool = True
    ) -> bool:
        """Record a gate decision on the challenger's run and version; promote if it says so.

        Writes ``gate.json`` (reasons and evidence) to the run, tags the run and the version
        with ``gate.promote``, and moves ``champion`` to ``version`` only when promoted and
        ``move_champion`` (False leaves the move to a live canary). Returns whether the version
        is now champion.
        """
        mv = self._version(name, version)
        payload = decision.to_dict()
        with tempfile.TemporaryDirectory() as tmp, self._errors("record the gate decision"):
            path = Path(tmp) / GATE_PATH
            path.write_text(json.dumps(payload, indent=2, default=str))
            self._client.log_artifact(mv.run_id, str(path))
            verdict = "true" if decision.promote else "false"
            self._client.set_tag(mv.run_id, TAG_GATE, verdict)
            self._client.set_tag(mv.run_id, "gate.reasons", "; ".join(decision.reasons)[:5000])
            self._client.set_model_version_tag(name, str(mv.version), TAG_GATE, verdict)
        if decision.promote and move_champion:
            self.set_alias(name, CHAMPION, str(mv.version))
            return True
        return False


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
