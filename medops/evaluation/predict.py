"""Batched inference to probabilities."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medops.errors import InvalidInputError
from medops.models import ServingWrapper


def predict_probs(model: nn.Module, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Probabilities for float32 images (N, 3, S, S): (N, K) softmax for a classifier,
    (N, 1, S, S) sigmoid for a segmenter. A :class:`ServingWrapper` is used as is."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise InvalidInputError(f"images: expected (N, C, S, S), got shape {images.shape}")
    wrapped = isinstance(model, ServingWrapper)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).to(device)
            out = model(x)
            if not wrapped:
                out = torch.sigmoid(out) if out.ndim == 4 else torch.softmax(out, dim=1)
            outputs.append(out.float().cpu().numpy())
    model.train(was_training)
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(outputs)
