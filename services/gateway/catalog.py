"""The operator console's view of the registry: each served model's versions, aliases, gate
verdicts and evaluation figures (``GET /v1/models/registry``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .models import FileSource, ModelSource, RegistrySource

Catalog = Callable[[], list[dict[str, Any]]]


def registry_catalog(source: ModelSource, served: Sequence[str]) -> Catalog:
    """A callable listing the served models as the registry (or the ONNX files) knows them."""

    def from_registry(source: RegistrySource) -> list[dict[str, Any]]:
        out = []
        for model in source.registry.list_models():
            if model.name not in served:
                continue
            versions = [
                {
                    "version": v.version,
                    "aliases": list(v.aliases),
                    "gate": v.gate,
                    "gate_reasons": v.gate_reasons,
                    "evaluation": v.evaluation,
                    "dataset_version": v.dataset_version,
                    "created_at_ms": v.created_at_ms,
                    "metrics": {k: round(float(m), 6) for k, m in sorted(v.metrics.items())},
                }
                for v in model.versions
            ]
            out.append({"name": model.name, "aliases": model.aliases, "versions": versions})
        return out

    def from_files(source: FileSource) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "aliases": {},
                "source": "file",
                "versions": [{"version": "1", "aliases": [], "gate": None, "metrics": {}}],
            }
            for name in source.files
            if name in served
        ]

    def catalog() -> list[dict[str, Any]]:
        if isinstance(source, RegistrySource):
            return from_registry(source)
        if isinstance(source, FileSource):
            return from_files(source)
        return []

    return catalog
