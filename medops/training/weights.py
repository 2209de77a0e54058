"""Saving and loading model weights as plain state_dict files (no pickled classes)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from medops.errors import InvalidInputError

log = logging.getLogger(__name__)


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state_dict (CPU tensors) to ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> list[str]:
    """Load a state_dict file into ``model``; return the keys that were not loaded.

    With ``strict=False`` tensors that are missing or have another shape (a new classifier head,
    say) are skipped and reported instead of failing. A file saved from a ``ServingWrapper``
    (keys prefixed ``model.``) loads into the bare model and the other way round.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"weights: file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the caller's fault
        raise InvalidInputError(f"weights: cannot read {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInputError(f"weights: {path} is not a state_dict of tensors")
    own = model.state_dict()
    state = _align_prefix(state, own)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(usable))
    unexpected = sorted(set(state) - set(own))
    if strict and (skipped or unexpected):
        raise InvalidInputError(
            f"weights: {path} does not fit the model: {len(skipped)} tensors missing or of another "
            f"shape (e.g. {skipped[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    if not usable:
        raise InvalidInputError(f"weights: no tensor in {path} fits the model")
    model.load_state_dict(usable, strict=False)
    if skipped:
        log.info("loaded %d tensors from %s, kept %d fresh", len(usable), path.name, len(skipped))
    return skipped


def _align_prefix(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    if set(state) & set(own):
        return state
    for prefix in ("model.", "module."):
        stripped = {k.removeprefix(prefix): v for k, v in state.items()}
        if set(stripped) & set(own):
            return stripped
        added = {prefix + k: v for k, v in state.items()}
        if set(added) & set(own):
            return added
    return state
