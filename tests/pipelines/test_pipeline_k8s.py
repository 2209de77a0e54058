"""Cluster manifests: Katib Experiment, Kubeflow Trainer TrainJob, the recurring run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipelines import hpo, train_job

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT.parent / "shared" / "crds"
KUBE_VERSION = "1.30.0"


def _schema(crd_file: str, kind: str, version: str) -> dict[str, Any]:
    path = CRDS / crd_file
    assert path.is_file(), f"CRD file not found at {path}"
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["spec"]["names"]["kind"] == kind:
            served = {v["name"]: v for v in doc["spec"]["versions"]}
            return dict(served[version]["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{kind} not in {crd_file}")


def _load(rel: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / rel).read_text()))


def test_the_katib_experiment_validates_and_searches_the_optuna_space() -> None:
    experiment = _load("k8s/katib/experiment.yaml")
    jsonschema.validate(experiment, _schema("katib-experiments.yaml", "Experiment", "v1beta1"))
    spec = experiment["spec"]
    assert spec["objective"]["objectiveMetricName"] == hpo.OBJECTIVE
    space = {p["name"]: p for p in spec["parameters"]}
    assert set(space) == set(hpo.SEARCH_SPACE)
    for name, want in hpo.SEARCH_SPACE.items():
        got = space[name]
        assert got["parameterType"] == want["type"]
        if want["type"] == "double":
            assert float(got["feasibleSpace"]["min"]) == pytest.approx(want["min"])
            assert float(got["feasibleSpace"]["max"]) == pytest.approx(want["max"])
            assert got["feasibleSpace"]["distribution"] == "logUniform"
        else:
            assert [int(v) for v in got["feasibleSpace"]["list"]] == want["choices"]

    template = spec["trialTemplate"]
    declared = {p["name"]: p["reference"] for p in template["trialParameters"]}
    assert set(declared.values()) == set(hpo.SEARCH_SPACE)
    job = template["trialSpec"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == template["primaryContainerName"]
    used = set(re.findall(r"\$\{trialParameters\.(\w+)\}", " ".join(container["command"])))
    assert used == set(declared)
    # the trial command, with a sample point, is accepted by the trial's own parser
    sample = {"lr": "0.001", "weight_decay": "0.0001", "batch_size": "16"}
    command = [
        re.sub(r"\$\{trialParameters\.(\w+)\}", lambda m: sample[declared[m.group(1)]], arg)
        for arg in container["command"]
    ]
    assert command[:3] == ["python", "-m", "pipelines.hpo"]
    args = hpo.build_parser().parse_args(command[3:])
    assert args.batch_size == 16 and args.task == "segmenter"
    concrete = yaml.safe_load(re.sub(r"\$\{trialParameters\.\w+\}", "1", yaml.safe_dump(job)))
    kubernetes_validate.validate(concrete, KUBE_VERSION, strict=True)


def test_the_trainjob_validates_and_runs_the_torchrun_entry_point_on_gpu_nodes() -> None:
    trainjob = _load("k8s/trainer/trainjob.yaml")
    jsonschema.validate(
        trainjob, _schema("kubeflow-trainer-trainjobs.yaml", "TrainJob", "v1alpha1")
    )
    trainer = trainjob["spec"]["trainer"]
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][:2] == ["-m", "pipelines.train_job"]
    args = train_job.build_parser().parse_args(trainer["args"][2:])
    assert args.task == "segmenter" and args.data.startswith("/data/")
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    override = trainjob["spec"]["podSpecOverrides"][0]
    assert override["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    volumes = {v["name"] for v in override["volumes"]}
    mounts = {m["name"] for c in override["containers"] for m in c["volumeMounts"]}
    assert mounts <= volumes


def test_the_recurring_run_renders_with_the_compiled_pipeline_and_a_valid_kfp_command() -> None:
    from kfp.cli import recurring_run

    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s" / "pipelines")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(rendered)}
    config_map, job = docs["ConfigMap"], docs["Job"]
    compiled = (ROOT / "k8s" / "pipelines" / "medops-training.yaml").read_text()
    assert config_map["data"]["medops-training.yaml"] == compiled
    kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
    kubernetes_validate.validate(config_map, KUBE_VERSION, strict=True)

    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "kfp" and command[3:5] == ["recurring-run", "create"]
    mount = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
    package = command[command.index("--pipeline-package-path") + 1]
    assert package == f"{mount}/medops-training.yaml"
    # kfp's own CLI parses the command (the package read from here instead of the mount)
    local = [
        str(ROOT / "k8s" / "pipelines" / "medops-training.yaml") if a == package else a
        for a in command[5:]
    ]
    ctx = recurring_run.create.make_context("create", local)
    assert len(ctx.params["cron_expression"].split()) == 6  # KFP cron: seconds first
    params = dict(a.split("=", 1) for a in ctx.params["args"])
    spec = next(yaml.safe_load_all(compiled))
    pipeline_inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) <= set(pipeline_inputs)
    for required in ("lgg_path", "home", "tracking_uri"):
        assert required in params
