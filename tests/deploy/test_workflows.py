"""CI workflows, scripts, images and local-stack configuration: they parse, everything they
call exists, and the workflows pass the offline supply-chain audit."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SCRIPTS = [
    ROOT / "infra" / "images.sh",
    ROOT / "infra" / "deploy.sh",
    ROOT / "infra" / "podman-build.sh",
    ROOT / "infra" / "kind" / "up.sh",
]


def _triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as True
    on = workflow.get("on", workflow.get(True))
    assert on is not None
    return (
        on
        if isinstance(on, dict)
        else {name: None for name in ([on] if isinstance(on, str) else on)}
    )


def _run_lines(workflow: dict[Any, Any]) -> list[str]:
    lines: list[str] = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                lines.extend(line.strip() for line in step["run"].splitlines() if line.strip())
    return lines


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.MULTILINE))


def test_the_three_workflows_exist() -> None:
    assert {w.name for w in WORKFLOWS} == {"tests.yml", "images.yml", "retrain.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_parses_and_calls_only_make_targets_and_scripts_that_exist(workflow: Path) -> None:
    doc = yaml.safe_load(workflow.read_text())
    assert _triggers(doc)
    targets = _make_targets()
    lines = _run_lines(doc)
    assert lines
    for line in lines:
        words = shlex.split(line)
        if words[0] == "make":
            called = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            assert called, line
            missing = set(called) - targets
            assert not missing, (
                f"{workflow.name}: make {' '.join(sorted(missing))} is not a Makefile target"
            )
        for word in words:
            if re.fullmatch(r"(\./)?(infra|scripts|\.ci)/[\w./-]+", word):
                assert (ROOT / word).is_file(), f"{workflow.name}: {word} does not exist"
        assert words[0] in {"make", "echo"}, (
            f"{workflow.name}: steps call make targets only: {line}"
        )


def test_retrain_runs_on_schedule_by_hand_and_on_drift_alerts() -> None:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "retrain.yml").read_text())
    on = _triggers(doc)
    assert on["schedule"][0]["cron"]
    assert set(on["workflow_dispatch"]["inputs"]["target"]["options"]) == {"kfp", "runner"}
    # the monitor's retraining trigger dispatches this event type by default
    from services.monitor.settings import MonitorSettings

    assert on["repository_dispatch"]["types"] == [MonitorSettings().github_event_type]
    lines = _run_lines(doc)
    assert "make pipeline-submit" in lines and "make retrain-local" in lines


def _steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_to_a_commit_checkouts_keep_no_credentials_and_rights_are_least(
    workflow: Path,
) -> None:
    text = workflow.read_text()
    doc = yaml.safe_load(text)
    for line in re.findall(r"uses:.*", text):
        # a tag can be moved; a commit cannot. The comment names the release for updates.
        assert re.fullmatch(r"uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+", line), line
    for step in _steps(doc):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, workflow.name
    assert doc["permissions"] == {"contents": "read"}, "more rights only per job"


def _zizmor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("zizmor")
    assert binary.is_file(), "zizmor is a dev dependency: make install"
    return subprocess.run(
        [str(binary), "--offline", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], **env},
    )


def test_make_lint_runs_the_offline_workflow_audit_and_it_finds_nothing_without_network(
    tmp_path: Path,
) -> None:
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert lint and "zizmor --offline" in lint.group(1) and ".github/workflows/" in lint.group(1)
    # an unreachable proxy and no token: any attempt to go online would fail the audit
    offline = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = _zizmor(str(ROOT / ".github" / "workflows"), **offline)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings" in result.stdout + result.stderr
    # and the audit does fail on what it exists to catch
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\npermissions:\n  contents: read\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    steps:\n      - uses: actions/checkout@v4\n"
    )
    result = _zizmor(str(bad), **offline)
    assert result.returncode != 0 and "unpinned-uses" in result.stdout + result.stderr


def test_makefile_targets_the_scripts_and_workflows_rely_on_exist() -> None:
    needed = {
        "kind-up",
        "deploy",
        "images",
        "podman-build",
        "k8s-base",
        "k8s-base-check",
        "pipeline-submit",
        "retrain-local",
        "test-deploy",
        "install",
        "lint",
        "test",
    }
    missing = needed - _make_targets()
    assert not missing, f"Makefile lacks: {sorted(missing)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shell_scripts_parse(script: Path) -> None:
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_podman_build_uses_the_settings_podman_needs_here() -> None:
    text = (ROOT / "infra" / "podman-build.sh").read_text()
    for needed in (
        "--runtime runc",
        "--cgroup-manager cgroupfs",
        "nofile=",
        "nproc=",
        "debootstrap",
    ):
        assert needed in text


# --- images --------------------------------------------------------------------------------

DOCKERFILES = sorted(
    p for p in (ROOT / "infra" / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore"
)


def test_an_image_for_each_service() -> None:
    assert {d.name for d in DOCKERFILES} == {
        "Dockerfile.gateway",
        "Dockerfile.monitor",
        "Dockerfile.pipeline",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_pinned_non_root_and_healthchecked(dockerfile: Path) -> None:
    lines = [ln.strip() for ln in dockerfile.read_text().splitlines()]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", "\n".join(lines), flags=re.MULTILINE))
    stages = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage"
    for image in stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        tag = image.rpartition(":")[2]
        assert "@sha256:" in image or re.search(r"\d+\.\d+", tag), f"unpinned base {image}"
    assert any(ln.startswith("COPY --from=build") for ln in lines)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert any(ln.startswith("HEALTHCHECK ") for ln in lines)
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    rules = [ln for ln in ignore.read_text().splitlines() if ln and not ln.startswith("#")]
    assert rules[0] == "*", "the build context holds only what is listed"
    for copied in re.findall(r"^COPY (?!--from)(\S+)", "\n".join(lines), flags=re.MULTILINE):
        assert (ROOT / copied).exists(), f"{dockerfile.name} copies missing {copied}"
        assert f"!{copied}" in ignore.read_text() or f"!{copied}/" in ignore.read_text(), copied


# --- local stack ---------------------------------------------------------------------------


def test_local_prometheus_loads_the_charts_alert_rules_and_scrapes_each_service() -> None:
    config_path = ROOT / "infra" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    (rules,) = config["rule_files"]
    assert (config_path.parent / rules).resolve() == (CHART / "files" / "alerts.yaml").resolve()
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {"127.0.0.1:8080", "127.0.0.1:8090", "127.0.0.1:8002"}


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    base = ROOT / "infra" / "grafana" / "provisioning"
    ds = yaml.safe_load((base / "datasources" / "prometheus.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((base / "dashboards" / "medops.yaml").read_text())
    assert provider["providers"][0]["options"]["path"].endswith("/medops")


def test_kind_cluster_config_is_a_kind_cluster_on_kubernetes_1_30() -> None:
    config = yaml.safe_load((ROOT / "infra" / "kind" / "cluster.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert {n["role"] for n in config["nodes"]} == {"control-plane", "worker"}
    assert all(n["image"].startswith("kindest/node:v1.30.") for n in config["nodes"])


# --- KFP submission ------------------------------------------------------------------------


def _load_submit() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kfp_submit", ROOT / "infra" / "kfp" / "submit.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["kfp_submit"] = module
    spec.loader.exec_module(module)
    return module


_PIPELINE = """
import sys
from kfp import compiler, dsl

@dsl.component(base_image="python:3.11")
def step(preset: str) -> str:
    return preset

@dsl.pipeline(name="medops-training")
def pipeline(preset: str = "fast"):
    step(preset=preset)

compiler.Compiler().compile(pipeline, sys.argv[1])
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline compiled by the real kfp compiler (in a module without postponed annotations,
    which kfp components need)."""
    folder = tmp_path_factory.mktemp("kfp")
    (folder / "make_pipeline.py").write_text(_PIPELINE)
    path = folder / "pipeline.yaml"
    subprocess.run(
        [sys.executable, str(folder / "make_pipeline.py"), str(path)], check=True, timeout=120
    )
    return path


class _Recorder:
    """Stands in for kfp.Client and records the calls (the submission logic is ours)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def create_experiment(self, name: str, description: str = "") -> Any:
        self.calls.append(("create_experiment", {"name": name}))
        return type("E", (), {"experiment_id": "exp-1"})()

    def create_run_from_pipeline_package(self, pipeline_file: str, **kw: Any) -> Any:
        self.calls.append(("run", {"pipeline_file": pipeline_file, **kw}))
        return type("R", (), {"run_id": "run-1"})()

    def create_recurring_run(self, **kw: Any) -> Any:
        self.calls.append(("recurring", kw))
        return type("J", (), {"recurring_run_id": "job-1"})()

    def wait_for_run_completion(self, run_id: str, timeout: int) -> Any:
        self.calls.append(("wait", {"run_id": run_id}))
        return type("S", (), {"state": "FAILED"})()


def test_submit_plans_a_run_from_a_real_compiled_pipeline(
    package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    submit = _load_submit()
    assert (
        submit.main(
            ["--package", str(package), "--param", "preset=full", "--trigger", "drift", "--dry-run"]
        )
        == 0
    )
    planned = json.loads(capsys.readouterr().out)
    assert planned["pipeline"] == "medops-training"
    assert planned["params"] == {"preset": "full"}
    assert planned["run_name"] == "medops-training-drift"


def test_submit_refuses_unknown_parameters_and_missing_packages(
    package: Path, tmp_path: Path
) -> None:
    submit = _load_submit()
    with pytest.raises(SystemExit, match="epochs: not a parameter of medops-training"):
        submit.main(["--package", str(package), "--param", "epochs=3", "--dry-run"])
    with pytest.raises(SystemExit, match="not found"):
        submit.main(["--package", str(tmp_path / "absent.yaml"), "--dry-run"])
    with pytest.raises(SystemExit, match="expected 5 or 6 cron fields"):
        submit.main(["--package", str(package), "--cron", "weekly", "--dry-run"])
    with pytest.raises(SystemExit, match="expected NAME=VALUE"):
        submit.main(["--package", str(package), "--param", "preset", "--dry-run"])


def test_submit_makes_a_one_off_or_a_recurring_run(package: Path) -> None:
    submit = _load_submit()
    args = submit.parser().parse_args(["--package", str(package), "--cron", "0 3 * * 0"])
    client = _Recorder()
    assert submit.submit(submit.plan(args), client) == "job-1"
    (_, experiment), (_, recurring) = client.calls
    assert experiment == {"name": "medops"}
    assert recurring["cron_expression"] == "0 0 3 * * 0", "KFP cron has a seconds field"
    assert recurring["experiment_id"] == "exp-1"
    assert recurring["max_concurrency"] == 1
    once = _Recorder()
    args = submit.parser().parse_args(["--package", str(package)])
    with pytest.raises(SystemExit, match="run run-1 ended FAILED"):
        submit.submit(submit.plan(args), once, wait_seconds=60)
    assert [name for name, _ in once.calls] == ["run", "wait"]
    assert once.calls[0][1]["pipeline_file"] == str(package)


# --- Prometheus: rule file, local config and dashboard queries ----------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: make system-deps installs Debian's prometheus"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_alert_rules_and_the_local_prometheus_config() -> None:
    rules = _promtool("check", "rules", str(CHART / "files" / "alerts.yaml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 7 rules found" in rules.stdout
    config = _promtool("check", "config", str(ROOT / "infra" / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules: list[dict[str, str]] = []
    for path in sorted((CHART / "files" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                # Grafana substitutes $model with the selected models' regex
                expr = target["expr"].replace("$model", ".*")
                rules.append(
                    {
                        "record": f"dashboard:{path.stem.replace('-', '_')}:{len(rules)}",
                        "expr": expr,
                    }
                )
    rule_file = tmp_path / "dashboard-queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = _promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
