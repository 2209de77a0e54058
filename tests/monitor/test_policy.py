"""The retraining policy (once per episode) and its actions against loopback receivers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from monitor_support import Receiver, free_port

from medops.errors import BackendUnavailableError
from medops.monitoring.policy import (
    GitHubDispatchAction,
    LocalPipelineAction,
    RetrainPolicy,
    TriggerEvent,
    WebhookAction,
)
from medops.monitoring.quality import Quality

GOOD = Quality(labelled=50, accuracy=0.95, sensitivity=0.9, masks=30, dice=0.85)
BAD = Quality(labelled=50, accuracy=0.6, sensitivity=0.5, masks=30, dice=0.85)


def test_sustained_drift_triggers_once_per_episode_and_rearms_when_it_clears() -> None:
    policy = RetrainPolicy(sustained_windows=3)
    verdicts = [True, True, True, True, True, False, True, True, True]
    fired = [policy.observe("m", drift_detected=d) is not None for d in verdicts]
    assert fired == [False, False, True, False, False, False, False, False, True]


def test_a_broken_streak_does_not_trigger() -> None:
    policy = RetrainPolicy(sustained_windows=2)
    assert all(policy.observe("m", drift_detected=d) is None for d in [True, False, True, False])


def test_windows_too_small_to_judge_leave_the_streak_alone() -> None:
    policy = RetrainPolicy(sustained_windows=2)
    assert policy.observe("m", drift_detected=True) is None
    assert policy.observe("m", drift_detected=None) is None
    assert policy.observe("m", drift_detected=True) is not None


def test_quality_drop_triggers_once_and_needs_enough_feedback() -> None:
    policy = RetrainPolicy(accuracy_threshold=0.8, min_feedback=20)
    few = Quality(labelled=5, accuracy=0.2, sensitivity=None, masks=0, dice=None)
    assert policy.observe("m", drift_detected=False, quality=few) is None
    event = policy.observe("m", drift_detected=False, quality=BAD)
    assert event is not None and event.reason == "quality"
    assert event.detail == {"below_threshold": {"accuracy": 0.6}}
    assert policy.observe("m", drift_detected=False, quality=BAD) is None
    assert policy.observe("m", drift_detected=False, quality=GOOD) is None
    assert policy.observe("m", drift_detected=False, quality=BAD) is not None


def test_models_are_tracked_separately() -> None:
    policy = RetrainPolicy(sustained_windows=1)
    assert policy.observe("a", drift_detected=True) is not None
    assert policy.observe("b", drift_detected=True) is not None


def test_webhook_action_posts_the_event(receiver: Receiver) -> None:
    WebhookAction(receiver.url)(TriggerEvent("m", "drift", {"drifted_windows": 3}))
    assert receiver.bodies[0]["model"] == "m"
    assert receiver.bodies[0]["detail"] == {"drifted_windows": 3}


def test_github_dispatch_sends_a_repository_dispatch_body(receiver: Receiver) -> None:
    api = receiver.url.rsplit("/", 1)[0]
    action = GitHubDispatchAction("org/medops", "t0ken", api_url=api)
    assert action.url == f"{api}/repos/org/medops/dispatches"
    action.url = receiver.url  # the loopback receiver answers any path
    action(TriggerEvent("m", "quality", {}))
    body = receiver.bodies[0]
    assert body["event_type"] == "medops-retrain"
    assert body["client_payload"]["reason"] == "quality"
    assert receiver.headers[0]["Authorization"] == "Bearer t0ken"


def test_an_unreachable_webhook_is_a_backend_error() -> None:
    action = WebhookAction(f"http://127.0.0.1:{free_port()}/hook", timeout=2.0)
    with pytest.raises(BackendUnavailableError, match="webhook unreachable"):
        action(TriggerEvent("m", "drift", {}))


def test_local_action_starts_the_pipeline_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('retrain')"
    action = LocalPipelineAction([sys.executable, "-c", code], log_dir=tmp_path / "logs")
    action(TriggerEvent("m", "drift", {}))
    assert action.processes[0].wait(timeout=30) == 0
    assert marker.read_text() == "retrain"
    assert list((tmp_path / "logs").glob("retrain-m-*.log"))


def test_local_action_reports_a_missing_command() -> None:
    with pytest.raises(BackendUnavailableError, match="cannot start"):
        LocalPipelineAction(["medops-no-such-command-" + str(time.time_ns())])(
            TriggerEvent("m", "drift", {})
        )
