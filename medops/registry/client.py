"""The model registry: MLflow runs, registered models, aliases and their ONNX files.

Every call goes through one :class:`mlflow.MlflowClient` bound to the given tracking URI (no
global MLflow state), so the pipeline and the serving gateway can each hold a registry.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    META_ACCEPTS_NONFINITE,
    META_CLASSES,
    META_GATE_THRESHOLD,
    META_INPUT_SIZE,
    META_MIN_COMPONENT,
    META_TASK,
    META_TEMPERATURE,
    META_THRESHOLD,
    NAME_PATTERN,
    OUTPUT_NAME,
    ModelInfo,
)
from medops.registry import audit
from medops.registry.card import (
    CI_HIGH,
    CI_LOW,
    EVALUATIONS,
    SINGLE_SPLIT,
    intervals_from_metrics,
    render_model_card,
)
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
TAG_GATE_REASONS = "gate.reasons"
TAG_GATE_FAILED = "gate.failed"
"""On a version the gate kept out: the checks it failed, for whoever would serve it."""
TAG_EVALUATION = "evaluation"
"""``cross-validated`` or ``single-split``: how the version's figures were measured."""
TAG_HEADLINE = "headline"
"""Run tag: the task's headline metrics, comma-separated (what ``models list`` shows)."""
TAG_PREVIOUS_CHAMPION = "champion.previous"
"""On a version that became champion: the version that was champion just before it."""
TAG_OVERRIDE = "override."
"""Prefix of the tags an operator override writes on the version it names: ``action``
(promote|demote), ``alias``, ``from``, ``to`` (``""``: none), ``reason``, ``by``, ``at``."""
_CI_SUFFIXES = (CI_LOW, CI_HIGH)
TAG_PRECISION = "precision"
"""``int8`` on a quantized edge variant (absent: the exported float32 model)."""
_VERSION_TAGS = (TAG_DATASET, TAG_COMMIT, TAG_EVALUATION, TAG_PRECISION)
"""Run tags copied onto the version."""
PARITY_TOLERANCE = 1e-4
"""Largest |ONNX Runtime - PyTorch| an override accepts (the export's own tolerance)."""


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
    evaluation: str | None = None
    """``cross-validated``, ``single-split``, or None (versions older than the tag)."""
    gate: bool | None = None
    """The promotion gate's verdict (``record_gate``); None when it never ran."""
    gate_reasons: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    """All version tags (``override.*`` included)."""
    headline: tuple[str, ...] = ()
    """The task's headline metrics (the run's ``headline`` tag); empty for older runs."""


@dataclass(frozen=True)
class AliasChange:
    """One operator override of an alias, as recorded in the version's tags and the audit."""

    name: str
    alias: str
    action: str
    """``promote`` or ``demote``."""
    version: str
    """The version the operator named (promoted or demoted)."""
    before: str | None
    """The version the alias pointed at before (None: it pointed nowhere)."""
    after: str | None
    """The version it points at now (None: the alias was removed)."""
    reason: str
    by: str
    at: str
    """ISO 8601 time in UTC, to the second."""
    parity_max_abs_diff: float | None = None
    """The parity check of ``after`` (None when the alias was removed)."""

    def audit_entry(self) -> dict[str, Any]:
        """The entry for the audit trail (the gateway's routing audit shape, no revision)."""
        return {
            "time": self.at,
            "actor": self.by,
            "action": self.action,
            "source": f"medops models {self.action}",
            "changes": [
                {
                    "model": self.name,
                    "change": "alias",
                    "alias": self.alias,
                    "versions": [self.before, self.after],
                }
            ],
            "reason": self.reason,
            "parity_max_abs_diff": self.parity_max_abs_diff,
        }


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


def current_user() -> str:
    """The OS user running this process (``unknown`` when it has no name)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _ints(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """A tuple logged by ``TrainConfig.to_params`` (``"16-32-64"``)."""
    if not text:
        return default
    try:
        return tuple(int(x) for x in text.split("-"))
    except ValueError:
        raise InvalidInputError(f"run parameter {text!r} is not a dash-joined list") from None


def _torch_model(info: ModelInfo, params: Mapping[str, str], meta: Mapping[str, str]) -> Any:
    """The network as it serves, untrained: architecture from the run parameters
    (``TrainConfig.to_params``; its defaults when absent), calibration temperature from the
    ONNX metadata, test-time flips from ``test_time_flip``."""
    from medops.models import DEFAULT_WIDTHS, ServingWrapper, build_classifier, build_segmenter

    if info.task == "segmentation":
        net = build_segmenter(
            channels=_ints(params.get("channels"), (16, 32, 64, 128, 256)),
            num_res_units=int(params.get("num_res_units", 2)),
        )
    else:
        widths = _ints(params.get("widths"), DEFAULT_WIDTHS)
        net = build_classifier(
            len(info.classes), arch=params.get("arch", "resnet18"), widths=widths
        )
    return ServingWrapper(
        net,
        info.task,
        temperature=float(meta.get(META_TEMPERATURE, 1.0)),
        flip_average=params.get("test_time_flip", "False").lower() == "true",
    )


def _onnx_meta(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


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
            gate_threshold=float(meta[META_GATE_THRESHOLD])
            if META_GATE_THRESHOLD in meta
            else None,
            min_component_px=int(meta.get(META_MIN_COMPONENT, 0)),
            accepts_nonfinite=_flag(META_ACCEPTS_NONFINITE, meta.get(META_ACCEPTS_NONFINITE)),
        )
    except (KeyError, ValueError) as exc:
        raise InvalidInputError(
            f"{path.name}: ONNX metadata_props lack or garble a medops key ({exc})"
        ) from exc


def _flag(key: str, text: str | None) -> bool:
    """A boolean metadata value: absent, "true" or "false" (any case); anything else is
    garbled rather than silently false."""
    value = (text or "false").strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"{key} must be 'true' or 'false', got {text!r}")
    return value == "true"


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
        if not re.fullmatch(NAME_PATTERN, name):
            raise InvalidInputError(
                f"model name {name!r}: a registered name is a DNS label (lower-case letters, "
                "digits and '-', at most 63), as task files declare them"
            )
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise InvalidInputError(f"ONNX file {onnx_path} does not exist")
        for label, path in [("report_html", report_html), ("weights_path", weights_path)]:
            if path is not None and not Path(path).is_file():
                raise InvalidInputError(f"{label}: {path} does not exist")
        evaluation = (tags or {}).get(TAG_EVALUATION, SINGLE_SPLIT)
        if evaluation not in EVALUATIONS:
            raise InvalidInputError(
                f"tag {TAG_EVALUATION}: {evaluation!r} is not one of {', '.join(EVALUATIONS)}"
            )
        info = read_onnx_info(onnx_path, name=name)
        self.check()
        commit = git_commit or current_git_commit()
        clean_metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        card = model_card or render_model_card(
            name,
            dataset_version=dataset_version,
            metrics={k: v for k, v in clean_metrics.items() if not k.endswith(_CI_SUFFIXES)},
            subgroups=subgroups,
            params=params,
            evaluation=evaluation,
            intervals=intervals_from_metrics(clean_metrics),
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
                        **{k: tags[k] for k in _VERSION_TAGS if k in tags},
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
        """Point ``alias`` of ``name`` at ``version`` (moving it if it was elsewhere).

        Moving ``champion`` records the version it leaves as ``champion.previous`` on
        ``version``, so that ``demote`` can move it back.
        """
        version = str(version)
        before = self.get_alias(name, alias) if alias == CHAMPION else None
        with self._errors(f"set alias {alias} of {name} to version {version}"):
            self._client.set_registered_model_alias(name, alias, version)
            if before is not None and before != version:
                self._client.set_model_version_tag(name, version, TAG_PREVIOUS_CHAMPION, before)

    def _restore_alias(self, name: str, alias: str, version: str | None) -> None:
        """Put ``alias`` back where it was (None: nowhere), recording nothing."""
        with self._errors(f"restore alias {alias} of {name}"):
            if version is None:
                self._client.delete_registered_model_alias(name, alias)
            else:
                self._client.set_registered_model_alias(name, alias, version)

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

    def torch_model(self, name: str, alias_or_version: str) -> Any:
        """The version's network as it serves, from its logged weights (architecture from the
        run's parameters, temperature from its ONNX file), in eval mode: for what needs
        gradients (Grad-CAM). NotFoundError when the version logged no weights."""
        from medops.training import load_weights

        resolved = self.resolve(name, alias_or_version)
        weights = self.weights_path(name, resolved.info.version)
        with self._errors(f"read run of {name} version {resolved.info.version}"):
            params = dict(self._client.get_run(resolved.run_id).data.params)
        model = _torch_model(resolved.info, params, _onnx_meta(resolved.onnx_path))
        load_weights(model, weights)
        return model.eval()

    def download_artifact(self, name: str, alias_or_version: str, path: str, dst: Path) -> Path:
        """Any artifact of the run behind a version (``report/report.html``, ``gate.json``)."""
        mv = self._version(name, alias_or_version)
        dst.mkdir(parents=True, exist_ok=True)
        with self._errors(f"download {path} of {name} version {mv.version}"):
            return Path(self._client.download_artifacts(mv.run_id, path, str(dst)))

    def model_names(self) -> list[str]:
        """The registered models' names, sorted."""
        with self._errors("list registered models"):
            return sorted(m.name for m in self._client.search_registered_models())

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
                    run = self._client.get_run(mv.run_id) if mv.run_id else None
                    run_metrics = dict(run.data.metrics) if run else {}
                    run_tags = dict(run.data.tags) if run else {}
                    tags = dict(mv.tags or {})
                    verdict = tags.get(TAG_GATE, run_tags.get(TAG_GATE))
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
                            evaluation=tags.get(TAG_EVALUATION, run_tags.get(TAG_EVALUATION)),
                            gate=None if verdict is None else verdict == "true",
                            gate_reasons=run_tags.get(TAG_GATE_REASONS),
                            tags=tags,
                            headline=tuple(
                                m for m in run_tags.get(TAG_HEADLINE, "").split(",") if m
                            ),
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

    def gate_refusal(self, name: str, version: str) -> str | None:
        """Why the promotion gate kept ``name`` ``version`` out, or None when it passed it
        or judged no gate (a version registered by hand)."""
        mv = self._version(name, version)
        tags = dict(mv.tags)
        if tags.get(TAG_GATE) != "false":
            return None
        failed = tags.get(TAG_GATE_FAILED)
        if failed is None:  # recorded before the failed checks were: every check's reason
            with self._errors(f"read the gate decision of {name} {version}"):
                failed = self._client.get_run(mv.run_id).data.tags.get(TAG_GATE_REASONS)
        why = f": {failed}" if failed else ""
        return f"the promotion gate kept {name} v{mv.version} out{why}"

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

    # ------------------------------------------------------------ operator override

    def _known_model(self, name: str) -> None:
        """InvalidInputError unless ``name`` is a registered model."""
        try:
            with self._errors(f"find model {name}"):
                self._client.get_registered_model(name)
        except NotFoundError:
            with self._errors("list registered models"):
                known = sorted(m.name for m in self._client.search_registered_models())
            raise InvalidInputError(
                f"unknown model {name!r} (registered: {', '.join(known) or 'none'})"
            ) from None

    def _known_version(self, name: str, ref: str) -> Any:
        """The version ``ref`` (a number, ``v2`` or an alias) of a registered model, or an
        InvalidInputError naming what is unknown."""
        self._known_model(name)
        ref = str(ref).strip()
        if ref[:1] in {"v", "V"} and ref[1:].isdigit():
            ref = ref[1:]
        try:
            return self._version(name, ref)
        except (NotFoundError, InvalidInputError):
            with self._errors(f"list the versions of {name}"):
                found = self._client.search_model_versions(f"name='{name}'")
            versions = sorted(int(v.version) for v in found)
            raise InvalidInputError(
                f"{name} has no version {ref!r} "
                f"(versions: {', '.join(map(str, versions)) or 'none'})"
            ) from None

    def _has_artifact(self, run_id: str, path: str) -> bool:
        folder = path.rpartition("/")[0] or None
        with self._errors(f"list the artifacts of run {run_id}"):
            return any(a.path == path for a in self._client.list_artifacts(run_id, folder))

    def verify_parity(
        self, name: str, version: str, *, tolerance: float = PARITY_TOLERANCE
    ) -> float:
        """Check that a version can be served: its ONNX file is there, readable, and
        reproduces its logged torch weights (:func:`medops.export.check_onnx_parity`).

        Downloads afresh (not from the cache, which may outlive the artifact). Returns the
        largest difference; raises InvalidInputError saying what is wrong.
        """
        from medops.export import ExportError, check_onnx_parity
        from medops.training import load_weights

        mv = self._known_version(name, version)
        label = f"{name} version {mv.version}"
        onnx_artifact = f"{MODEL_DIR}/{ONNX_FILE}"
        if not mv.run_id or not self._has_artifact(mv.run_id, onnx_artifact):
            raise InvalidInputError(f"{label} has no ONNX artifact ({onnx_artifact}) to serve")
        if not self._has_artifact(mv.run_id, WEIGHTS_PATH):
            raise InvalidInputError(
                f"{label} has no torch weights ({WEIGHTS_PATH}) to check its ONNX against"
            )
        with tempfile.TemporaryDirectory() as tmp:
            with self._errors(f"download {label}"):
                onnx_path = Path(self._client.download_artifacts(mv.run_id, onnx_artifact, tmp))
                weights = Path(self._client.download_artifacts(mv.run_id, WEIGHTS_PATH, tmp))
                params = dict(self._client.get_run(mv.run_id).data.params)
            info = read_onnx_info(onnx_path, name=name, version=str(mv.version))
            try:
                model = _torch_model(info, params, _onnx_meta(onnx_path))
                load_weights(model, weights)
                return check_onnx_parity(
                    model, onnx_path, input_size=info.input_size, tolerance=tolerance
                )
            except (ExportError, InvalidInputError) as exc:
                raise InvalidInputError(f"{label} fails the ONNX parity check: {exc}") from None
            except Exception as exc:  # onnxruntime and torch raise many types for bad graphs
                raise InvalidInputError(
                    f"{label} fails the ONNX parity check: {type(exc).__name__}: {exc}"
                ) from None

    def _record_override(
        self, change: AliasChange, audit_path: Path | None, before: str | None
    ) -> None:
        """Tag the named version and append the audit entry; on failure, put the alias back."""
        tags = {
            "action": change.action,
            "alias": change.alias,
            "from": change.before or "",
            "to": change.after or "",
            "reason": change.reason[:5000],
            "by": change.by,
            "at": change.at,
        }
        try:
            with self._errors(f"tag {change.name} version {change.version}"):
                for key, value in tags.items():
                    self._client.set_model_version_tag(
                        change.name, change.version, TAG_OVERRIDE + key, value
                    )
            if audit_path is not None:
                audit.append_entry(audit_path, change.audit_entry())
        except BaseException:
            with contextlib.suppress(Exception):
                self._restore_alias(change.name, change.alias, before)
            raise

    @staticmethod
    def _who(reason: str, by: str | None) -> tuple[str, str]:
        reason, who = reason.strip(), (by or current_user()).strip()
        if not reason:
            raise InvalidInputError("reason: say why the alias is moved (it is audited)")
        if not who:
            raise InvalidInputError("by: name who moves the alias")
        return reason, who

    def promote(
        self,
        name: str,
        version: str,
        *,
        reason: str,
        by: str | None = None,
        audit_path: Path | None = None,
        tolerance: float = PARITY_TOLERANCE,
    ) -> AliasChange:
        """Operator override: make ``version`` the champion of ``name``, bypassing the gate.

        Refused (InvalidInputError, champion unchanged) for an unknown model or version, a
        version without its ONNX artifact or weights, or one failing the parity check, and
        when it is already champion. Records ``override.*`` tags on the version and, with
        ``audit_path``, one audit entry; ``by`` defaults to the OS user.
        """
        reason, who = self._who(reason, by)
        mv = self._known_version(name, version)
        target = str(mv.version)
        before = self.get_alias(name, CHAMPION)
        if before == target:
            raise InvalidInputError(f"{name} version {target} is already the champion")
        diff = self.verify_parity(name, target, tolerance=tolerance)
        if audit_path is not None:
            audit.check_writable(audit_path)  # an override that cannot be audited is not made
        change = AliasChange(
            name=name,
            alias=CHAMPION,
            action="promote",
            version=target,
            before=before,
            after=target,
            reason=reason,
            by=who,
            at=_now_iso(),
            parity_max_abs_diff=diff,
        )
        self.set_alias(name, CHAMPION, target)
        self._record_override(change, audit_path, before)
        return change

    def _fallback(self, name: str, version: str) -> str | None:
        """The champion before ``version``, skipping versions an operator demoted since and
        versions that no longer exist; None when there is none."""
        seen = {version}
        tags = dict(self._version(name, version).tags)
        while (prev := tags.get(TAG_PREVIOUS_CHAMPION)) and prev not in seen:
            seen.add(prev)
            try:
                tags = dict(self._version(name, prev).tags)
            except NotFoundError:
                return None  # deleted: the chain ends here
            if tags.get(TAG_OVERRIDE + "action") != "demote":
                return prev
        return None

    def demote(
        self,
        name: str,
        version: str | None = None,
        *,
        reason: str,
        by: str | None = None,
        audit_path: Path | None = None,
        tolerance: float = PARITY_TOLERANCE,
    ) -> AliasChange:
        """Operator override: take ``champion`` away from ``version`` (default: the current
        champion).

        ``champion`` moves back to the previous champion recorded on the version (skipping
        versions demoted since), which must pass the same checks as a promotion; with none
        recorded, the alias is removed. Refused (InvalidInputError, champion unchanged) for an
        unknown model or version, a version that is not champion, or a previous champion that
        fails its checks. Records ``override.*`` tags on the demoted version and, with
        ``audit_path``, one audit entry.
        """
        reason, who = self._who(reason, by)
        self._known_model(name)
        current = self.get_alias(name, CHAMPION)
        if version is not None:
            demoted = str(self._known_version(name, version).version)
        elif current is not None:
            demoted = current
        else:
            raise InvalidInputError(f"{name} has no champion to demote")
        if current != demoted:
            raise InvalidInputError(
                f"{name} version {demoted} is not the champion "
                f"({'the champion is version ' + current if current else 'there is no champion'})"
            )
        fallback = self._fallback(name, demoted)
        diff = None
        if fallback is not None:
            try:
                diff = self.verify_parity(name, fallback, tolerance=tolerance)
            except InvalidInputError as exc:
                raise InvalidInputError(
                    f"the previous champion cannot take over ({exc}); promote another version "
                    "instead"
                ) from None
        if audit_path is not None:
            audit.check_writable(audit_path)
        change = AliasChange(
            name=name,
            alias=CHAMPION,
            action="demote",
            version=demoted,
            before=demoted,
            after=fallback,
            reason=reason,
            by=who,
            at=_now_iso(),
            parity_max_abs_diff=diff,
        )
        # not set_alias: moving back must not record the demoted version as "previous"
        self._restore_alias(name, CHAMPION, fallback)
        self._record_override(change, audit_path, demoted)
        return change

    # --------------------------------------------------------------------- gate

    def record_gate(
        self, name: str, version: str, decision: GateDecision, *, move_champion: bool = True
    ) -> bool:
        """Record a gate decision on the challenger's run and version; promote if it says so.

        Writes ``gate.json`` (reasons and evidence) to the run, tags the run and the version
        with ``gate.promote`` (a version kept out with ``gate.failed`` too), and moves
        ``champion`` to ``version`` only when promoted and ``move_champion`` (False leaves the
        move to a live canary). Returns whether the version is now champion.
        """
        mv = self._version(name, version)
        payload = decision.to_dict()
        with tempfile.TemporaryDirectory() as tmp, self._errors("record the gate decision"):
            path = Path(tmp) / GATE_PATH
            path.write_text(json.dumps(payload, indent=2, default=str))
            self._client.log_artifact(mv.run_id, str(path))
            verdict = "true" if decision.promote else "false"
            self._client.set_tag(mv.run_id, TAG_GATE, verdict)
            self._client.set_tag(mv.run_id, TAG_GATE_REASONS, "; ".join(decision.reasons)[:5000])
            self._client.set_model_version_tag(name, str(mv.version), TAG_GATE, verdict)
            if not decision.promote:
                failed = "; ".join(decision.failures or decision.reasons)[:5000]
                self._client.set_model_version_tag(name, str(mv.version), TAG_GATE_FAILED, failed)
        if decision.promote and move_champion:
            self.set_alias(name, CHAMPION, str(mv.version))
            return True
        return False


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
