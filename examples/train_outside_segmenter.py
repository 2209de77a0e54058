"""A segmenter trained outside the pipeline, as a team with its own training code would: a
MONAI BasicUNet, a plain PyTorch loop, exported to ONNX under the serving contract, ready for
``medops models import``.

It reads the task's data through the library only to train on the very split the pipeline
holds out nothing from (the train and validation samples of the same seeded split), so the
import's test figures stay honest::

    python examples/train_outside_segmenter.py --task tasks/kvasir-polyp-segmenter.yaml \\
        --out outside.onnx
    medops models import kvasir-polyp-segmenter --onnx outside.onnx \\
        --task tasks/kvasir-polyp-segmenter.yaml
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from torch import nn

from medops.data import ingest, load_arrays, split_dataset
from medops.tasks import read_task


class Probabilities(nn.Module):
    """The contract's output: the sigmoid inside the graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="the pipeline's split seed")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("MEDOPS_DATA_DIR", "../shared/data"))
    )
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    spec = read_task(args.task)
    home = args.home or Path(tempfile.mkdtemp(prefix="outside-"))
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    manifest = ingest(
        args.data_dir / spec.data.path,
        home,
        layout=spec.data.layout,
        options=spec.layout_options(),
    )
    splits = split_dataset(manifest, seed=args.seed)
    train = load_arrays(manifest, splits.sample_ids(manifest, "train"), size=args.size, home=home)
    val = load_arrays(manifest, splits.sample_ids(manifest, "val"), size=args.size, home=home)
    assert train.masks is not None and val.masks is not None
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.masks.astype(np.float32))

    net = BasicUNet(
        spatial_dims=2, in_channels=3, out_channels=1, features=(16, 32, 64, 128, 256, 16)
    )
    loss_fn = DiceCELoss(sigmoid=True)
    optimiser = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * ((len(x) + 15) // 16)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps)
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 16):
            batch, target = x[order[i : i + 16]], y[order[i : i + 16]]
            if torch.rand(()) < 0.5:  # flips: polyps have no preferred side
                batch, target = batch.flip(-1), target.flip(-1)
            if torch.rand(()) < 0.5:
                batch, target = batch.flip(-2), target.flip(-2)
            optimiser.zero_grad()
            loss = loss_fn(net(batch), target)
            loss.backward()
            optimiser.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            pred = torch.cat(
                [
                    net(torch.from_numpy(val.images[i : i + 32]))
                    for i in range(0, len(val.images), 32)
                ]
            )
        p, t = (pred.numpy() > 0).reshape(len(pred), -1), val.masks.reshape(len(pred), -1) > 0
        dice = 2 * (p & t).sum(1) / np.maximum(p.sum(1) + t.sum(1), 1)
        print(
            f"epoch {epoch}/{args.epochs}  loss {loss.item():.3f}  val dice {dice.mean():.3f}  "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )

    model = Probabilities(net).eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, args.size, args.size),),
        str(args.out),
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        dynamo=False,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
