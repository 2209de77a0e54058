"""Helpers shared by the gateway tests (imported by name: test folders are not packages)."""

from __future__ import annotations

import json
from pathlib import Path

from services.gateway.settings import GatewaySettings

SIZE = 64
CLASSIFIER_THRESHOLD = 0.4


def make_settings(home: Path, files: dict[str, Path], **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "home": home,
        "model_files": files,
        "poll_seconds": 0,
        "onnx_threads": 1,
        "deid_key": "test-deid-key",
    }
    values.update(overrides)
    return GatewaySettings(**values)  # type: ignore[arg-type]


def read_keys(home: Path) -> dict[str, str]:
    keys: dict[str, str] = json.loads((home / "credentials.json").read_text())
    return keys
