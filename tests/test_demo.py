"""The main job end to end on the tiny preset: what `make demo` runs, in minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_demo_trains_serves_routes_and_monitors_on_the_real_data(
    data_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "MEDOPS_HOME": str(home), "MEDOPS_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "medops.cli", "demo", "--preset", "tiny", "--requests", "40"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "patients  40" in out and "slices    1288" in out
    assert re.search(r"brain-tumor-classifier v1 \[.*champion", out)
    assert re.search(r"slice-level decision accuracy [0-9.]+ over 188 slices", out)
    assert "DICOM SEG" in out
    assert re.search(r"brain-tumor-classifier v2 \[.*challenger", out)
    split = re.search(r"40 requests: (.*)", out)
    assert split and "challenger" in split.group(1) and "champion" in split.group(1)
    assert "drift share" in out
    # both services shut down cleanly and their processes are gone
    for log in ("gateway.log", "monitor.log"):
        finished = re.search(
            r"Finished server process \[(\d+)\]", (home / "logs" / log).read_text()
        )
        assert finished, log
        assert not Path(f"/proc/{finished.group(1)}").exists()
    assert (home / "credentials.json").stat().st_mode & 0o777 == 0o600
