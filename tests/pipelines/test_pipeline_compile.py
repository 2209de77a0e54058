"""The compiled pipeline YAML: every component, the Kubernetes settings, caching, freshness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from pipelines.cli import pipeline
from pipelines.components import DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "k8s" / "pipelines" / "medops-training.yaml"
COMPONENTS = {
    "check-registry",
    "ingest",
    "split",
    "validate",
    "tune",
    "no-tuning",
    "train",
    "evaluate",
    "export",
    "register",
    "gate",
    "skipped",
    "publish",
}


def _compile(tmp_path: Path, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(pipeline, ["compile", "--output", str(out), *args])
    assert result.exit_code == 0, result.output
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    return spec, platform


def _tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every DAG (the root and the condition branches), by task name."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {name: task for dag in dags for name, task in dag["tasks"].items()}


def test_the_compiled_pipeline_names_every_component_in_the_cluster_image(
    tmp_path: Path,
) -> None:
    spec, _ = _compile(tmp_path)
    assert spec["pipelineInfo"]["name"] == "medops-training"
    names = {n.removeprefix("comp-").rstrip("-0123456789") for n in spec["components"]}
    assert names >= COMPONENTS
    executors = spec["deploymentSpec"]["executors"]
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == DEFAULT_IMAGE
        assert "pip install" not in " ".join(container["command"])  # the image has medops
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert {"lgg_path", "home", "tracking_uri", "preset", "hpo_trials", "type_classifier"} <= set(
        inputs
    )


def test_train_steps_ask_for_gpu_nodes_and_every_step_mounts_the_data_volume(
    tmp_path: Path,
) -> None:
    spec, platform = _compile(tmp_path, "--data-pvc", "brain-data", "--mlflow-secret", "mlf")
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train"]
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert train["pvcMount"][0]["mountPath"] == "/data"
    assert train["pvcMount"][0]["constant"] == "brain-data"
    envs = {e["envVar"] for e in train["secretAsEnv"][0]["keyToEnv"]}
    assert envs == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert train["secretAsEnv"][0]["secretName"] == "mlf"
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert "nodeSelector" not in executors["exec-evaluate"]
    assert "secretAsEnv" not in executors["exec-split"]  # no registry access, no credentials
    for name in ("exec-ingest", "exec-split", "exec-validate", "exec-export", "exec-publish"):
        assert executors[name]["pvcMount"][0]["constant"] == "brain-data"


def test_caching_is_on_except_for_steps_that_touch_the_registry_or_the_data_folder(
    tmp_path: Path,
) -> None:
    spec, _ = _compile(tmp_path)
    tasks = _tasks(spec)
    cached = {n for n, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
    assert {"train", "train-2", "split", "validate", "export"} <= cached
    for name in (
        "check-registry",
        "ingest",
        "evaluate",
        "evaluate-system",
        "register",
        "gate",
        "publish",
    ):
        assert name not in cached


def test_the_committed_pipeline_yaml_is_what_the_code_compiles_to(tmp_path: Path) -> None:
    spec, platform = _compile(tmp_path)
    committed_spec, committed_platform = list(yaml.safe_load_all(COMMITTED.read_text()))
    assert committed_spec == spec, "recompile: medops pipeline compile --output " + str(
        COMMITTED.relative_to(ROOT)
    )
    assert committed_platform == platform


KVASIR = ROOT / "tasks" / "kvasir-polyp-segmenter.yaml"
COMMITTED_KVASIR = ROOT / "k8s" / "pipelines" / "kvasir-polyp-segmenter.yaml"


def test_a_task_pipeline_carries_its_task_and_runs_every_step_on_gpu_nodes(tmp_path: Path) -> None:
    from medops.tasks import read_task
    from pipelines.tasks import resolve

    spec, platform = _compile(tmp_path, "--task", str(KVASIR))
    assert spec["pipelineInfo"]["name"] == "medops-task-training"
    tasks = spec["root"]["dag"]["tasks"]
    documents = {
        t["inputs"]["parameters"]["task"]["runtimeValue"]["constant"]
        for t in tasks.values()
        if "task" in t.get("inputs", {}).get("parameters", {})
    }
    # one document, the task file's own declarations: the pipeline needs no file on the cluster
    assert len(documents) == 1
    assert resolve(documents.pop()).spec == read_task(KVASIR)
    names = {t["taskInfo"]["name"] for t in tasks.values()}
    for step in ("ingest", "train", "evaluate", "export", "register", "promotion gate"):
        assert any(n.startswith(step) and "kvasir-polyp-segmenter" in n for n in names), step
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = next(v for k, v in executors.items() if k.startswith("exec-train"))
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    committed_spec, committed_platform = list(yaml.safe_load_all(COMMITTED_KVASIR.read_text()))
    assert committed_spec == spec, (
        "recompile: medops pipeline compile --task "
        + str(KVASIR.relative_to(ROOT))
        + " --output "
        + str(COMMITTED_KVASIR.relative_to(ROOT))
    )
    assert committed_platform == platform


def test_compiling_a_broken_task_file_names_its_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(KVASIR.read_text().replace("name: kvasir-polyp-segmenter", "name: broken"))
    broken.write_text(broken.read_text().replace("modality: ES", "modality: endoscopy"))
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(pipeline, ["compile", "--output", str(out), "--task", str(broken)])
    assert result.exit_code != 0
    assert "broken.yaml: modality" in str(result.exception)
    assert not out.exists()
