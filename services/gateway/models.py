"""Which model versions the gateway serves, where they come from, and hot reload.

A *source* turns a reference (an MLflow alias such as ``champion`` or a version number) into a
version, its serving facts and a local ONNX file. The :class:`ModelManager` keeps one loaded
entry per (model, reference); a background task polls the aliases and, when one moves, loads the
new version into the backend and swaps the entry in one assignment, so requests in flight finish
on the old version and new ones get the new version with no restart. A reference that points at
no version (a model without a ``champion``) is recorded as *missing*: that model answers 503
naming the alias, and the others serve on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medops.errors import BackendUnavailableError, ConflictError, MedopsError, NotFoundError
from medops.modelspec import CHAMPION, ModelInfo

from .backends import Backend

log = logging.getLogger("medops.gateway.models")


class MissingVersionError(BackendUnavailableError):
    """The reference (an alias such as ``champion``) points at no version: 503 for that model."""


@dataclass(frozen=True)
class Resolved:
    version: str
    info: ModelInfo
    onnx_path: Path | None


class ModelSource(Protocol):
    def current(self, name: str, ref: str) -> str | None:
        """The version ``ref`` points at now (cheap; polled)."""

    def resolve(self, name: str, ref: str) -> Resolved:
        """Version, serving facts and a local ONNX file for ``ref``."""

    def missing(self, name: str, ref: str) -> str:
        """Why ``ref`` of ``name`` has no version, for callers (``current`` gave None)."""

    def torch_model(self, name: str, version: str) -> Any:
        """The version's torch network with its weights (blocking); ConflictError when this
        source has none."""


class RegistrySource:
    """Versions and files from the MLflow registry."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def current(self, name: str, ref: str) -> str | None:
        if ref.isdigit():
            return ref
        version = self.registry.get_alias(name, ref)
        return None if version is None else str(version)

    def resolve(self, name: str, ref: str) -> Resolved:
        r = self.registry.resolve(name, ref)
        return Resolved(version=r.info.version, info=r.info, onnx_path=r.onnx_path)

    def missing(self, name: str, ref: str) -> str:
        return f"{name} has no {ref!r} version in the registry"

    def torch_model(self, name: str, version: str) -> Any:
        try:
            return self.registry.torch_model(name, version)
        except NotFoundError as exc:
            raise ConflictError(exc.message) from None


class FileSource:
    """Fixed ONNX files served as version ``1`` whatever the reference (no registry)."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = {k: Path(v) for k, v in files.items()}

    def current(self, name: str, ref: str) -> str | None:
        return "1" if name in self.files else None

    def resolve(self, name: str, ref: str) -> Resolved:
        from medops.registry import read_onnx_info

        path = self.files.get(name)
        if path is None:
            raise NotFoundError(f"model {name} has no ONNX file configured")
        return Resolved(
            version="1", info=read_onnx_info(path, name=name, version="1"), onnx_path=path
        )

    def missing(self, name: str, ref: str) -> str:
        return f"{name} has no ONNX file configured (model_files)"

    def torch_model(self, name: str, version: str) -> Any:
        raise ConflictError(
            f"{name} is served from an ONNX file, without torch weights (a registry version "
            "has them)"
        )


@dataclass(frozen=True)
class LoadedModel:
    name: str
    ref: str
    version: str
    info: ModelInfo
    metadata: dict[str, Any]


def ref_of(alias: str | None, version: str | None) -> str:
    return str(version) if version else (alias or CHAMPION)


class ModelManager:
    def __init__(self, source: ModelSource, backend: Backend, models: Iterable[str]) -> None:
        self.source = source
        self.backend = backend
        self.models = tuple(models)
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._errors: dict[tuple[str, str], str] = {}
        self._missing: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()

    def serves(self, name: str) -> bool:
        return name in self.models

    def get(self, name: str, ref: str) -> LoadedModel | None:
        return self._loaded.get((name, ref))

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def by_version(self, name: str, version: str) -> LoadedModel | None:
        for m in self._loaded.values():
            if m.name == name and m.version == version:
                return m
        return None

    def problem(self, name: str, ref: str) -> str | None:
        """Why ``ref`` of ``name`` is not loaded (None: loaded, or not tried yet)."""
        return self._errors.get((name, ref)) or self._missing.get((name, ref))

    def missing(self, name: str, ref: str) -> bool:
        """Whether the last attempt found that ``ref`` points at no version (no champion)."""
        return (name, ref) in self._missing

    async def ensure(self, name: str, ref: str) -> LoadedModel:
        """Load ``ref`` of ``name`` if it is not loaded yet or has moved; return the entry."""
        current = self._loaded.get((name, ref))
        version = await asyncio.to_thread(self.source.current, name, ref)
        if version is None:
            message = self.source.missing(name, ref)
            self._missing[(name, ref)] = message
            raise MissingVersionError(message)
        self._missing.pop((name, ref), None)
        if current is not None and current.version == version:
            return current
        async with self._lock:
            current = self._loaded.get((name, ref))
            if current is not None and current.version == version:
                return current
            resolved = await asyncio.to_thread(self.source.resolve, name, ref)
            metadata = await self.backend.load(name, resolved.version, resolved.onnx_path)
            entry = LoadedModel(name, ref, resolved.version, resolved.info, metadata)
            self._loaded[(name, ref)] = entry  # the swap: one assignment
            self._errors.pop((name, ref), None)
            if current is not None:
                log.info(
                    "model version swapped",
                    extra={"model": name, "ref": ref, "old": current.version, "new": entry.version},
                )
                await self._unload_if_unused(name, current.version)
            else:
                log.info(
                    "model loaded", extra={"model": name, "ref": ref, "version": entry.version}
                )
            return entry

    async def _unload_if_unused(self, name: str, version: str) -> None:
        if self.by_version(name, version) is None:
            await self.backend.unload(name, version)

    async def sync(self, wanted: Iterable[tuple[str, str]]) -> None:
        """Load every wanted (model, reference); failures are recorded, never raised."""
        wanted = list(dict.fromkeys(wanted))
        for name, ref in wanted:
            was_missing = self.missing(name, ref)
            try:
                await self.ensure(name, ref)
            except MissingVersionError as exc:
                self._errors.pop((name, ref), None)
                if not was_missing:
                    log.warning(
                        "model not served", extra={"model": name, "ref": ref, "reason": exc.message}
                    )
            except MedopsError as exc:
                # e.g. the registry is unreachable: whether a version exists is unknown
                self._missing.pop((name, ref), None)
                if self._errors.get((name, ref)) != exc.message:
                    log.warning(
                        "model not loaded", extra={"model": name, "ref": ref, "reason": exc.message}
                    )
                self._errors[(name, ref)] = exc.message
        keep = set(wanted)
        for recorded in (self._errors, self._missing):
            for key in [k for k in recorded if k not in keep]:
                del recorded[key]
        stale = [key for key in self._loaded if key not in keep]
        for key in stale:
            entry = self._loaded.pop(key)
            await self._unload_if_unused(entry.name, entry.version)
