"""The in-process ONNX Runtime sessions take their threads and spinning from the settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_support import make_settings

from pipelines.brain import CLASSIFIER
from services.gateway.backends import OnnxBackend, make_backend


@pytest.mark.parametrize(("spinning", "entry"), [(True, "1"), (False, "0")])
def test_sessions_spin_or_not_as_the_settings_say(
    tiny_models: dict[str, Path], tmp_path: Path, spinning: bool, entry: str
) -> None:
    settings = make_settings(tmp_path, tiny_models, onnx_threads=1, onnx_spinning=spinning)
    backend = make_backend(settings)
    assert isinstance(backend, OnnxBackend)
    options = backend._open(tiny_models[CLASSIFIER]).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
    assert options.intra_op_num_threads == 1
