"""Shared fixtures: the real data beside the project, and a private MEDOPS_HOME per test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEDOPS_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets; their absence is a failure, never a skip."""
    lgg = DATA_DIR / "lgg-mri-segmentation"
    assert lgg.is_dir(), f"real data not found at {DATA_DIR} (set MEDOPS_DATA_DIR)"
    return DATA_DIR


@pytest.fixture(scope="session")
def lgg_dir(data_dir: Path) -> Path:
    return data_dir / "lgg-mri-segmentation"


@pytest.fixture(scope="session")
def fourclass_dir(data_dir: Path) -> Path:
    return data_dir / "brain-tumor-mri-4class" / "Training"


@pytest.fixture
def medops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "medops-home"
    monkeypatch.setenv("MEDOPS_HOME", str(home))
    return home


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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
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
