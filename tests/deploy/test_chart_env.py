"""Every ``MEDOPS_*`` environment variable the chart renders, in any profile, is read by a
settings class (or is listed below with what reads it), and the rendered value is valid for it:
a misspelt or stale name would otherwise be ignored without a word (``extra="ignore"``)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from deploy_support import PROFILES, containers, pod_specs, render_profile
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, SettingsError

from medops.settings import MedopsSettings
from services.dicom_edge.settings import DicomEdgeSettings
from services.gateway.settings import GatewaySettings
from services.monitor.settings import MonitorSettings

SETTINGS: tuple[type[BaseSettings], ...] = (
    MedopsSettings,
    GatewaySettings,
    MonitorSettings,
    DicomEdgeSettings,
)

READ_ELSEWHERE = {
    "MEDOPS_PREDICTION_LOG_PASSWORD": "Kubernetes expands it into the $(...) of the rendered "
    "MEDOPS_*_STORE_URL; it stays out of the URL in the chart so it can come from a Secret",
}

PROBE = "not-a-valid-value-for-any-typed-setting"


def _rendered_env() -> dict[str, set[str | None]]:
    """Each MEDOPS_* name in any profile's containers -> its literal values (None: valueFrom)."""
    found: dict[str, set[str | None]] = {}
    for profile in ["default", *PROFILES]:
        for _, spec in pod_specs(render_profile(profile)):
            for container in containers(spec):
                for entry in container.get("env", []):
                    if entry["name"].startswith("MEDOPS_"):
                        found.setdefault(entry["name"], set()).add(entry.get("value"))
    return found


RENDERED = _rendered_env()


@pytest.fixture(autouse=True)
def _no_medops_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MEDOPS_"):
            monkeypatch.delenv(name)


def _dump(cls: type[BaseSettings]) -> dict[str, Any]:
    settings: BaseModel = cls()
    return settings.model_dump()


def _readers(name: str, monkeypatch: pytest.MonkeyPatch) -> list[type[BaseSettings]]:
    """The settings classes that read ``name``: setting it changes a field, or is refused."""
    out = []
    for cls in SETTINGS:
        baseline = _dump(cls)
        with monkeypatch.context() as env:
            env.setenv(name, PROBE)
            try:
                changed = _dump(cls) != baseline
            except (ValidationError, SettingsError):
                changed = True
        if changed:
            out.append(cls)
    return out


def test_the_chart_renders_the_variables_this_check_is_about() -> None:
    assert {"MEDOPS_HOME", "MEDOPS_GATEWAY_BACKEND", "MEDOPS_MONITOR_STORE_URL"} <= set(RENDERED)


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_every_medops_variable_the_chart_renders_is_read_by_a_setting_with_a_valid_value(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers = _readers(name, monkeypatch)
    if name in READ_ELSEWHERE:
        assert not readers, f"{name} is read by {readers}: drop it from READ_ELSEWHERE"
        return
    assert readers, f"the chart sets {name} but no settings class reads it"
    for value in RENDERED[name] - {None}:
        monkeypatch.setenv(name, value)
        for cls in readers:
            cls()  # the rendered value parses


def test_the_probe_tells_a_read_name_from_an_ignored_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _readers("MEDOPS_GATEWAY_BACKEND", monkeypatch) == [GatewaySettings]
    assert _readers("MEDOPS_HOME", monkeypatch) == list(SETTINGS)
    assert _readers("MEDOPS_GATEWAY_NO_SUCH_SETTING", monkeypatch) == []


def test_second_names_are_read_through_alias_choices_and_the_own_name_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDOPS_HOME", "/srv/medops")
    monkeypatch.setenv("MEDOPS_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MEDOPS_GATEWAY_STORE_URL", "postgresql://db/predictions")
    gateway, monitor = GatewaySettings(), MonitorSettings()
    assert str(gateway.home) == str(monitor.home) == "/srv/medops"
    assert gateway.mlflow_uri == "http://mlflow:5000"
    assert gateway.store_url == "postgresql://db/predictions"
    monkeypatch.setenv("MEDOPS_GATEWAY_HOME", "/srv/gateway")
    monkeypatch.setenv("MEDOPS_MONITOR_HOME", "/srv/monitor")
    assert str(GatewaySettings().home) == "/srv/gateway"
    assert str(MonitorSettings().home) == "/srv/monitor"
    # the field name still works for callers that build settings in code
    assert str(GatewaySettings(home="/elsewhere").home) == "/elsewhere"  # type: ignore[arg-type]
