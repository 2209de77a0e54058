"""kustomize: every overlay builds with kubectl, every object validates, and each overlay keeps
its promises (CPU on kind, GPUs in production, Seldon A/B of the same Triton models)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    CRDS,
    ROOT,
    assert_locked_down,
    find,
    kustomize,
    load_manifests,
    pod_specs,
    triton_pod,
    validate,
)

K8S = ROOT / "k8s"
OVERLAYS = [K8S / "overlays" / "dev", K8S / "overlays" / "prod", K8S / "seldon"]


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.relative_to(K8S).as_posix())
def built(request: pytest.FixtureRequest) -> tuple[Path, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def test_kubectl_kustomize_builds_and_every_object_validates(
    built: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = built
    assert docs
    for doc in docs:
        validate(doc)


def test_every_pod_of_an_overlay_is_locked_down(built: tuple[Path, list[dict[str, Any]]]) -> None:
    _, docs = built
    for name, spec in pod_specs(docs):
        assert_locked_down(name, spec)


def test_every_overlay_the_task_names_exists() -> None:
    for overlay in OVERLAYS:
        assert (overlay / "kustomization.yaml").is_file(), overlay


def test_kustomize_base_is_the_chart_rendered_now() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "k8s" / "render_base.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_dev_overlay_runs_triton_on_cpu_with_local_images() -> None:
    docs = kustomize(K8S / "overlays" / "dev")
    spec = triton_pod(docs)
    triton = spec["containers"][0]
    assert "--model-config-name=cpu" in triton["args"]
    assert "nvidia.com/gpu" not in triton["resources"]["limits"]
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert not find(docs, "HorizontalPodAutoscaler")
    (gateway,) = find(docs, "Deployment", "medops-gateway")
    assert (
        gateway["spec"]["template"]["spec"]["containers"][0]["image"]
        == "localhost/medops/gateway:dev"
    )
    assert not find(docs, "Job"), "no Kubeflow on a laptop cluster"
    secrets = {s["metadata"]["name"] for s in find(docs, "Secret")}
    assert secrets == {"medops-api-keys", "medops-postgresql", "medops-minio"}
    assert all(d["metadata"]["namespace"] == "medops" for d in docs if d["kind"] != "Namespace")


def test_prod_overlay_schedules_triton_on_gpu_nodes() -> None:
    docs = kustomize(K8S / "overlays" / "prod")
    spec = triton_pod(docs)
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["affinity"]["podAntiAffinity"]
    (deployment,) = find(docs, "Deployment", "medops-triton")
    assert deployment["spec"]["replicas"] == 2
    (hpa,) = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3
    assert not find(docs, "Secret"), "production credentials are created out of band"
    assert not find(docs, "CronJob")


def test_prod_overlay_brings_the_compiled_pipeline_and_its_recurring_run() -> None:
    docs = kustomize(K8S / "overlays" / "prod")
    (job,) = find(docs, "Job", "medops-register-recurring-run")
    (pipeline,) = find(docs, "ConfigMap", "medops-training-pipeline")
    assert job["metadata"]["namespace"] == pipeline["metadata"]["namespace"] == "kubeflow"
    compiled = (K8S / "pipelines" / "medops-training.yaml").read_text()
    assert pipeline["data"]["medops-training.yaml"] == compiled
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    # the pipeline image the chart's MLflow and the pipeline's steps also use
    assert container["image"] == "ghcr.io/medops/pipeline:0.1.0"
    assert "--cron-expression" in container["command"]
    assert {"name": "HOME", "value": "/tmp"} in container["env"]
    # the base namespace stays on the platform's objects only
    (gateway,) = find(docs, "Deployment", "medops-gateway")
    assert gateway["metadata"]["namespace"] == "medops"
    # pipeline steps in kubeflow may reach MLflow and MinIO
    (policy,) = find(docs, "NetworkPolicy", "medops-mlflow")
    sources = policy["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}
    } in sources


def test_dev_api_keys_are_hashes_only() -> None:
    import base64
    import hashlib
    import json

    docs = kustomize(K8S / "overlays" / "dev")
    (secret,) = find(docs, "Secret", "medops-api-keys")
    doc = json.loads(base64.b64decode(secret["data"]["api-keys.json"]))
    assert {k["role"]: k["sha256"] for k in doc["keys"]} == {
        "client": hashlib.sha256(b"medops-client-dev-only").hexdigest(),
        "reviewer": hashlib.sha256(b"medops-reviewer-dev-only").hexdigest(),
        "admin": hashlib.sha256(b"medops-admin-dev-only").hexdigest(),
    }


def test_seldon_experiments_split_between_models_that_exist() -> None:
    docs = kustomize(K8S / "seldon")
    models = {m["metadata"]["name"]: m for m in find(docs, "Model")}
    experiments = find(docs, "Experiment")
    assert experiments
    for exp in experiments:
        spec = exp["spec"]
        names = [c["name"] for c in spec["candidates"]]
        assert set(names) <= set(models), exp["metadata"]["name"]
        assert sum(c["weight"] for c in spec["candidates"]) == 100
        assert spec["default"] in names
        if "mirror" in spec:
            assert spec["mirror"]["name"] in models
    ab = next(e for e in experiments if e["metadata"]["name"] == "brain-tumor-classifier-ab")
    served = {models[c["name"]]["spec"]["storageUri"] for c in ab["spec"]["candidates"]}
    assert served == {"s3://models/triton/brain-tumor-classifier"}, "A/B of the same Triton model"
    versions = {models[c["name"]]["spec"]["artifactVersion"] for c in ab["spec"]["candidates"]}
    assert len(versions) == 2


@pytest.mark.parametrize("folder", ["katib", "trainer"])
def test_training_manifests_beside_the_overlays_validate_against_their_crds(folder: str) -> None:
    assert CRDS.is_dir()
    files = sorted(p for p in (K8S / folder).glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
    assert files, f"k8s/{folder} has no manifests"
    for doc in load_manifests(files):
        validate(doc)
