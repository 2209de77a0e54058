"""Hyperparameter search (Optuna) and the cluster entry points (Katib trial, torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import hpo, steps

TINY_SEARCH = {"epochs": 2, "max_steps_per_epoch": 3}


def test_optuna_finds_parameters_inside_the_search_space_on_train_and_validation_only(
    lgg_dir: Path, medops_home: Path, tmp_path: Path
) -> None:
    manifest = steps.ingest_data(str(lgg_dir), str(medops_home))["manifest"]
    splits = str(tmp_path / "splits.json")
    steps.split_data(manifest, splits, max_patients={"train": 3, "val": 2, "test": 0})
    best = hpo.search(
        "classifier",
        "tiny",
        manifest,
        splits,
        str(medops_home),
        n_trials=2,
        base_overrides=TINY_SEARCH,
    )
    assert best["_search"]["trials"] == 2
    assert 0.0 <= best["_search"]["best_value"] <= 1.0
    space = hpo.SEARCH_SPACE
    assert space["lr"]["min"] <= best["lr"] <= space["lr"]["max"]
    assert best["batch_size"] in space["batch_size"]["choices"]
    assert best["epochs"] == 2  # the base settings are kept
    # the found parameters are a valid training config for the pipeline's train step
    found = {k: v for k, v in best.items() if k != "_search"}
    assert steps.train_config("classifier", "tiny", json.dumps(found)).lr == best["lr"]


@pytest.mark.slow
def test_a_katib_trial_prints_the_objective_for_the_stdout_collector(
    lgg_dir: Path, medops_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hpo.main(
        [
            "--task",
            "classifier",
            "--preset",
            "tiny",
            "--data",
            str(lgg_dir),
            "--home",
            str(medops_home),
            "--lr",
            "0.003",
            "--weight-decay",
            "0.0001",
            "--batch-size",
            "8",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    objective = [ln for ln in lines if ln.startswith(f"{hpo.OBJECTIVE}=")]
    assert len(objective) == 1
    assert 0.0 <= float(objective[0].split("=")[1]) <= 1.0
    assert any(ln.startswith("epoch=1 val_metric=") for ln in lines)


@pytest.mark.slow
def test_the_trainjob_entry_point_trains_with_two_torchrun_processes(
    lgg_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "weights.pt"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "-m",
            "pipelines.train_job",
            "--task",
            "classifier",
            "--preset",
            "tiny",
            "--data",
            str(lgg_dir),
            "--home",
            str(tmp_path / "home"),
            "--weights-out",
            str(out),
            "--overrides",
            json.dumps({"epochs": 1, "max_steps_per_epoch": 2}),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["world_size"] == 2
    assert out.stat().st_size > 1000
