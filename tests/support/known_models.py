"""Small torch models whose answers are known, exported to the ONNX contract: for tests of
explanations and of the pages (a segmenter that answers a given mask, a classifier that
responds smoothly to bright FLAIR pixels, so occluding them visibly lowers its score)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class BrightSpotClassifier(nn.Module):
    """P(tumour) rises with bright FLAIR pixels (about 0.8 on an LGG tumour slice, far from
    saturating, so occluding the tumour visibly lowers it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 2, 5, padding=2)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.normal_(0.0, 0.05)
            self.conv.weight[0, 1] += 1.0 / 25.0
            self.head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return torch.softmax(self.head(h) * 4.0, dim=1)


class FixedMask(nn.Module):
    """A segmenter whose answer is known: the same mask on every slice."""

    def __init__(self, mask: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mask", torch.from_numpy(mask.astype(np.float32))[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        assert isinstance(mask, torch.Tensor)
        return mask.expand(x.shape[0], 1, -1, -1) + 0.0 * x[:, :1]
