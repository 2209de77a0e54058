from __future__ import annotations

import pytest
from synthetic_arrays import make_arrays

from medops.errors import TrainingError
from medops.training import TrainConfig, train_distributed, train_model


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.integration
def test_ddp_with_two_gloo_processes_matches_one_process() -> None:
    # Same global batch (8 = 2 x 4), same sample order, no augmentation, instance norm. The one
    # batch-level quantity, the batch Dice of the loss, is computed per process, so the runs
    # agree closely but not bit for bit; a different seed moves the weights far more.
    train, val = make_arrays(32, seed=0), make_arrays(8, seed=1)
    config = TrainConfig.preset("segmenter", "tiny", augment=False, epochs=2, num_threads=2)
    single = train_model(config, train, val)
    ddp = train_distributed(config, train, val, world_size=2)
    assert len(ddp.history) == len(single.history) == 2
    for a, b in zip(single.history, ddp.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2)
        assert b["val_dice"] == pytest.approx(a["val_dice"], abs=0.02)
    drift = _max_diff(single.model.state_dict(), ddp.model.state_dict())
    other_seed = train_model(config.replace(seed=1), train, val)
    assert drift < 0.02
    assert drift < 0.1 * _max_diff(single.model.state_dict(), other_seed.model.state_dict())


@pytest.mark.slow
def test_ddp_reports_a_nan_loss_as_a_training_error() -> None:
    data = make_arrays(16, seed=0)
    config = TrainConfig.preset("classifier", "tiny", lr=1e30, epochs=2, augment=False)
    with pytest.raises(TrainingError, match="epoch 1"):
        train_distributed(config, data, data, world_size=2)
