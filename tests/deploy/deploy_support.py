"""Rendering and validating Kubernetes manifests offline: the chart through the Helm SDK,
built-in kinds with kubernetes-validate (strict, Kubernetes 1.30) and custom resources with
jsonschema against the openAPIV3Schema of their CRDs."""

from __future__ import annotations

import copy
import functools
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "medops"
CRDS = ROOT.parent / "shared" / "crds"
KUBE_VERSION = "1.30.0"
RELEASE = "medops"
NAMESPACE = "medops"
PROFILES = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))

Manifest = dict[str, Any]


def profile_values(profile: str) -> dict[str, Any]:
    """The values of ``ci/<profile>-values.yaml`` (``default``: the chart's own values)."""
    if profile == "default":
        return {}
    loaded = yaml.safe_load((CHART / "ci" / f"{profile}-values.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@functools.cache
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render(values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every object the chart renders with ``values``; each document must be valid YAML."""
    out = _chart().render(values or {}, name=RELEASE, namespace=NAMESPACE)
    docs: list[Manifest] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}: a document is not a mapping"
                docs.append(doc)
    return docs


@functools.cache
def _rendered_profile(profile: str) -> list[Manifest]:
    return render(profile_values(profile))


def render_profile(profile: str) -> list[Manifest]:
    """The objects of one profile (rendered once per run; callers get their own copy)."""
    return copy.deepcopy(_rendered_profile(profile))


def kustomize(overlay: Path) -> list[Manifest]:
    """``kubectl kustomize`` of an overlay, parsed."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay.name} failed: {result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def load_manifests(paths: Iterable[Path]) -> list[Manifest]:
    docs: list[Manifest] = []
    for path in paths:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def _strict(schema: Any) -> Any:
    """Reject unknown fields the way the API server's strict field validation does."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema, from every CRD in the shared folder."""
    assert CRDS.is_dir(), f"CRD folder not found at {CRDS}"
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served") and "schema" in version:
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                    # The API server always accepts the object's own header at the root.
                    root = schema.setdefault("properties", {})
                    root.setdefault("apiVersion", {"type": "string"})
                    root.setdefault("kind", {"type": "string"})
                    root.setdefault("metadata", {"type": "object"})
                    schemas[key] = schema
    return schemas


def validate(doc: Manifest) -> None:
    """Validate one object; raises AssertionError naming the object and the problem."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    schema = crd_schemas().get(key)
    if schema is not None:
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
        )
        assert not errors, f"{name}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors
        )
        return
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(f"{name}: no schema for {key} (neither built-in nor a CRD)") from exc
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(map(str, exc.path))
        raise AssertionError(f"{name}: {where}: {exc.message}") from exc


def pod_specs(docs: Iterable[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload and bare pod."""
    for doc in docs:
        kind = doc.get("kind")
        name = f"{kind}/{doc['metadata']['name']}"
        if kind == "Pod":
            yield name, doc["spec"]
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield name, doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield name, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def find(docs: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def assert_locked_down(name: str, spec: dict[str, Any]) -> None:
    """The restricted pod security every pod of medops meets (non-root, read-only root
    filesystem, no privilege escalation, no capabilities, RuntimeDefault seccomp, limits)."""
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True, name
    assert pod_sc["runAsUser"] > 0, name
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
    for c in containers(spec):
        sc = c["securityContext"]
        where = f"{name} container {c['name']}"
        assert sc["runAsNonRoot"] is True, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        assert "add" not in sc["capabilities"], where
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert c["resources"].get("limits"), f"{where} has no resource limits"


def triton_pod(docs: Iterable[Manifest]) -> dict[str, Any]:
    """The pod spec of the Triton Deployment."""
    (deployment,) = find(docs, "Deployment", "medops-triton")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec
