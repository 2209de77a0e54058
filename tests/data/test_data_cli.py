"""``medops data ingest|validate|describe`` through the real command group."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from click.testing import CliRunner
from data_constants import LggCopy

from medops.cli import cli


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["data", *args], catch_exceptions=False)
    return result.exit_code, result.stdout  # progress bars go to stderr


def test_describe_lgg_prints_patients_slices_tumour_slices_shape_and_dtype(
    lgg_dir: Path, medops_home: Path
) -> None:
    code, out = _run("describe", str(lgg_dir))
    assert code == 0, out
    assert "patients  40\n" in out
    assert "slices    1288\n" in out
    assert "tumour-positive slices  484 (37.6%)" in out
    assert "image     256x256x3 uint8 (1288 slices)" in out
    assert (medops_home / "datasets" / "lgg-mri-segmentation").is_dir()


def test_describe_fourclass_prints_the_count_of_each_class(
    fourclass_dir: Path, medops_home: Path
) -> None:
    code, out = _run("describe", str(fourclass_dir))
    assert code == 0, out
    assert "classes   glioma 500, meningioma 500, notumor 500, pituitary 500" in out
    assert "224x224x3 uint8 (1107 slices)" in out and "224x224x1 uint8 (893 slices)" in out


def test_ingest_prints_name_layout_version_and_manifest_path(
    lgg_copy: LggCopy, medops_home: Path
) -> None:
    code, out = _run("ingest", str(lgg_copy(patients=1, slices=[1, 2])), "--name", "tiny")
    assert code == 0, out
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["name"] == "tiny" and lines["layout"] == "lgg (segmentation)"
    manifest = Path(lines["manifest"])
    assert (
        manifest == medops_home.resolve() / "datasets" / "tiny" / lines["version"] / "manifest.json"
    )
    assert manifest.is_file()
    code, again = _run("describe", str(manifest))  # a saved manifest is described as is
    assert code == 0 and f"version   {lines['version']}" in again


def test_validate_exits_1_and_names_the_broken_file(lgg_copy: LggCopy, medops_home: Path) -> None:
    src = lgg_copy(patients=2, slices=[1, 2])
    code, out = _run("validate", str(src))
    assert code == 0, out
    assert "result   OK: 0 error(s), 0 warning(s)" in out and "train " in out
    bad = next(src.glob("*/*_1_mask.tif"))
    tifffile.imwrite(bad, np.full((64, 64), 255, np.uint8))
    code, out = _run("validate", str(src))
    assert code == 1
    assert "FAILED" in out and f"size-mismatch: mask {bad.parent.name}/{bad.name}" in out


def test_installed_command_reports_a_bad_path_as_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "medops.cli", "data", "ingest", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        env={"MEDOPS_HOME": str(tmp_path / "home"), "PATH": ""},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such dataset folder"
