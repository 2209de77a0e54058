"""Data-parallel training with torch DDP: gloo on CPU processes (NCCL-free), same result API."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medops.errors import InvalidInputError, MedopsError
from medops.training import loop
from medops.training.arrays import SliceArrays
from medops.training.config import TrainConfig
from medops.training.loop import TrainResult


@dataclass
class _Arrays:
    """A picklable, memory-mapped stand-in for an ArraySet inside worker processes."""

    images: np.ndarray
    masks: np.ndarray | None
    labels: np.ndarray
    sample_ids: list[str]
    patient_ids: list[str]


def _stash(data: SliceArrays, folder: Path, name: str) -> dict[str, object]:
    # arrays go through files and come back memory-mapped: no pickling of large arrays
    np.save(folder / f"{name}-images.npy", np.asarray(data.images, dtype=np.float32))
    if data.masks is not None:
        np.save(folder / f"{name}-masks.npy", np.asarray(data.masks))
    return {
        "folder": str(folder),
        "name": name,
        "has_masks": data.masks is not None,
        "labels": np.asarray(data.labels),
        "sample_ids": list(data.sample_ids),
        "patient_ids": list(data.patient_ids),
    }


def _unstash(spec: dict[str, object]) -> _Arrays:
    folder, name = Path(str(spec["folder"])), str(spec["name"])
    images = np.load(folder / f"{name}-images.npy", mmap_mode="r")
    masks = np.load(folder / f"{name}-masks.npy", mmap_mode="r") if spec["has_masks"] else None
    return _Arrays(
        images,
        masks,
        np.asarray(spec["labels"]),
        list(spec["sample_ids"]),  # type: ignore[call-overload]
        list(spec["patient_ids"]),  # type: ignore[call-overload]
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int,
    world_size: int,
    port: int,
    config: TrainConfig,
    train_spec: dict[str, object],
    val_spec: dict[str, object],
    out: str,
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(max(1, config.num_threads // world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = loop.fit(
            config, _unstash(train_spec), _unstash(val_spec), rank=rank, world_size=world_size
        )
        if rank == 0:
            torch.save(
                {
                    "state": result.model.state_dict(),
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_metric": result.best_metric,
                    "stopped_early": result.stopped_early,
                    "metric_name": result.metric_name,
                    "skipped": result.warm_start_skipped,
                },
                out,
            )
    except MedopsError as exc:
        # every rank hits the same typed error (loss checks are all-reduced); rank 0 reports it
        if rank == 0:
            torch.save({"error": type(exc).__name__, "message": exc.message}, out)
    finally:
        dist.destroy_process_group()


def train_distributed(
    config: TrainConfig, train: SliceArrays, val: SliceArrays, *, world_size: int = 2
) -> TrainResult:
    """Train like :func:`train_model` with ``world_size`` DDP processes (gloo, 127.0.0.1).

    Each process takes ``batch_size / world_size`` samples of every global batch (a
    DistributedSampler), gradients are averaged, rank 0 validates and decides early stopping.
    With augmentation off it follows the single-process run closely: only batch-level
    statistics differ (the batch Dice of the segmenter loss, batch norm in the classifier),
    since each process computes them on its share of the batch. Threads: ``num_threads /
    world_size`` per process. Processes are spawned, so a script calling this needs the
    ``if __name__ == "__main__":`` guard.
    """
    if world_size < 1:
        raise InvalidInputError(f"world_size: must be at least 1, got {world_size}")
    loop.check_inputs(config, train, val)
    return loop.best_of_candidates(
        config, lambda one, _: _train_once(one, train, val, world_size=world_size)
    )


def _train_once(
    config: TrainConfig, train: SliceArrays, val: SliceArrays, *, world_size: int
) -> TrainResult:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medops-ddp-") as tmp:
        folder = Path(tmp)
        out = folder / "result.pt"
        mp.spawn(
            _worker,
            args=(
                world_size,
                _free_port(),
                config,
                _stash(train, folder, "train"),
                _stash(val, folder, "val"),
                str(out),
            ),
            nprocs=world_size,
            join=True,
        )
        payload = torch.load(out, map_location="cpu", weights_only=False)
    if "error" in payload:
        import medops.errors as errors

        error_type = getattr(errors, payload["error"], MedopsError)
        raise error_type(payload["message"])
    torch.manual_seed(config.seed)
    model = loop.build_model(config)
    model.load_state_dict(payload["state"])
    model.eval()
    return TrainResult(
        model=model,
        history=payload["history"],
        best_epoch=payload["best_epoch"],
        best_metric=payload["best_metric"],
        stopped_early=payload["stopped_early"],
        seconds=time.perf_counter() - started,
        config=config,
        metric_name=payload["metric_name"],
        warm_start_skipped=payload["skipped"],
    )
