"""Fixtures of the monitoring tests: loopback servers, real slices, a built reference."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from monitor_support import MODEL, SIZE, LggSplit, Receiver, free_port, read_lgg

from medops.monitoring.drift import CalibrationSet, Reference, build_reference, load_reference
from medops.transforms import preprocess_slice


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


@pytest.fixture(scope="session")
def lgg_split(lgg_dir: Path) -> LggSplit:
    """Every 2nd slice of: reference, half the patients (every institution); calibration, a
    quarter (the validation split's role); held out, the last quarter."""
    patients = sorted(p for p in lgg_dir.iterdir() if p.is_dir())
    assert len(patients) >= 20, f"expected the LGG patients under {lgg_dir}"
    ref, groups = read_lgg([p for i, p in enumerate(patients) if i % 4 < 2], step=2)
    cal, cal_groups = read_lgg([p for i, p in enumerate(patients) if i % 4 == 2], step=2)
    held, held_groups = read_lgg([p for i, p in enumerate(patients) if i % 4 == 3], step=2)
    return LggSplit(ref, groups, held, cal, cal_groups, held_groups)


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
        calibration=CalibrationSet(
            [preprocess_slice(im, SIZE) for im in lgg_split.calibration_raw],
            groups=lgg_split.calibration_groups,
            original_shapes=[im.shape for im in lgg_split.calibration_raw],
        ),
    )
    return load_reference(MODEL, "1", home=home)


@pytest.fixture(scope="session")
def heldout_features(lgg_reference: Reference, lgg_split: LggSplit) -> list[dict[str, float]]:
    """What the gateway would log for 100 held-out LGG slices of every held-out patient (same
    distribution; the window the alarm is calibrated for)."""
    return [
        lgg_reference.features(preprocess_slice(im, SIZE), original_shape=im.shape)
        for im in lgg_split.heldout_raw[:: max(1, len(lgg_split.heldout_raw) // 100)][:100]
    ]
