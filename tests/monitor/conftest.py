"""Fixtures of the monitoring tests: loopback servers, real slices, a built reference."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from medops.monitoring.drift import Reference, build_reference, load_reference
from medops.transforms import preprocess_slice

SIZE = 128
MODEL = "brain-tumor-classifier"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every POST."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    rec = Receiver(url=f"http://127.0.0.1:{port}/hook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            rec.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
            rec.headers.append(dict(self.headers.items()))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


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


@pytest.fixture(scope="session")
def lgg_split(lgg_dir: Path) -> LggSplit:
    """Reference: 30 patients (every institution), every 2nd slice; held out: 10 patients."""
    patients = sorted(p for p in lgg_dir.iterdir() if p.is_dir())
    assert len(patients) >= 20, f"expected the LGG patients under {lgg_dir}"
    ref, groups = read_lgg([p for i, p in enumerate(patients) if i % 4 != 3], step=2)
    held, _ = read_lgg([p for i, p in enumerate(patients) if i % 4 == 3], step=2)
    return LggSplit(ref, groups, held)


@pytest.fixture(scope="session")
def lgg_reference(lgg_split: LggSplit, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The classifier's reference built from real LGG slices, in a session home."""
    home = tmp_path_factory.mktemp("reference-home")
    build_reference(
        [preprocess_slice(im, SIZE) for im in lgg_split.reference_raw],
        model=MODEL,
        model_version="1",
        home=home,
        groups=lgg_split.groups,
        original_shapes=[im.shape for im in lgg_split.reference_raw],
    )
    return load_reference(MODEL, "1", home=home)


# -- PostgreSQL ----------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "initdb").exists():
            return root
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL on 127.0.0.1 (Debian's package), stopped at the end of the session."""
    bindir = _pg_bin()
    assert bindir is not None, "PostgreSQL binaries not found: run infra/install-system-deps.sh"
    # not under pytest's private temp root: the postgres user must reach it
    base = Path(tempfile.mkdtemp(prefix="medops-pg-"))
    data = base / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(base, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "medops",
         "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"),
         "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {base}", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield f"postgresql://medops@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)
