"""The training loop shared by single-process and DDP training."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from monai.data import get_track_meta, set_track_meta
from monai.losses import DiceCELoss, DiceFocalLoss
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from medops.errors import InvalidInputError, TrainingError
from medops.evaluation.metrics import dice, roc_auc
from medops.models import (
    build_classifier,
    build_segmenter,
    set_backbone_frozen,
    start_at_prior,
)
from medops.training.arrays import SliceArrays, check_arrays, check_trainable
from medops.training.config import TrainConfig
from medops.training.weights import load_weights

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """The outcome of a training run; ``model`` holds the best epoch's weights (on CPU)."""

    model: nn.Module
    history: list[dict[str, float]]
    """One dict per epoch: epoch, train_loss, val_loss, val_metric, <metric_name>, lr,
    trainable_params, seconds (wall), cpu_seconds (this process, all threads)."""
    best_epoch: int
    best_metric: float
    stopped_early: bool
    seconds: float
    config: TrainConfig
    metric_name: str = "val_metric"
    """What val_metric is: val_auc (binary classifier), val_accuracy (type classifier, or a
    validation set with one class), val_dice (segmenter: mean per-patient Dice at 0.5)."""
    warm_start_skipped: list[str] = field(default_factory=list)
    """Tensors a warm start could not load (e.g. a classifier head with another class count)."""
    candidate_metrics: list[float] = field(default_factory=list)
    """The best validation metric of every candidate network (``config.candidates``)."""
    chosen_candidate: int = 1
    """Which candidate was kept (1-based; its seed is ``config.seed + chosen_candidate - 1``)."""


def build_model(config: TrainConfig) -> nn.Module:
    """The untrained network ``config`` describes (seeded by the caller)."""
    if config.is_segmenter:
        return build_segmenter(channels=config.channels, num_res_units=config.num_res_units)
    return build_classifier(config.num_classes, arch=config.arch, widths=config.widths)


def resolve_device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device: cuda requested but no GPU is available")
    return torch.device(config.device)


def check_inputs(config: TrainConfig, train: SliceArrays, val: SliceArrays) -> None:
    """All dataset checks before any compute: typed errors naming the field."""
    for name, data in (("train", train), ("val", val)):
        check_arrays(data, name=name, needs_masks=config.is_segmenter, image_size=config.image_size)
    check_trainable(train, segmenter=config.is_segmenter, num_classes=config.num_classes)
    if not config.is_segmenter:
        labels = np.asarray(val.labels)
        if labels.min() < 0 or labels.max() >= config.num_classes:
            raise InvalidInputError(
                f"val.labels: labels must lie in [0, {config.num_classes - 1}], "
                f"got values from {labels.min()} to {labels.max()}"
            )


def _augmenter(config: TrainConfig, seed: int) -> Compose | None:
    if not config.augment:
        return None
    keys = ["image", "mask"] if config.is_segmenter else ["image"]
    modes = ["bilinear", "nearest"] if config.is_segmenter else ["bilinear"]
    shift = 0.05 * config.image_size
    transform = Compose(
        [
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandAffined(
                keys,
                prob=0.5,
                rotate_range=(math.radians(15),),
                scale_range=(0.1, 0.1),
                translate_range=(shift, shift),
                mode=modes,
                padding_mode="zeros",
            ),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.05, prob=0.5),
            RandGaussianNoised("image", prob=0.3, std=0.02),
        ]
    )
    transform.set_random_state(seed=seed)
    return transform


def _loss_fn(config: TrainConfig) -> nn.Module:
    if not config.is_segmenter:
        return nn.CrossEntropyLoss()
    # batch=True: Dice over the whole batch, so tumour-free slices do not make it explode
    if config.loss == "dice_focal":
        return DiceFocalLoss(sigmoid=True, batch=True)
    return DiceCELoss(sigmoid=True, batch=True)


@contextmanager
def _untracked() -> Iterator[None]:
    """MONAI transforms without metadata tracking: the same pixels in half the time (nothing
    here reads the metadata)."""
    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


class _Batches:
    """Builds (augmented) tensors for a list of sample indices."""

    def __init__(self, config: TrainConfig, data: SliceArrays, device: torch.device, seed: int):
        self.config = config
        self.images = np.asarray(data.images, dtype=np.float32)
        self.masks = (
            (np.asarray(data.masks) > 0).astype(np.float32) if config.is_segmenter else None
        )
        self.labels = np.asarray(data.labels, dtype=np.int64)
        self.device = device
        self.augment = _augmenter(config, seed)

    def __call__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images[idx]
        targets = self.masks[idx] if self.masks is not None else None
        if self.augment is not None:
            with _untracked():
                outs = [
                    self.augment(
                        {"image": images[i]} | ({} if targets is None else {"mask": targets[i]})
                    )
                    for i in range(len(idx))
                ]
            images = np.stack([np.asarray(o["image"], dtype=np.float32) for o in outs])
            if targets is not None:
                targets = np.stack([np.asarray(o["mask"], dtype=np.float32) for o in outs])
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if targets is not None:
            return x, torch.from_numpy(np.ascontiguousarray(targets)).to(self.device)
        return x, torch.from_numpy(self.labels[idx]).to(self.device)


def _validate(
    model: nn.Module,
    config: TrainConfig,
    val: SliceArrays,
    loss_fn: nn.Module,
    device: torch.device,
) -> tuple[float, float, str]:
    """(val_loss, val_metric, metric name) with the model in eval mode."""
    model.eval()
    batches = _Batches(config.replace(augment=False), val, device, 0)
    n = len(batches.images)
    losses, outputs = [], []
    with torch.no_grad():
        for start in range(0, n, 64):
            idx = list(range(start, min(start + 64, n)))
            x, y = batches(idx)
            logits = model(x)
            losses.append(float(loss_fn(logits, y)) * len(idx))
            if config.is_segmenter:
                outputs.append((logits > 0).cpu().numpy()[:, 0])
            else:
                outputs.append(torch.softmax(logits, 1).cpu().numpy())
    model.train()
    val_loss = sum(losses) / n
    if config.is_segmenter:
        assert batches.masks is not None
        pred, truth = np.concatenate(outputs), batches.masks[:, 0] > 0
        patients = np.asarray(val.patient_ids)
        scores = [dice(pred[patients == p], truth[patients == p]) for p in np.unique(patients)]
        return val_loss, float(np.mean(scores)), "val_dice"
    probs, labels = np.concatenate(outputs), batches.labels
    if config.num_classes == 2 and len(np.unique(labels)) == 2:
        return val_loss, roc_auc(labels, probs[:, 1]), "val_auc"
    return val_loss, float((probs.argmax(1) == labels).mean()), "val_accuracy"


def fit(
    config: TrainConfig,
    train: SliceArrays,
    val: SliceArrays,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train one model; with ``world_size > 1`` this runs inside an initialised DDP process group.

    The global batch order comes from a :class:`DistributedSampler` (one replica in a single
    process), so DDP with N processes of batch B/N sees the same global batches as one process
    with batch B.
    """
    started = time.perf_counter()
    check_inputs(config, train, val)
    if config.batch_size % world_size:
        raise InvalidInputError(
            f"batch_size: {config.batch_size} does not split evenly over {world_size} processes"
        )
    device = resolve_device(config)
    bf16 = config.precision == "bf16"
    torch.manual_seed(config.seed)
    model = build_model(config)
    if config.output_prior and config.is_segmenter:
        start_at_prior(model, float(np.mean(np.asarray(train.masks) > 0)))
    model = model.to(device)
    skipped: list[str] = []
    warm = config.warm_start is not None
    if config.warm_start is not None:
        skipped = load_weights(model, Path(config.warm_start), strict=False)
    loss_fn = _loss_fn(config)
    n = len(train.labels)
    local_batch = config.batch_size // world_size
    sampler: DistributedSampler[int] = DistributedSampler(
        cast(Dataset[int], range(n)),
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=config.seed,
    )
    steps = math.ceil(len(sampler) / local_batch)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=max(2, config.epochs * steps), pct_start=0.15
    )
    batches = _Batches(config, train, device, seed=config.seed + 1000 * rank)
    history: list[dict[str, float]] = []
    best_metric, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    bad_epochs, stopped_early, metric_name = 0, False, "val_metric"
    step_model: nn.Module = model
    frozen: bool | None = None
    epochs: Any = range(1, config.epochs + 1)
    if progress and rank == 0:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc=f"train {config.task}", unit="epoch")
    for epoch in epochs:
        epoch_started, epoch_cpu = time.perf_counter(), time.process_time()
        now_frozen = warm and epoch <= config.freeze_epochs
        if now_frozen != frozen:
            frozen = now_frozen
            trainable = set_backbone_frozen(model, frozen)
            if world_size > 1:
                # DDP registers the parameters that need gradients when it is built
                step_model = nn.parallel.DistributedDataParallel(model)
        model.train()
        sampler.set_epoch(epoch)
        order = list(sampler)
        total = 0.0
        for step in range(steps):
            x, y = batches(order[step * local_batch : (step + 1) * local_batch])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                output = step_model(x)
            loss = loss_fn(output.float(), y)
            value = loss.detach().reshape(1).clone()
            if world_size > 1:
                dist.all_reduce(value)
                value /= world_size
            if not torch.isfinite(value).all():
                raise TrainingError(
                    f"training stopped: the loss became {float(value[0])} at epoch {epoch}, "
                    f"step {step + 1}; lower the learning rate or check the input data"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(value[0])
        record = {
            "epoch": float(epoch),
            "train_loss": total / steps,
            "lr": float(schedule.get_last_lr()[0]),
            "trainable_params": float(trainable),
        }
        verdict = torch.zeros(2, dtype=torch.float64)
        if rank == 0:
            val_loss, metric, metric_name = _validate(model, config, val, loss_fn, device)
            verdict[:] = torch.tensor([val_loss, metric])
        if world_size > 1:
            dist.broadcast(verdict, src=0)
        val_loss, metric = float(verdict[0]), float(verdict[1])
        record |= {"val_loss": val_loss, "val_metric": metric, metric_name: metric}
        record["seconds"] = time.perf_counter() - epoch_started
        record["cpu_seconds"] = time.process_time() - epoch_cpu
        history.append(record)
        if rank == 0:
            log.info("epoch %d %s", epoch, {k: round(v, 4) for k, v in record.items()})
            if on_epoch is not None:
                on_epoch(epoch, dict(record))
        if metric > best_metric:
            best_metric, best_epoch, bad_epochs = metric, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if config.patience and bad_epochs >= config.patience:
                stopped_early = epoch < config.epochs
                break
    model.load_state_dict(best_state)
    set_backbone_frozen(model, False)
    model.eval()
    return TrainResult(
        model=model.cpu(),
        history=history,
        best_epoch=best_epoch,
        best_metric=best_metric,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
        config=config,
        metric_name=metric_name,
        warm_start_skipped=skipped,
    )


TrainOnce = Callable[[TrainConfig, EpochCallback | None], TrainResult]


def best_of_candidates(
    config: TrainConfig, train_once: TrainOnce, on_epoch: EpochCallback | None = None
) -> TrainResult:
    """Train ``config.candidates`` networks with ``train_once`` (seeds seed, seed + 1, ...);
    the one with the best validation metric, the first on a tie. With several candidates,
    every epoch record passed to ``on_epoch`` carries ``candidate`` and ``candidates``."""
    started = time.perf_counter()
    count = config.candidates
    results = []
    for index in range(count):
        report = on_epoch if count == 1 else _tag_candidate(on_epoch, index + 1, count)
        results.append(train_once(config.replace(seed=config.seed + index), report))
    metrics = [r.best_metric for r in results]
    chosen = metrics.index(max(metrics))
    if count > 1:
        log.info("candidates %s: kept %d", [round(m, 4) for m in metrics], chosen + 1)
    return dataclasses.replace(
        results[chosen],
        config=config,
        seconds=time.perf_counter() - started,
        candidate_metrics=metrics,
        chosen_candidate=chosen + 1,
    )


def _tag_candidate(
    on_epoch: EpochCallback | None, candidate: int, count: int
) -> EpochCallback | None:
    if on_epoch is None:
        return None
    return lambda epoch, record: on_epoch(
        epoch, record | {"candidate": candidate, "candidates": count}
    )


def train_model(
    config: TrainConfig,
    train: SliceArrays,
    val: SliceArrays,
    *,
    progress: bool = False,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train ``config.task`` on ``train``, early-stopping on ``val``; best weights restored
    (of the best of ``config.candidates`` networks).

    Raises DatasetError for inconsistent arrays (masks that do not match images, NaN pixels,
    wrong size), TrainingError for single-class training data or a NaN/inf loss (naming the
    epoch and step). Uses ``config.num_threads`` CPU threads for the duration of the call.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return best_of_candidates(
            config,
            lambda one, report: fit(one, train, val, progress=progress, on_epoch=report),
            on_epoch,
        )
    finally:
        torch.set_num_threads(previous)
