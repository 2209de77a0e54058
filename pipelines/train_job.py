"""Distributed training entry point for ``torchrun`` (Kubeflow Trainer TrainJob, GPU clusters).

``torchrun [--nproc-per-node N] -m pipelines.train_job --task segmenter --data DIR --home DIR
--weights-out FILE`` trains with torch DDP: torchrun (or Kubeflow Trainer's torch runtime,
through its PET_* variables) sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address.
NCCL on GPUs, gloo on CPUs. Rank 0 writes the best weights and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m pipelines.train_job`` (under torchrun)."""
    parser = argparse.ArgumentParser(description="DDP training of one medops model")
    parser.add_argument(
        "--task", required=True, choices=["classifier", "segmenter", "type-classifier"]
    )
    parser.add_argument("--preset", default="full")
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--home", required=True)
    parser.add_argument("--weights-out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", default="", help="JSON of TrainConfig fields")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Train one model with DDP in this torchrun process; rank 0 saves the result."""
    args = build_parser().parse_args(argv)

    import torch
    import torch.distributed as dist

    from medops.training import loop, save_weights
    from pipelines import steps
    from pipelines.hpo import prepare_data

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)  # "cuda" now means this process's GPU
    if world_size > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        paths = [prepare_data(args.data, args.home, seed=args.seed) if rank == 0 else None]
        if world_size > 1:
            dist.broadcast_object_list(paths, src=0)  # rank 0 ingests and splits once
        assert paths[0] is not None
        manifest, splits = paths[0]
        config = steps.train_config(args.task, args.preset, args.overrides)
        config = config.replace(device="cuda" if cuda else "cpu")
        size = config.image_size
        train_set = steps.load_split(manifest, splits, "train", size=size, home=args.home)
        val_set = steps.load_split(manifest, splits, "val", size=size, home=args.home)
        # every rank picks the same candidate: the validation metric is rank 0's, broadcast
        result = loop.best_of_candidates(
            config,
            lambda one, _: loop.fit(one, train_set, val_set, rank=rank, world_size=world_size),
        )
        if rank == 0:
            save_weights(result.model, args.weights_out)
            summary = {
                "world_size": world_size,
                "best_epoch": result.best_epoch,
                "best_metric": result.best_metric,
                "metric_name": result.metric_name,
                "candidate_metrics": result.candidate_metrics,
                "seconds": result.seconds,
                "history": result.history,
            }
            Path(args.weights_out).with_suffix(".json").write_text(json.dumps(summary, indent=1))
            print(json.dumps({k: v for k, v in summary.items() if k != "history"}), flush=True)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
