"""Concept drift from feedback: window quality and quality over time."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from medops.errors import InvalidInputError
from medops.monitoring.quality import quality_over_time, window_quality
from medops.monitoring.store import PredictionRecord, PredictionStore
from services.monitor.app import build_actions
from services.monitor.cli import monitor
from services.monitor.settings import MonitorSettings

DAY = 86_400.0


def _log(store: PredictionStore, i: int, day: int, decision: str, label: str | None) -> None:
    store.record(
        PredictionRecord(
            request_id=f"q{i}", model="cls", version="1", variant="champion",
            probabilities={"no_tumour": 0.1, "tumour": 0.9}, features={"p50": 0.1},
            decision=decision,
            time=1_700_000_000.0 + day * DAY + i,
        )
    )  # fmt: skip
    if label is not None:
        store.record_feedback(f"q{i}", label=label)


def test_quality_over_time_shows_the_day_accuracy_fell(tmp_path: Path) -> None:
    with PredictionStore(f"sqlite:///{tmp_path}/q.db") as store:
        for i in range(10):  # day 0: all confirmed
            _log(store, i, 0, "tumour", "tumour")
        for i in range(10, 20):  # day 1: half of the tumours were not tumours
            _log(store, i, 1, "tumour", "tumour" if i % 2 else "no_tumour")
        for i in range(20, 24):  # day 1: a missed tumour, and unreviewed predictions
            _log(store, i, 1, "no_tumour", "tumour" if i == 20 else None)
        window = store.window("cls")
    curve = quality_over_time(window, freq="1D")
    assert curve["labelled"].tolist() == [10, 11]
    assert curve["accuracy"].tolist() == pytest.approx([1.0, 5 / 11])
    assert curve["sensitivity"].tolist() == pytest.approx([1.0, 5 / 6])
    overall = window_quality(window)
    assert overall.labelled == 21 and overall.dice is None


def test_window_quality_of_an_empty_window_is_empty() -> None:
    import pandas as pd

    q = window_quality(pd.DataFrame())
    assert (q.labelled, q.accuracy, q.masks, q.dice) == (0, None, 0, None)


@pytest.mark.parametrize(
    ("triggers", "missing"),
    [
        (["webhook"], "WEBHOOK_URL"),
        (["github"], "GITHUB_REPOSITORY"),
        (["kfp"], "KFP_HOST"),
    ],
)
def test_a_trigger_without_its_settings_is_refused_by_name(triggers: list, missing: str) -> None:
    with pytest.raises(InvalidInputError, match=missing):
        build_actions(MonitorSettings(triggers=triggers))


def test_triggers_are_built_in_order() -> None:
    settings = MonitorSettings(
        triggers=["local", "webhook", "github"],
        webhook_url="http://127.0.0.1:9/hook",
        github_repository="org/medops",
        github_token="t",  # type: ignore[arg-type]
    )
    assert [a.name for a in build_actions(settings)] == ["local", "webhook", "github"]


def test_monitor_command_documents_its_options() -> None:
    result = CliRunner().invoke(monitor, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--interval", "--store-url"):
        assert option in result.output
