"""API keys on first start, hashed storage, and log lines without PHI or secrets."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import httpx
import pytest
import tifffile
from gateway_harness import GatewayThread
from gateway_support import make_settings

from medops.service.auth import Authenticator, hash_key
from medops.service.logs import JsonFormatter
from pipelines.brain import CLASSIFIER


def test_the_first_local_start_writes_a_key_per_role_privately_and_keeps_only_hashes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    with caplog.at_level(logging.WARNING, logger="medops.service.auth"):
        auth = Authenticator.local(home / "gateway" / "api-keys.json", home / "credentials.json")
    credentials = home / "credentials.json"
    keys = json.loads(credentials.read_text())
    assert set(keys) == {"client", "reviewer", "admin"} and len(set(keys.values())) == 3
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    stored = (home / "gateway" / "api-keys.json").read_text()
    assert not any(key in stored for key in keys.values())
    assert all(hash_key(key) in stored for key in keys.values())
    assert auth.check(f"Bearer {keys['admin']}", "admin") == "admin"
    assert auth.check(f"Bearer {keys['client']}", "client") == "client"
    # The log says where the keys are, never the keys.
    logged = " ".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert str(credentials.resolve()) in logged
    assert not any(key in logged for key in keys.values())
    # A second start reuses the stored hashes and leaves the credentials alone.
    again = Authenticator.local(home / "gateway" / "api-keys.json", home / "credentials.json")
    assert again.check(f"Bearer {keys['client']}", "client") == "client"
    assert json.loads(credentials.read_text()) == keys


def test_log_lines_are_json_with_the_request_id_and_never_carry_upload_names_or_keys(
    tiny_models: dict[str, Path],
    gateway_home: Path,
    client_headers: dict[str, str],
    lgg_patient: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tif = next(p for p in sorted(lgg_patient.glob("*.tif")) if not p.name.endswith("_mask.tif"))
    patient_name = lgg_patient.name  # TCGA_..._<date>: an identifier of the source study
    with (
        GatewayThread(make_settings(gateway_home, tiny_models)) as gw,
        caplog.at_level(logging.DEBUG),
    ):
        r = httpx.post(
            f"http://{gw.url}/v1/analyze",
            files={"file": (f"{patient_name}_DOE_JANE.tif", tif.read_bytes(), "image/tiff")},
            headers={**client_headers, "x-request-id": "req-abc-123"},
            timeout=60,
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-abc-123"
        bad = httpx.post(
            f"http://{gw.url}/v1/analyze",
            files={
                "file": (
                    f"{patient_name}_DOE_JANE.tif",
                    tifffile.imread(tif).tobytes()[:100],
                    "image/tiff",
                )
            },
            headers=client_headers,
        )
        assert bad.status_code in (400, 415)
    formatter = JsonFormatter()
    lines = [formatter.format(rec) for rec in caplog.records if rec.name.startswith("medops")]
    parsed = [json.loads(line) for line in lines]
    access = [p for p in parsed if p.get("message") == "request" and p.get("path") == "/v1/analyze"]
    assert access and access[0]["request_id"] == "req-abc-123" and access[0]["status"] == 200
    assert any(p.get("model") == CLASSIFIER for p in access)
    everything = "\n".join(lines)
    assert "DOE_JANE" not in everything and patient_name not in everything
    assert client_headers["authorization"].split()[1] not in everything
