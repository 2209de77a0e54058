"""The Helm chart: lint, render, schema-validate every object of every profile, and check the
promises each profile makes (security, GPU scheduling, CPU models, routing weights, alerts)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

import helm_python
import pytest
import yaml
from deploy_support import (
    CHART,
    PROFILES,
    assert_locked_down,
    containers,
    find,
    pod_specs,
    profile_values,
    render,
    render_profile,
    triton_pod,
    validate,
)

ALL_PROFILES = ["default", *PROFILES]


def test_every_ci_profile_the_task_names_exists() -> None:
    assert {"kind-cpu", "gpu", "mesh", "external-mlflow"} <= set(PROFILES)


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_helm_lint_strict_passes_for_profile(profile: str) -> None:
    report = helm_python.lint(CHART, profile_values(profile), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.fixture(scope="module", params=ALL_PROFILES)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render_profile(request.param)


def test_every_rendered_object_validates_against_kubernetes_or_its_crd(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    assert len(docs) > 10
    for doc in docs:
        validate(doc)


def test_every_container_runs_non_root_read_only_without_privileges(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    pods = list(pod_specs(docs))
    assert pods
    for name, spec in pods:
        assert_locked_down(name, spec)


def test_every_image_is_pinned_to_a_tag(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for name, spec in pod_specs(docs):
        for c in containers(spec):
            image = c["image"]
            tag = image.rpartition(":")[2]
            assert ":" in image and tag and tag != "latest", f"{name}: {image}"


def test_every_workload_is_covered_by_a_network_policy(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    selectors = [p["spec"]["podSelector"]["matchLabels"] for p in find(docs, "NetworkPolicy")]
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert any(sel.items() <= labels.items() for sel in selectors), doc["metadata"]["name"]


def test_services_select_pods_that_exist(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    pod_labels = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    ]
    for svc in find(docs, "Service"):
        selector = svc["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), svc["metadata"][
            "name"
        ]


def _container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in spec["containers"] if c["name"] == name]
    return found


def test_gpu_profile_asks_for_gpus_on_gpu_nodes() -> None:
    spec = triton_pod(render_profile("gpu"))
    triton = _container(spec, "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert not any(a.startswith("--model-config-name") for a in triton["args"])


def test_kind_cpu_profile_serves_the_cpu_model_configs_without_gpus() -> None:
    spec = triton_pod(render_profile("kind-cpu"))
    triton = _container(spec, "triton")
    assert "--model-config-name=cpu" in triton["args"]
    assert "nvidia.com/gpu" not in triton["resources"].get("limits", {})
    assert "nvidia.com/gpu.present" not in spec.get("nodeSelector", {})
    assert not spec.get("tolerations")


@pytest.mark.parametrize(("profile", "watch"), [("kind-cpu", True), ("external-mlflow", False)])
def test_model_repository_is_synced_from_the_object_store(profile: str, watch: bool) -> None:
    spec = triton_pod(render_profile(profile))
    (sync,) = spec["initContainers"]
    assert sync["args"][-2:][1] == "/models/"
    assert sync["args"][-2].startswith("store/") and sync["args"][-2].endswith("/triton/")
    # watching: a native sidecar that keeps mirroring; otherwise a one-off copy before Triton
    assert ("--watch" in sync["args"]) is watch
    assert (sync.get("restartPolicy") == "Always") is watch
    env = {e["name"]: e for e in sync["env"]}
    names = [e["name"] for e in sync["env"]]
    # credentials come from a Secret and are defined before MC_HOST_store refers to them
    assert names.index("AWS_ACCESS_KEY_ID") < names.index("MC_HOST_store")
    assert "$(AWS_ACCESS_KEY_ID):$(AWS_SECRET_ACCESS_KEY)@" in env["MC_HOST_store"]["value"]
    assert "valueFrom" in env["AWS_SECRET_ACCESS_KEY"]
    triton = _container(spec, "triton")
    mounts = {m["name"]: m["mountPath"] for m in triton["volumeMounts"]}
    assert mounts["models"] == "/models"
    assert "--model-repository=/models" in triton["args"]
    assert "--model-control-mode=poll" in triton["args"]


def test_bundled_minio_credentials_reach_the_model_sync() -> None:
    (sync,) = triton_pod(render_profile("kind-cpu"))["initContainers"]
    env = {e["name"]: e for e in sync["env"]}
    assert env["MC_HOST_store"]["value"] == (
        "http://$(AWS_ACCESS_KEY_ID):$(AWS_SECRET_ACCESS_KEY)@medops-minio:9000"
    )
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "medops-minio",
        "key": "root-user",
    }


def test_model_repository_can_come_from_a_volume() -> None:
    values = profile_values("gpu")
    values["triton"]["modelRepository"]["source"] = "pvc"
    values["triton"]["modelRepository"]["pvc"]["claimName"] = "triton-models"
    spec = triton_pod(render(values))
    assert "initContainers" not in spec
    (models,) = [v for v in spec["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"] == {"claimName": "triton-models", "readOnly": True}


def test_external_mlflow_profile_points_services_at_the_external_server() -> None:
    docs = render_profile("external-mlflow")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "medops-mlflow") not in kinds
    assert ("StatefulSet", "medops-postgresql") not in kinds
    assert ("StatefulSet", "medops-minio") not in kinds
    (gateway,) = find(docs, "Deployment", "medops-gateway")
    env = {
        e["name"]: e.get("value")
        for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MEDOPS_GATEWAY_TRACKING_URI"] == "https://mlflow.example.org"
    init = triton_pod(docs)["initContainers"][0]
    init_env = {e["name"]: e for e in init["env"]}
    assert init_env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "medops-s3"
    assert "s3.eu-west-1.amazonaws.com" in init_env["MC_HOST_store"]["value"]


def test_bundled_mlflow_uses_postgresql_and_minio() -> None:
    docs = render_profile("kind-cpu")
    (mlflow,) = find(docs, "Deployment", "medops-mlflow")
    c = mlflow["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith(
        "postgresql+psycopg://mlflow:$(PGPASSWORD)@medops-postgresql:5432/mlflow"
    )
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://medops-minio:9000"
    assert "--artifacts-destination=s3://mlflow/" in c["args"]
    # MLflow's DNS-rebinding guard must accept the Host the services and port-forwards send
    from mlflow.server.security_utils import is_allowed_host_header

    (hosts,) = [
        a.split("=", 1)[1].split(",") for a in c["args"] if a.startswith("--allowed-hosts=")
    ]
    for host in (
        "medops-mlflow:5000",
        "medops-mlflow.medops.svc.cluster.local:5000",
        "127.0.0.1:5000",
    ):
        assert is_allowed_host_header(hosts, host), host
    assert not is_allowed_host_header(hosts, "attacker.example:5000")
    (gateway,) = find(docs, "Deployment", "medops-gateway")
    genv = {
        e["name"]: e.get("value")
        for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert genv["MEDOPS_GATEWAY_TRACKING_URI"] == "http://medops-mlflow:5000"
    assert genv["MEDOPS_GATEWAY_BACKEND"] == "triton-grpc"
    assert genv["MEDOPS_GATEWAY_BACKEND_URL"] == "medops-triton:8001"


def test_gateway_receives_only_hashes_of_the_api_keys() -> None:
    values = profile_values("kind-cpu")
    values["apiKeys"] = {
        "existingSecret": "", "client": "c-key", "reviewer": "r-key", "admin": "a-key"
    }  # fmt: skip
    docs = render(values)
    (secret,) = find(docs, "Secret", "medops-gateway-api-keys")
    hashed = json.loads(secret["stringData"]["api-keys.json"])
    assert {k["role"]: k["sha256"] for k in hashed["keys"]} == {
        "client": hashlib.sha256(b"c-key").hexdigest(),
        "reviewer": hashlib.sha256(b"r-key").hexdigest(),
        "admin": hashlib.sha256(b"a-key").hexdigest(),
    }
    (gateway,) = find(docs, "Deployment", "medops-gateway")
    (volume,) = [
        v for v in gateway["spec"]["template"]["spec"]["volumes"] if v["name"] == "api-keys"
    ]
    assert volume["secret"]["items"] == [{"key": "api-keys.json", "path": "api-keys.json"}]
    env = {
        e["name"]: e.get("value")
        for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MEDOPS_GATEWAY_API_KEYS_FILE"] == "/etc/medops/api-keys/api-keys.json"
    assert env["MEDOPS_GATEWAY_LOCAL_MODE"] == "false"


def test_generated_api_keys_are_random_and_hashed() -> None:
    (secret,) = find(render_profile("kind-cpu"), "Secret", "medops-gateway-api-keys")
    plain = json.loads(secret["stringData"]["credentials.json"])
    hashed = {
        k["role"]: k["sha256"] for k in json.loads(secret["stringData"]["api-keys.json"])["keys"]
    }
    assert set(plain) == {"client", "reviewer", "admin"} and len(set(plain.values())) == 3
    assert all(len(v) > 40 for v in plain.values())
    assert hashed == {r: hashlib.sha256(k.encode()).hexdigest() for r, k in plain.items()}


@pytest.mark.parametrize("existing", ["", "hospital-api-keys"])
def test_the_monitor_mounts_the_same_key_hashes_as_the_gateway(existing: str) -> None:
    values = profile_values("kind-cpu")
    values["apiKeys"] = {"existingSecret": existing, "client": "", "reviewer": "", "admin": ""}
    docs = render(values)
    mounted = {}
    for name in ("medops-gateway", "medops-monitor"):
        (deployment,) = find(docs, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "api-keys"]
        assert volume["secret"]["items"] == [{"key": "api-keys.json", "path": "api-keys.json"}]
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-keys"]
        assert mount == {"name": "api-keys", "mountPath": "/etc/medops/api-keys", "readOnly": True}
        mounted[name] = volume["secret"]["secretName"]
    assert set(mounted.values()) == {existing or "medops-gateway-api-keys"}
    (monitor,) = find(docs, "Deployment", "medops-monitor")
    env = _plain_env(monitor)
    assert env["MEDOPS_MONITOR_LOCAL_MODE"] == "false"
    assert env["MEDOPS_MONITOR_API_KEYS_FILE"] == "/etc/medops/api-keys/api-keys.json"
    assert "MEDOPS_MONITOR_AUTH_ENABLED" not in env  # keys are required


def test_the_monitor_is_probed_on_the_gateways_health_paths() -> None:
    (monitor,) = find(render_profile("kind-cpu"), "Deployment", "medops-monitor")
    container = monitor["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


@pytest.mark.parametrize("profile", ["default", "kind-cpu", "mesh"])
def test_only_the_gateway_prometheus_and_the_ingress_reach_the_monitor(profile: str) -> None:
    docs = render_profile(profile)
    (policy,) = find(docs, "NetworkPolicy", "medops-monitor")
    # one rule opens the API port (the others, in the mesh, are the sidecar's own ports)
    (rule,) = [r for r in policy["spec"]["ingress"] if 8090 in {p["port"] for p in r["ports"]}]
    assert rule["ports"] == [{"port": 8090, "protocol": "TCP"}]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/component": "gateway",
                    "app.kubernetes.io/instance": "medops",
                    "app.kubernetes.io/name": "medops",
                }
            }
        },
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        },
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"istio": "ingressgateway"}}},
    ]


def test_the_monitors_admitted_peers_come_from_values() -> None:
    values = profile_values("kind-cpu")
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}}}
    nginx = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}}
    values["networkPolicy"] = {
        **values.get("networkPolicy", {}), "prometheus": [monitoring], "ingress": [nginx]
    }  # fmt: skip
    (policy,) = find(render(values), "NetworkPolicy", "medops-monitor")
    assert policy["spec"]["ingress"][0]["from"][1:] == [monitoring, nginx]


def test_default_profile_autoscales_and_protects_the_gateway() -> None:
    docs = render_profile("default")
    (hpa,) = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "medops-gateway"
    (pdb,) = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    (gateway,) = find(docs, "Deployment", "medops-gateway")
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"


def test_helm_test_pod_checks_gateway_readiness() -> None:
    (pod,) = find(render_profile("default"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert "http://medops-gateway:8080/v2/health/ready" in script
    assert script.rstrip().endswith("exit $rc")
    assert "quitquitquit" not in script


def test_helm_test_pod_stops_its_istio_sidecar_in_the_mesh() -> None:
    docs = render_profile("mesh")
    (pod,) = find(docs, "Pod")
    script = pod["spec"]["containers"][0]["command"][-1]
    assert "http://127.0.0.1:15020/quitquitquit" in script
    config = pod["metadata"]["annotations"]["proxy.istio.io/config"]
    assert "holdApplicationUntilProxyStarts" in config
    for policy in find(docs, "NetworkPolicy"):
        ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert {15020, 15090} <= ports, policy["metadata"]["name"]


# --- alerts and dashboards ---------------------------------------------------------------


def test_prometheus_rule_carries_the_alert_rule_file_unchanged() -> None:
    docs = render_profile("gpu")
    (rule,) = find(docs, "PrometheusRule")
    plain = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"] == plain
    alerts = {r["alert"] for g in plain["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "MedopsHighErrorRate",
        "MedopsLatencySLOBreach",
        "MedopsDataDrift",
        "MedopsQualityDrop",
    } <= alerts
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_alert_rule_file_is_in_prometheus_rule_file_format() -> None:
    plain = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert set(plain) == {"groups"}
    for group in plain["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule)
            assert set(rule) <= {
                "alert",
                "record",
                "expr",
                "for",
                "labels",
                "annotations",
                "keep_firing_for",
            }
            assert rule["expr"].strip()


METRIC = re.compile(r"\b(medops_[a-z_]+|medops:[a-z0-9_:]+|nv_[a-z_]+)")
KNOWN_METRICS = {
    "medops_requests_total",
    "medops_request_duration_seconds_bucket",
    "medops_request_duration_seconds_count",
    "medops_drift_share",
    "medops_drift_detected",
    "medops_quality_score",
    "medops:request_error_ratio:rate5m",
    "medops:request_latency_seconds:p99_5m",
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
}


def test_dashboards_cover_every_view_and_query_only_known_metrics() -> None:
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert {f.stem for f in files} == {"traffic", "latency", "errors", "variants", "drift-quality"}
    uids = set()
    for f in files:
        dash = json.loads(f.read_text())
        uids.add(dash["uid"])
        assert dash["panels"], f.name
        for panel in dash["panels"]:
            assert panel["targets"], f"{f.name}: {panel['title']}"
            for target in panel["targets"]:
                used = set(METRIC.findall(target["expr"]))
                assert used, f"{f.name}: {target['expr']}"
                assert used <= KNOWN_METRICS, f"{f.name}: unknown {used - KNOWN_METRICS}"
    assert len(uids) == len(files)


def test_dashboards_render_as_configmaps_for_the_grafana_sidecar() -> None:
    maps = [
        m
        for m in find(render_profile("gpu"), "ConfigMap")
        if "grafana_dashboard" in m["metadata"]["labels"]
    ]
    assert len(maps) == 5
    for cm in maps:
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((CHART / "files" / "dashboards" / key).read_text())


def test_service_monitors_scrape_gateway_triton_and_monitor() -> None:
    monitors = find(render_profile("gpu"), "ServiceMonitor")
    ports = {m["metadata"]["name"]: m["spec"]["endpoints"][0]["port"] for m in monitors}
    assert ports == {"medops-gateway": "http", "medops-triton": "metrics", "medops-monitor": "http"}


# --- values schema -----------------------------------------------------------------------


def _walk_objects(schema: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            found.append((path, schema))
        for key, value in schema.items():
            found.extend(_walk_objects(value, f"{path}.{key}"))
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found.extend(_walk_objects(value, f"{path}[{i}]"))
    return found


def test_values_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = _walk_objects(schema)
    assert len(objects) > 40
    for path, obj in objects:
        extra = obj.get("additionalProperties")
        # closed (false) or a typed map (a schema for every value); never open
        assert extra is False or isinstance(extra, dict), path


def _with(path: str, value: Any) -> dict[str, Any]:
    values = copy.deepcopy(profile_values("mesh"))
    node = values
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[int(key)]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return values


BAD_VALUES = {
    "unknown top-level key": _with("replicas", 3),
    "unknown nested key": _with("gateway.autoscaling.maxReplica", 3),
    "monitor peer with an unknown selector": _with(
        "networkPolicy.ingress", [{"podSelectors": {"matchLabels": {"a": "b"}}}]
    ),
    "negative replicas": _with("gateway.replicaCount", -1),
    "replicas as a string": _with("triton.replicaCount", "two"),
    "unknown triton profile": _with("triton.profile", "tpu"),
    "zero GPUs": _with("triton.gpu.count", 0),
    "port out of range": _with("gateway.service.httpPort", 70000),
    "unknown backend": _with("gateway.backend", "torchserve"),
    "no served model": _with("gateway.models", []),
    "served model name with capitals": _with("gateway.models", ["Polyp"]),
    "enabled as a string": _with("istio.enabled", "yes"),
    "unknown routing mode": _with("routing.mode", "random"),
    "model name that is no DNS label": _with(
        "routing.models.Brain_Tumour",
        {"variants": [{"name": "a", "alias": "champion", "weight": 100}]},
    ),
    "unknown strategy": _with("routing.models.brain-tumor-classifier.strategy", "roulette"),
    "weight above 100": _with("routing.models.brain-tumor-classifier.variants.0.weight", 101),
    "negative weight": _with("routing.models.brain-tumor-classifier.variants.0.weight", -5),
    "variant with alias and version": _with(
        "routing.models.brain-tumor-classifier.variants.0",
        {"name": "champion", "alias": "champion", "version": "3", "weight": 90},
    ),
    "variant name with capitals": _with(
        "routing.models.brain-tumor-classifier.variants.0.name", "Champion"
    ),
    "unknown variant key": _with("routing.models.brain-tumor-classifier.variants.0.colour", "blue"),
    "shadow percent above 100": _with("routing.models.brain-tumor-segmenter.shadow.percent", 150),
    "error rate above 1": _with(
        "routing.models.brain-tumor-classifier.progressive.maxErrorRate", 2
    ),
    "resources with an unknown quantity": _with("gateway.resources.limits.cpu", "lots"),
    "misspelt affinity field": _with("triton.affinity", {"nodeAfinity": {}}),
    "affinity term of the wrong type": _with(
        "triton.affinity",
        {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": "all"}},
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_schema_rejects(case: str) -> None:
    chart = helm_python.Chart.load(CHART)
    with pytest.raises(helm_python.HelmError):
        chart.validate_schema(BAD_VALUES[case])
    report = helm_python.lint(CHART, BAD_VALUES[case], strict=True, kube_version="v1.30.0")
    assert report["errors"], case


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_values_schema_accepts_every_profile(profile: str) -> None:
    helm_python.Chart.load(CHART).validate_schema(profile_values(profile))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weight": 20}, "must sum to 100, got 110"),
        ({"name": "champion"}, "variant names must be unique"),
    ],
)
def test_chart_refuses_routing_splits_the_gateway_would_refuse(
    change: dict[str, Any], message: str
) -> None:
    values = profile_values("mesh")
    values["routing"]["models"]["brain-tumor-classifier"]["variants"][1].update(change)
    with pytest.raises(helm_python.HelmError, match=message):
        render(values)


# --- the validators themselves ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "mutate", "message"),
    [
        (
            "VirtualService",
            lambda d: d["spec"]["http"][0].update(retries={"atempts": 3}),
            "atempts",
        ),
        ("PeerAuthentication", lambda d: d["spec"]["mtls"].update(mode=7), "mode"),
        ("Deployment", lambda d: d["spec"].update(replica=2), "replica"),
        ("NetworkPolicy", lambda d: d["spec"]["ingress"][0]["ports"][0].update(port=[1]), "port"),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0].update(rulez=[]), "rulez"),
    ],
)
def test_validation_catches_unknown_fields_and_wrong_types(
    kind: str, mutate: Any, message: str
) -> None:
    doc = copy.deepcopy(find(render_profile("mesh"), kind)[0])
    mutate(doc)
    with pytest.raises(AssertionError, match=message):
        validate(doc)


def test_validation_fails_for_a_kind_without_any_schema() -> None:
    with pytest.raises(AssertionError, match="no schema"):
        validate({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_gpu_profile_monitor_triggers_retraining_through_github_with_a_secret_token() -> None:
    (monitor,) = find(render_profile("gpu"), "Deployment", "medops-monitor")
    c = monitor["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MEDOPS_MONITOR_TRIGGERS"] == '["github"]'
    assert env["MEDOPS_MONITOR_HOST"] == "0.0.0.0"
    assert c["envFrom"] == [{"secretRef": {"name": "medops-monitor-secrets"}}]
    assert not any("TOKEN" in name for name in env), "tokens come from the Secret only"


def _plain_env(deployment: dict[str, Any]) -> dict[str, str]:
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


@pytest.mark.parametrize("profile", ["kind-cpu", "gpu"])
def test_the_services_own_settings_accept_the_rendered_environment(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.gateway.settings import GatewaySettings
    from services.monitor.settings import MonitorSettings

    docs = render_profile(profile)
    (gateway,) = find(docs, "Deployment", "medops-gateway")
    for name, value in _plain_env(gateway).items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert settings.backend == "triton-grpc"
    assert settings.backend_url == "medops-triton:8001"
    assert settings.local_mode is False
    assert str(settings.keys_path) == "/etc/medops/api-keys/api-keys.json"
    assert str(settings.routing_file) == "/etc/medops/routing/routing.json"
    assert settings.tracking_uri == "http://medops-mlflow:5000"
    assert settings.routing_store_url is not None
    assert settings.routing_store_url.startswith("postgresql://")
    assert settings.models == [
        "brain-tumor-classifier",
        "brain-tumor-segmenter",
        "brain-tumor-type-classifier",
    ]
    assert settings.default_chain == "brain-tumor-two-stage"
    (monitor,) = find(docs, "Deployment", "medops-monitor")
    for name, value in _plain_env(monitor).items():
        monkeypatch.setenv(name, value)
    m = MonitorSettings()
    assert (m.host, m.port) == ("0.0.0.0", 8090)
    assert m.local_mode is False and m.auth_enabled is True
    assert m.keys_path == settings.keys_path  # one set of keys for both services
    assert m.store_url is not None and m.store_url.startswith("postgresql://")
    if profile == "gpu":
        assert m.triggers == ["github"]
        assert m.github_repository == "medops/medops"


def test_the_gateway_reads_the_rendered_routing_document(tmp_path: Any) -> None:
    from services.gateway.routing import RoutingConfig

    (cm,) = find(render_profile("mesh"), "ConfigMap", "medops-gateway-routing")
    path = tmp_path / "routing.json"
    path.write_text(cm["data"]["routing.json"])
    config = RoutingConfig.from_file(path)
    assert config.mode == "mesh"
    assert config.for_model("brain-tumor-classifier").strategy == "canary"


def test_the_served_models_and_their_routing_come_from_values(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model of another task joins by values alone: served, routed on a canary, and no
    default chain when the deployment has none."""
    from services.gateway.app import served_models
    from services.gateway.routing import RoutingConfig
    from services.gateway.settings import GatewaySettings

    values = profile_values("mesh")
    values.setdefault("gateway", {}).update(models=["polyp-segmenter"], defaultChain="")
    values["routing"]["models"] = {
        "polyp-segmenter": {
            "strategy": "canary",
            "variants": [
                {"name": "champion", "alias": "champion", "weight": 90},
                {"name": "canary", "alias": "challenger", "weight": 10},
            ],
        }
    }
    docs = render(values)
    (gateway,) = find(docs, "Deployment", "medops-gateway")
    for name, value in _plain_env(gateway).items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert settings.models == ["polyp-segmenter"] and not settings.default_chain
    (cm,) = find(docs, "ConfigMap", "medops-gateway-routing")
    path = tmp_path / "routing.json"
    path.write_text(cm["data"]["routing.json"])
    config = RoutingConfig.from_file(path, known_models=None)
    assert config.for_model("polyp-segmenter").strategy == "canary"
    assert served_models(settings, config, None, None) == ["polyp-segmenter"]


def test_gateway_and_monitor_share_a_prediction_log_in_the_bundled_postgresql() -> None:
    docs = render_profile("kind-cpu")
    url = "postgresql://mlflow:$(MEDOPS_PREDICTION_LOG_PASSWORD)@medops-postgresql:5432/predictions"
    for name, prefix in (
        ("medops-gateway", "MEDOPS_GATEWAY"),
        ("medops-monitor", "MEDOPS_MONITOR"),
    ):
        (deployment,) = find(docs, "Deployment", name)
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        names = [e["name"] for e in env]
        assert _plain_env(deployment)[f"{prefix}_STORE_URL"] == url
        # Kubernetes expands $(VAR) only from variables defined earlier
        assert names.index("MEDOPS_PREDICTION_LOG_PASSWORD") < names.index(f"{prefix}_STORE_URL")
    # the gateway replicas share their routing in the same database; the monitor has none
    (gateway,) = find(docs, "Deployment", "medops-gateway")
    assert _plain_env(gateway)["MEDOPS_GATEWAY_ROUTING_STORE_URL"] == url
    (monitor,) = find(docs, "Deployment", "medops-monitor")
    assert "MEDOPS_MONITOR_ROUTING_STORE_URL" not in _plain_env(monitor)
    (init,) = find(docs, "ConfigMap", "medops-postgresql-init")
    assert init["data"]["prediction-log.sql"].strip() == "CREATE DATABASE predictions OWNER mlflow;"
    (policy,) = find(docs, "NetworkPolicy", "medops-postgresql")
    allowed = {
        f["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for f in policy["spec"]["ingress"][0]["from"]
    }
    assert allowed == {"mlflow", "gateway", "monitor"}


def test_external_prediction_log_url_comes_from_a_secret() -> None:
    (monitor,) = find(render_profile("external-mlflow"), "Deployment", "medops-monitor")
    env = {e["name"]: e for e in monitor["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MEDOPS_MONITOR_STORE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "medops-prediction-log",
        "key": "url",
    }


def test_gateway_replicas_share_routing_only_through_a_database_pods_can_share() -> None:
    (gateway,) = find(render_profile("external-mlflow"), "Deployment", "medops-gateway")
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MEDOPS_GATEWAY_ROUTING_STORE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "medops-prediction-log",
        "key": "url",
    }
    values = profile_values("kind-cpu")
    values["predictionLog"] = {"source": "local"}
    (single,) = find(render(values), "Deployment", "medops-gateway")
    names = {e["name"] for e in single["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MEDOPS_GATEWAY_ROUTING_STORE_URL" not in names


def test_bundled_prediction_log_without_postgresql_is_refused() -> None:
    values = profile_values("external-mlflow")
    values["predictionLog"]["source"] = "postgresql"
    with pytest.raises(helm_python.HelmError, match="needs the bundled PostgreSQL"):
        render(values)


def test_the_rendered_container_arguments_are_the_services_own_commands() -> None:
    from services.gateway.cli import serve
    from services.monitor.cli import monitor

    docs = render_profile("default")
    for name, command in (("medops-gateway", serve), ("medops-monitor", monitor)):
        (deployment,) = find(docs, "Deployment", name)
        subcommand, *options = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert subcommand == command.name
        ctx = command.make_context(subcommand, list(options))  # raises on an unknown option
        if name == "medops-gateway":
            assert (ctx.params["host"], ctx.params["port"], ctx.params["grpc_port"]) == (
                "0.0.0.0",
                8080,
                8081,
            )
