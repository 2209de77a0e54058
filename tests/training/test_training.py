from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import get_track_meta
from synthetic_arrays import Arrays, make_arrays

from medops.errors import DatasetError, InvalidInputError, TrainingError
from medops.training import TrainConfig, load_weights, save_weights, train_model
from medops.training.loop import TrainResult, _augmenter, _Batches, best_of_candidates


def tiny(task: str, **changes: object) -> TrainConfig:
    return TrainConfig.preset(task, "tiny", **changes)  # type: ignore[arg-type]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_classifier_learns_the_bright_square() -> None:
    train, val = make_arrays(64, seed=0), make_arrays(32, seed=1)
    result = train_model(tiny("classifier", epochs=5, max_steps_per_epoch=None), train, val)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.metric_name == "val_auc" and result.best_metric > 0.9
    assert result.history[result.best_epoch - 1]["val_auc"] == result.best_metric


def test_segmenter_loss_falls_and_dice_rises() -> None:
    train, val = make_arrays(64, seed=0), make_arrays(16, seed=1)
    config = tiny("segmenter", epochs=6, max_steps_per_epoch=None, lr=1e-2)
    result = train_model(config, train, val)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.metric_name == "val_dice"
    assert result.best_metric > result.history[0]["val_dice"]


def test_same_seed_and_data_give_identical_weights(arrays: Arrays) -> None:
    config = tiny("segmenter", augment=True)
    first = train_model(config, arrays, arrays).model.state_dict()
    second = train_model(config, arrays, arrays).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = train_model(config.replace(seed=1), arrays, arrays).model.state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_augmentation_runs_without_monai_metadata_and_gives_the_same_pixels(
    arrays: Arrays,
) -> None:
    config = tiny("segmenter", augment=True)
    batches = _Batches(config, arrays, torch.device("cpu"), seed=3)
    augment, seen = batches.augment, []
    assert augment is not None

    def watched(sample: dict[str, np.ndarray]) -> object:
        seen.append(get_track_meta())
        return augment(sample)

    batches.augment = watched  # type: ignore[assignment]
    images, masks = batches([0, 1, 2])
    assert seen == [False, False, False] and get_track_meta()  # the setting is restored
    tracked = _augmenter(config, seed=3)
    assert tracked is not None
    for i in range(3):
        expected = tracked(
            {"image": arrays.images[i], "mask": (arrays.masks[i] > 0).astype(np.float32)}
        )
        assert torch.equal(images[i], torch.as_tensor(np.asarray(expected["image"])))
        assert torch.equal(masks[i], torch.as_tensor(np.asarray(expected["mask"])))


def test_output_prior_starts_the_segmenter_at_the_training_masks_share(arrays: Arrays) -> None:
    # a learning rate too small to move the weights: what differs is the start
    config = tiny("segmenter", epochs=1, lr=1e-12)
    x = torch.as_tensor(np.asarray(arrays.images[:4], dtype=np.float32))
    plain_model = train_model(config, arrays, arrays).model
    prior_model = train_model(config.replace(output_prior=True), arrays, arrays).model
    with torch.no_grad():
        plain, prior = plain_model(x), prior_model(x)
    share = float(np.mean(np.asarray(arrays.masks) > 0))
    expected = torch.full_like(plain, np.log(share / (1 - share)))
    assert torch.allclose(prior - plain, expected, atol=1e-4)


def test_the_candidate_with_the_best_validation_metric_is_kept() -> None:
    config = tiny("classifier", seed=5, candidates=3)
    seeds: list[int] = []
    model = torch.nn.Linear(1, 1)

    def train_once(one: TrainConfig, report: object) -> TrainResult:
        seeds.append(one.seed)
        assert callable(report)
        report(1, {"train_loss": 1.0})
        metric = {5: 0.7, 6: 0.9, 7: 0.9}[one.seed]
        return TrainResult(model, [], 1, metric, False, 0.0, one)

    records: list[dict[str, float]] = []
    result = best_of_candidates(config, train_once, lambda _, record: records.append(record))
    assert seeds == [5, 6, 7]
    assert result.candidate_metrics == [0.7, 0.9, 0.9]
    assert result.chosen_candidate == 2 and result.best_metric == 0.9  # the first of a tie
    assert result.config == config
    assert [r["candidate"] for r in records] == [1, 2, 3] and records[0]["candidates"] == 3


def test_candidates_train_the_next_seeds_and_keep_that_network(arrays: Arrays) -> None:
    val = make_arrays(16, seed=3)
    config = tiny("classifier", candidates=2)
    both = train_model(config, arrays, val)
    alone = train_model(config.replace(seed=both.chosen_candidate - 1, candidates=1), arrays, val)
    kept, single = both.model.state_dict(), alone.model.state_dict()
    assert all(torch.equal(kept[k], single[k]) for k in kept)
    assert len(both.candidate_metrics) == 2 and both.best_metric == max(both.candidate_metrics)
    with pytest.raises(InvalidInputError, match="candidates"):
        config.replace(candidates=0)


def test_exploding_loss_stops_training_and_names_epoch_and_step(arrays: Arrays) -> None:
    with pytest.raises(TrainingError, match=r"epoch 1, step \d+"):
        train_model(tiny("classifier", lr=1e30, epochs=3), arrays, arrays)


def test_nan_pixels_are_refused_before_training(arrays: Arrays) -> None:
    arrays.images[3, 0, 0, 0] = np.nan
    with pytest.raises(DatasetError, match=r"train\.images: slice index 3"):
        train_model(tiny("classifier"), arrays, make_arrays(8, seed=2))


def test_single_class_training_data_is_a_training_error(arrays: Arrays) -> None:
    arrays.labels[:] = 0
    with pytest.raises(TrainingError, match="single-class"):
        train_model(tiny("classifier"), arrays, arrays)
    assert arrays.masks is not None
    arrays.masks[:] = 0
    with pytest.raises(TrainingError, match="no tumour pixels"):
        train_model(tiny("segmenter"), arrays, arrays)


def test_masks_that_do_not_match_images_are_a_dataset_error(arrays: Arrays) -> None:
    arrays.masks = np.zeros((32, 1, 16, 16), np.uint8)
    with pytest.raises(DatasetError, match="masks do not match images"):
        train_model(tiny("segmenter"), arrays, make_arrays(8, seed=3))


def test_empty_and_wrongly_sized_datasets_are_refused(arrays: Arrays) -> None:
    empty = make_arrays(8)
    empty.images = empty.images[:0]
    with pytest.raises(DatasetError, match="val: the dataset is empty"):
        train_model(tiny("classifier"), arrays, empty)
    with pytest.raises(DatasetError, match="image_size is 64"):
        train_model(tiny("classifier", image_size=64), arrays, arrays)


def test_invalid_configs_name_the_field() -> None:
    with pytest.raises(InvalidInputError, match="lr"):
        TrainConfig(task="classifier", lr=-1)
    with pytest.raises(InvalidInputError, match="image_size: 100 is not a multiple of 16"):
        TrainConfig(task="segmenter", image_size=100)
    with pytest.raises(InvalidInputError, match="preset"):
        TrainConfig.preset("segmenter", "huge")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="precision: 'fp16' is not fp32 or bf16"):
        TrainConfig(task="segmenter", precision="fp16")  # type: ignore[arg-type]


def test_bf16_training_steps_run_in_bf16_and_keep_fp32_weights(arrays: Arrays) -> None:
    config = tiny("segmenter", epochs=1)
    exact = train_model(config, arrays, arrays)
    mixed = train_model(config.replace(precision="bf16"), arrays, arrays)
    assert all(
        t.dtype == torch.float32 for t in mixed.model.state_dict().values() if t.is_floating_point()
    )
    # same seed, same batches: only the arithmetic differs, so the weights do
    differs = [
        not torch.equal(a, b)
        for a, b in zip(weights(exact.model).values(), weights(mixed.model).values(), strict=True)
    ]
    assert any(differs)
    assert np.isfinite(mixed.history[0]["train_loss"])


def test_presets_exist_for_every_task_and_speed() -> None:
    fast = TrainConfig.preset("segmenter", "fast")
    full = TrainConfig.preset("segmenter", "full")
    assert fast.image_size == 128 and full.image_size == 256 and full.epochs > fast.epochs
    assert TrainConfig.preset("type-classifier", "fast").num_classes == 4
    assert TrainConfig.preset("classifier", "tiny").max_steps_per_epoch is not None
    assert fast.to_params()["channels"] == "16-32-64-128-256"


def test_early_stopping_stops_when_validation_stops_improving(arrays: Arrays) -> None:
    # a vanishing learning rate leaves the instance-normalised segmenter's Dice unchanged
    config = tiny("segmenter", lr=1e-12, epochs=10, patience=2, augment=False)
    result = train_model(config, arrays, arrays)
    assert result.stopped_early
    assert len(result.history) == 3 and result.best_epoch == 1


def test_warm_start_with_freeze_then_unfreeze(tmp_path: Path, arrays: Arrays) -> None:
    base = train_model(tiny("classifier", epochs=1), arrays, arrays)
    path = save_weights(base.model, tmp_path / "warm.pt")
    seen: list[float] = []
    config = tiny("classifier", warm_start=str(path), freeze_epochs=1, epochs=2, patience=0)
    result = train_model(
        config, arrays, arrays, on_epoch=lambda e, m: seen.append(m["trainable_params"])
    )
    head = sum(p.numel() for p in result.model.get_submodule("fc").parameters())
    total = sum(p.numel() for p in result.model.parameters())
    assert seen == [head, total]

    frozen_only = train_model(config.replace(epochs=1), arrays, arrays).model.state_dict()
    start = base.model.state_dict()
    assert torch.equal(frozen_only["conv1.weight"], start["conv1.weight"])
    assert not torch.equal(frozen_only["fc.weight"], start["fc.weight"])


def test_warm_start_into_a_new_head_skips_only_the_head(tmp_path: Path, arrays: Arrays) -> None:
    base = train_model(tiny("classifier", epochs=1), arrays, arrays)
    path = save_weights(base.model, tmp_path / "binary.pt")
    four = make_arrays(32)
    four.labels = np.arange(32) % 4
    result = train_model(
        tiny("type-classifier", warm_start=str(path), epochs=1, freeze_epochs=1), four, four
    )
    assert result.warm_start_skipped == ["fc.bias", "fc.weight"]
    assert torch.equal(
        result.model.state_dict()["conv1.weight"], base.model.state_dict()["conv1.weight"]
    )


def test_weights_round_trip_and_refuse_a_mismatched_model(tmp_path: Path, arrays: Arrays) -> None:
    result = train_model(tiny("segmenter", epochs=1), arrays, arrays)
    path = save_weights(result.model, tmp_path / "w.pt")
    fresh = train_model(tiny("segmenter", epochs=1, seed=5), arrays, arrays).model
    assert load_weights(fresh, path) == []
    expected = weights(result.model)
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
    other = train_model(tiny("classifier", epochs=1), arrays, arrays).model
    with pytest.raises(InvalidInputError, match="does not fit the model"):
        load_weights(other, path)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_weights(other, tmp_path / "missing.pt")
