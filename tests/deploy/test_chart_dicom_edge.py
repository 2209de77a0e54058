"""The chart's DICOM edge: a Deployment with its spool on a volume, a Service for DIMSE, a
NetworkPolicy that admits only the configured peers to DIMSE, values checked by the schema."""

from __future__ import annotations

import copy
from typing import Any

import helm_python
import pytest
from deploy_support import CHART, find, profile_values, render, render_profile, validate


def _env(deployment: dict[str, Any]) -> dict[str, Any]:
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_the_edge_is_off_by_default_and_renders_whole_when_enabled() -> None:
    assert find(render_profile("default"), "Deployment", "medops-dicom-edge") == []
    docs = render_profile("dicom-edge")
    (deployment,) = find(docs, "Deployment", "medops-dicom-edge")
    for doc in (deployment, *find(docs, "PersistentVolumeClaim"), *find(docs, "Service")):
        validate(doc)
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (claim,) = [v for v in pod["volumes"] if v["name"] == "spool"]
    assert claim["persistentVolumeClaim"]["claimName"] == "medops-dicom-edge-spool"
    (pvc,) = find(docs, "PersistentVolumeClaim", "medops-dicom-edge-spool")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    env = _env(deployment)
    assert mounts["spool"] == env["MEDOPS_DICOM_SPOOL_DIR"]
    assert env["MEDOPS_DICOM_ENDPOINT_API_KEY"] == {
        "secretKeyRef": {"name": "medops-dicom-edge", "key": "endpoint-api-key"}
    }
    (service,) = find(docs, "Service", "medops-dicom-edge")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"dimse": 11112, "http": 8070}


def test_only_the_configured_peers_reach_the_dimse_port() -> None:
    (policy,) = find(render_profile("dicom-edge"), "NetworkPolicy", "medops-dicom-edge")
    dimse, http = policy["spec"]["ingress"]
    assert dimse["ports"] == [{"port": 11112, "protocol": "TCP"}]
    assert dimse["from"] == [
        {"ipBlock": {"cidr": "10.0.0.20/32"}},
        {"ipBlock": {"cidr": "10.0.0.21/32"}},
    ]
    assert http["ports"] == [{"port": 8070, "protocol": "TCP"}]
    assert {"ipBlock": {"cidr": "10.0.0.20/32"}} in http["from"]  # STOW-RS from the PACS
    # no peers: no DIMSE rule at all (an empty `from` would admit everyone)
    values = copy.deepcopy(profile_values("dicom-edge"))
    values["dicomEdge"]["peers"] = []
    (closed,) = find(render(values), "NetworkPolicy", "medops-dicom-edge")
    assert [r["ports"][0]["port"] for r in closed["spec"]["ingress"]] == [8070]


def test_the_edge_writes_the_prediction_log_the_monitor_reads_and_may_reach_its_database() -> None:
    docs = render_profile("dicom-edge")
    (deployment,) = find(docs, "Deployment", "medops-dicom-edge")
    (monitor,) = find(docs, "Deployment", "medops-monitor")
    edge_url = _env(deployment)["MEDOPS_DICOM_STORE_URL"]
    assert edge_url == _env(monitor)["MEDOPS_MONITOR_STORE_URL"]
    (policy,) = find(docs, "NetworkPolicy", "medops-postgresql")
    clients = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in policy["spec"]["ingress"][0]["from"]
    }
    assert "dicom-edge" in clients


def test_the_edges_own_settings_accept_the_rendered_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.dicom_edge.settings import DicomEdgeSettings

    (deployment,) = find(render_profile("dicom-edge"), "Deployment", "medops-dicom-edge")
    for name, value in _env(deployment).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    s = DicomEdgeSettings()
    assert (s.host, s.port, s.http_port, s.ae_title) == ("0.0.0.0", 11112, 8070, "MEDOPS")
    assert s.allowed_calling_aes == ["MRI_SCANNER", "PACS"]
    assert s.endpoint_url == "http://medops-gateway:8080"
    assert s.stow_url == "http://pacs.hospital.svc.cluster.local:8042/dicom-web"
    assert s.local_mode is False and str(s.keys_path) == "/etc/medops/api-keys/api-keys.json"
    assert s.store_url is not None and s.store_url.startswith("postgresql://")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"allowedCallingAEs": []}, "no AE title allowed"),
        ({"existingSecret": ""}, "no secret for the gateway key"),
        ({"stowUrl": ""}, "nowhere to send results"),
        ({"aeTitle": "A" * 17}, "AE title longer than 16"),
        ({"peers": [{"ipBlock": {"cidr": "pacs"}}]}, "not a CIDR"),
        ({"spool": "/data"}, "unknown field"),
    ],
)
def test_the_schema_refuses_an_edge_that_could_not_work(change: dict[str, Any], why: str) -> None:
    values = copy.deepcopy(profile_values("dicom-edge"))
    values["dicomEdge"].update(change)
    with pytest.raises(helm_python.HelmError):
        helm_python.Chart.load(CHART).validate_schema(values)
