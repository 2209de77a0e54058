"""The main job: end to end on the tiny preset (what `make demo` runs, in minutes); a gate that
keeps models out never fails it; the console shows headings and progress, the logs keep the rest."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from medops.data import ingest, split_dataset
from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import Registry, promotion_gate
from medops.settings import MedopsSettings
from pipelines import demo as demo_module
from pipelines.brain import CLASSIFIER, SEGMENTER
from pipelines.local import LocalRun
from pipelines.progress import (
    ConsoleRelay,
    ProgressBars,
    epoch_reporter,
    parse_progress,
    quiet_console,
)
from pipelines.report import read_gate


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
    manifest = ingest(data_dir / "lgg-mri-segmentation", home)
    test_patients = set(split_dataset(manifest, seed=0).test)
    held_out = sum(1 for s in manifest.samples if s.patient_id in test_patients)
    assert re.search(rf"slice-level decision accuracy [0-9.]+ over {held_out} slices", out)
    assert "DICOM SEG" in out
    assert re.search(r"brain-tumor-classifier v2 \[.*challenger", out)
    split = re.search(r"40 requests: (.*)", out)
    assert split and "challenger" in split.group(1) and "champion" in split.group(1)
    assert "drift share" in out
    # kfp's executor dumps went to the log, the table closes the run
    assert "Executing task" not in out and "executor_input" not in out
    assert "executor_input" in (home / "logs" / "pipeline.log").read_text()
    assert "== Summary" in out and "pipeline.log" in out.split("== Summary")[1]
    # both services shut down cleanly and their processes are gone
    for log in ("gateway.log", "monitor.log"):
        finished = re.search(
            r"Finished server process \[(\d+)\]", (home / "logs" / log).read_text()
        )
        assert finished, log
        assert not Path(f"/proc/{finished.group(1)}").exists()
    assert (home / "credentials.json").stat().st_mode & 0o777 == 0o600


# ----------------------------------------------------------------------------- the gate's words


def _register(
    registry: Registry,
    name: str,
    onnx: Path,
    metrics: dict[str, float],
    *,
    minimums: dict[str, float],
    champion: dict[str, float] | None = None,
    tolerance: dict[str, float] | float = 0.0,
    move: bool = True,
) -> str:
    """A version registered and gated as the pipeline does it (``record_gate``)."""
    version = registry.log_and_register(
        name,
        onnx_path=onnx,
        dataset_version="test",
        params={},
        metrics={f"test_{k}": v for k, v in metrics.items()},
        git_commit="test",
        aliases=(CHALLENGER,),
    ).version
    decision = promotion_gate(metrics, champion, minimums=minimums, tolerance=tolerance)
    decision.evidence["promoted_by"] = "gate" if move else "live canary"
    registry.record_gate(name, version, decision, move_champion=move)
    return version


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gateway_harness import write_tiny_model

    folder = tmp_path_factory.mktemp("onnx")
    return {
        CLASSIFIER: write_tiny_model(CLASSIFIER, folder / "classifier.onnx", size=64),
        SEGMENTER: write_tiny_model(SEGMENTER, folder / "segmenter.onnx", size=64, seed=1),
    }


def test_the_recorded_verdict_names_the_metric_its_floor_and_its_value(
    tmp_path: Path, onnx_files: dict[str, Path]
) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    kept_out = _register(
        registry,
        SEGMENTER,
        onnx_files[SEGMENTER],
        {"dice_patient_mean": 0.512},
        minimums={"dice_patient_mean": 0.6},
    )
    verdict = read_gate(registry, SEGMENTER, kept_out)
    assert verdict.recorded and not verdict.promote
    assert verdict.sentence() == "kept out: dice_patient_mean = 0.512, below the floor 0.6"
    assert verdict.short() == "kept out: dice_patient_mean 0.512 < 0.6"
    assert registry.get_alias(SEGMENTER, CHAMPION) is None

    v1 = _register(
        registry,
        CLASSIFIER,
        onnx_files[CLASSIFIER],
        {"auc": 0.9, "ece": 0.05},
        minimums={"auc": 0.85, "ece": 0.1},
    )
    assert read_gate(registry, CLASSIFIER, v1).sentence() == "passed"
    worse = _register(
        registry,
        CLASSIFIER,
        onnx_files[CLASSIFIER],
        {"auc": 0.87, "ece": 0.14},
        minimums={"auc": 0.85, "ece": 0.1},
        champion={"auc": 0.9, "ece": 0.05},
        tolerance={"auc": 0.01},
    )
    assert read_gate(registry, CLASSIFIER, worse).sentence() == (
        "kept out: ece = 0.140, above the ceiling 0.1; "
        "auc = 0.870, worse than the champion's 0.900 by more than 0.01"
    )
    canary = _register(
        registry,
        CLASSIFIER,
        onnx_files[CLASSIFIER],
        {"auc": 0.91, "ece": 0.05},
        minimums={"auc": 0.85},
        move=False,
    )
    assert read_gate(registry, CLASSIFIER, canary).short() == "passed (canary decides)"
    assert registry.get_alias(CLASSIFIER, CHAMPION) == v1


# ----------------------------------------------------------------------------- the console


def test_progress_lines_become_one_line_per_epoch_and_the_rest_goes_to_the_log() -> None:
    console, log = io.StringIO(), io.StringIO()
    relay = ConsoleRelay(log, ProgressBars(console))
    report = epoch_reporter("classifier", 3, stream=relay)
    relay.write("12:00:00.000 - INFO - Executing task \x1b[96m'train'\x1b[0m\n")
    relay.write("    [KFP Executor INFO]: Got executor_input:\n    {\n")
    report(1, {"epoch": 1.0, "train_loss": 0.5, "val_loss": 0.6, "val_auc": 0.7, "lr": 0.001})
    relay.write("    half a ")  # kfp writes its indentation and the line separately
    relay.write("line\n")
    report(2, {"epoch": 2.0, "train_loss": 0.4, "val_auc": 0.75})
    assert console.getvalue().splitlines() == [
        "  train classifier  epoch 1/3  loss 0.500  val_auc 0.700",
        "  train classifier  epoch 2/3  loss 0.400  val_auc 0.750",
    ]
    assert "Got executor_input" in log.getvalue() and "half a line" in log.getvalue()
    assert "medops-progress" in log.getvalue()
    assert relay.tail[-1] == "half a line"
    assert relay.tail[0] == "12:00:00.000 - INFO - Executing task 'train'"


def test_each_candidate_network_of_a_run_is_named_on_its_own_line() -> None:
    console = io.StringIO()
    report = epoch_reporter(
        "classifier", 2, stream=ConsoleRelay(io.StringIO(), ProgressBars(console))
    )
    for candidate in (1, 2):
        report(1, {"train_loss": 0.5, "candidate": candidate, "candidates": 2})
    assert console.getvalue().splitlines() == [
        "  train classifier (candidate 1 of 2)  epoch 1/2  loss 0.500",
        "  train classifier (candidate 2 of 2)  epoch 1/2  loss 0.500",
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_each_training_run_gets_one_bar_with_its_loss_and_metric() -> None:
    terminal = _Terminal()
    bars = ProgressBars(terminal)
    for line in (
        'medops-progress {"run": "classifier", "epoch": 1, "epochs": 3, "metrics": '
        '{"train_loss": 0.5, "val_auc": 0.7}}',
        'medops-progress {"run": "classifier", "epoch": 2, "epochs": 3, "metrics": '
        '{"train_loss": 0.4, "val_auc": 0.8}}',
        'medops-progress {"run": "segmenter", "epoch": 1, "epochs": 2, "metrics": {}}',
        'medops-progress {"run": "segmenter", "epoch": "two"}',  # ignored, never raises
    ):
        event = parse_progress(line)
        if event is not None:
            bars.update(event)
    bars.close()
    shown = terminal.getvalue()
    assert (
        "train classifier:  67%" in shown
        and "2/3" in shown
        and "loss 0.400  val_auc 0.800" in shown
    )
    assert "train segmenter:  50%" in shown and "1/2" in shown
    assert shown.count("\n") == 2  # one finished line per bar


def test_a_real_kfp_local_run_shows_only_progress_and_logs_the_executor_dumps(
    tmp_path: Path,
) -> None:
    from demo_support import noisy_pipeline
    from kfp import local

    noisy = noisy_pipeline()
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "runs"),
        raise_on_error=True,
    )
    console, log_path = io.StringIO(), tmp_path / "logs" / "pipeline.log"
    with quiet_console(log_path, console):
        noisy(fail=False)
    assert console.getvalue().splitlines() == [
        "  train segmenter  epoch 1/2  loss 1.000  val_dice 0.300",
        "  train segmenter  epoch 2/2  loss 0.500  val_dice 0.600",
    ]
    logged = log_path.read_text()
    assert "Executing task" in logged and "executor_input" in logged
    assert "a big blob of component output" in logged

    console = io.StringIO()
    with pytest.raises(RuntimeError), quiet_console(log_path, console) as relay:
        noisy(fail=True)
    assert any("the reason it failed" in line for line in relay.tail)
    assert not any("Executing task" in line for line in console.getvalue().splitlines())


# ----------------------------------------------------------------------------- gate verdicts


def _fake_pipeline(onnx: dict[str, Path], outcome: dict[str, dict[str, float]]) -> Any:
    """``run_local`` stand-in: registers and gates each model as the fast preset would."""
    floors = {CLASSIFIER: {"auc": 0.85}, SEGMENTER: {"dice_patient_mean": 0.6}}

    def run(preset: str, *, tracking_uri: str, home: Path, **_: Any) -> LocalRun:
        registry = Registry(tracking_uri)
        for name, metrics in outcome.items():
            _register(registry, name, onnx[name], metrics, minimums=floors[name])
        log_path = home / "logs" / "pipeline.log"
        log_path.write_text("kfp output\n")
        return LocalRun(preset=preset, seconds=1.0, published=[], log_path=log_path)

    return run


@pytest.mark.integration
def test_a_gate_that_keeps_every_model_out_ends_the_demo_cleanly_with_a_summary(
    data_dir: Path, tmp_path: Path, onnx_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = {CLASSIFIER: {"auc": 0.61}, SEGMENTER: {"dice_patient_mean": 0.42}}
    monkeypatch.setattr(demo_module, "run_local", _fake_pipeline(onnx_files, outcome))
    home = tmp_path / "home"
    settings = MedopsSettings(home=home, data_dir=data_dir)
    result = CliRunner().invoke(demo_module.demo, ["--preset", "fast"], obj=settings)
    out = result.output
    assert result.exit_code == 0, out + repr(result.exception)
    assert "promotion gate: kept out: auc = 0.610, below the floor 0.85" in out
    assert "promotion gate: kept out: dice_patient_mean = 0.420, below the floor 0.6" in out
    assert f"{SEGMENTER} has no champion: it is not served" in out
    assert "no model has a champion: there is nothing to serve" in out
    table = out[out.index("== Summary") :]
    assert re.search(rf"{CLASSIFIER}\s+v1\s+challenger\s+kept out: auc 0.610 < 0.85.*\sno\n", table)
    assert "skipped: 3-6. Serving, challenger, canary, monitoring" in table
    assert "pipeline.log" in table
    assert not (home / "logs" / "gateway.log").exists()


@pytest.mark.integration
def test_a_segmenter_kept_out_leaves_the_classifier_served_and_skips_what_needs_it(
    data_dir: Path, tmp_path: Path, onnx_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = {CLASSIFIER: {"auc": 0.91}, SEGMENTER: {"dice_patient_mean": 0.42}}
    monkeypatch.setattr(demo_module, "run_local", _fake_pipeline(onnx_files, outcome))
    home = tmp_path / "home"
    settings = MedopsSettings(home=home, data_dir=data_dir)
    result = CliRunner().invoke(demo_module.demo, ["--preset", "fast"], obj=settings)
    out = result.output
    assert result.exit_code == 0, out + repr(result.exception)
    assert re.search(rf"gateway ready: .*; serving {CLASSIFIER} v1\n", out)
    assert f"not served (no champion): {SEGMENTER}" in out
    assert re.search(r"slice-level decision accuracy [0-9.]+ over \d+ slices\n", out)
    assert "Dice" not in out.split("== 3. Serving")[1].split("==")[0]
    assert "3b. DICOM SEG (and masks, Dice): skipped" in out
    assert "4. Challenger, 5. Canary: skipped" in out
    assert "== 6. Monitoring" in out
    table = out[out.index("== Summary") :]
    assert re.search(rf"{CLASSIFIER}\s+v1\s+challenger,champion\s+passed\s.*champion \(REST", table)
    assert re.search(rf"{SEGMENTER}\s+v1\s+challenger\s+kept out: .*\sno\n", table)
    finished = re.search(
        r"Finished server process \[(\d+)\]", (home / "logs" / "gateway.log").read_text()
    )
    assert finished and not Path(f"/proc/{finished.group(1)}").exists()
