"""Helpers of the monitoring tests: free ports, a webhook receiver type, real slices, artefacts."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile
from PIL import Image as PILImage

from medops.service.readiness import wait_until_ready

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from services.monitor import MonitorSettings

SIZE = 256
MODEL = "brain-tumor-classifier"


def monitor_keys(settings: MonitorSettings) -> dict[str, str]:
    """The plain keys local mode wrote for the monitor, by role."""
    keys: dict[str, str] = json.loads(settings.credentials_path.read_text())
    return keys


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@contextmanager
def serve(
    app: FastAPI, settings: MonitorSettings, role: str | None = "admin"
) -> Iterator[TestClient]:
    """The monitor app in process, every call carrying a key of ``role`` (``None``: no key)."""
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        if role is not None:
            client.headers.update(bearer(monitor_keys(settings)[role]))
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Until ``url`` answers at all (any status below 500)."""
    wait_until_ready(url, timeout_s=timeout, ready=lambda status: status < 500)


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every POST."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


# -- real slices ---------------------------------------------------------------------------


def read_lgg(patients: list[Path], step: int = 1) -> tuple[list[np.ndarray], list[int]]:
    """Raw (3, H, W) uint8 slices (every ``step``-th) and a patient index per slice."""
    images, groups = [], []
    for gi, patient in enumerate(patients):
        slices = sorted(f for f in patient.glob("*.tif") if not f.name.endswith("_mask.tif"))
        for f in slices[::step]:
            images.append(np.moveaxis(tifffile.imread(f), -1, 0))
            groups.append(gi)
    return images, groups


def read_fourclass(fourclass_dir: Path, per_class: int) -> list[np.ndarray]:
    out = []
    for cls in ("glioma", "meningioma", "notumor", "pituitary"):
        for f in sorted((fourclass_dir / cls).glob("*.jpg"))[:per_class]:
            out.append(np.moveaxis(np.asarray(PILImage.open(f).convert("RGB")), -1, 0))
    return out


def bias_field(raw: np.ndarray) -> np.ndarray:
    """A strong multiplicative ramp, 0.4 to 1.6 across the field of view."""
    _, h, w = raw.shape
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = 0.4 + 1.2 * (0.6 * xx / (w - 1) + 0.4 * yy / (h - 1))
    return np.clip(raw * ramp[None], 0, 255).astype(np.uint8)


def noisy(raw: np.ndarray, rng: np.random.Generator, sigma: float = 20.0) -> np.ndarray:
    return np.clip(raw + rng.normal(0.0, sigma, raw.shape), 0, 255).astype(np.uint8)


@dataclass
class LggSplit:
    reference_raw: list[np.ndarray]
    groups: list[int]
    heldout_raw: list[np.ndarray]
    calibration_raw: list[np.ndarray]
    calibration_groups: list[int]
    heldout_groups: list[int] = field(default_factory=list)
    """One patient index per held-out slice, in study order."""
