"""Network builders: a MONAI ResNet classifier and a MONAI residual UNet (ResUNet) segmenter.

Both return logits; :class:`ServingWrapper` adds the activation that the exported graph carries
(softmax for classifiers, sigmoid for the segmenter), as :mod:`medops.modelspec` requires.
Nothing here downloads weights: warm starts come from local files (see ``medops.training``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Final, cast

import torch
from monai.networks.nets import ResNet, UNet
from torch import nn

from medops.errors import InvalidInputError

RESNET_LAYERS: Final[dict[str, tuple[int, int, int, int]]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}
"""Basic-block ResNets by name (blocks per stage)."""
DEFAULT_WIDTHS: Final = (64, 128, 256, 512)
SEGMENTER_TASKS: Final = frozenset({"segmenter", "segmentation"})
CLASSIFIER_TASKS: Final = frozenset({"classifier", "type-classifier", "classification"})


def spec_task(task: str) -> str:
    """Map a training (or modelspec) task name to ``medops.task``: classification|segmentation."""
    if task in SEGMENTER_TASKS:
        return "segmentation"
    if task in CLASSIFIER_TASKS:
        return "classification"
    raise InvalidInputError(
        f"task: unknown task {task!r}; expected one of {sorted(SEGMENTER_TASKS | CLASSIFIER_TASKS)}"
    )


def build_classifier(
    num_classes: int = 2,
    *,
    arch: str = "resnet18",
    in_channels: int = 3,
    widths: Sequence[int] = DEFAULT_WIDTHS,
) -> nn.Module:
    """A 2D MONAI ResNet (basic blocks) that outputs ``num_classes`` logits.

    ``widths`` are the four stage widths (64-128-256-512 for the classic ResNet); smaller widths
    give a cheaper network for CPU presets. The stem is a 7x7 stride-2 convolution and max-pool,
    as in the ImageNet ResNet, so cost scales with the input area / 16.
    """
    if arch not in RESNET_LAYERS:
        raise InvalidInputError(f"arch: unknown {arch!r}; expected one of {sorted(RESNET_LAYERS)}")
    if num_classes < 2:
        raise InvalidInputError(f"num_classes: need at least 2 classes, got {num_classes}")
    if len(widths) != 4 or any(w < 1 for w in widths):
        raise InvalidInputError(f"widths: need four positive stage widths, got {list(widths)}")
    return ResNet(
        block="basic",
        layers=list(RESNET_LAYERS[arch]),
        block_inplanes=list(widths),
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        num_classes=num_classes,
    )


def build_segmenter(
    *,
    channels: tuple[int, ...] = (16, 32, 64, 128, 256),
    num_res_units: int = 2,
    in_channels: int = 3,
) -> nn.Module:
    """A 2D MONAI UNet with residual units (a ResUNet) that outputs one tumour logit per pixel.

    Each of the ``len(channels) - 1`` levels halves the resolution, so the input side must be a
    multiple of ``2 ** (len(channels) - 1)``. Instance normalisation keeps it batch-independent.
    """
    if len(channels) < 2 or any(c < 1 for c in channels):
        raise InvalidInputError(
            f"channels: need at least two positive widths, got {list(channels)}"
        )
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=1,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
        norm="instance",
    )


def start_at_prior(segmenter: nn.Module, share: float) -> None:
    """Shift the output bias of a fresh :func:`build_segmenter` network so that every pixel
    starts near the log-odds of ``share``, the foreground's share of the training pixels
    (the prior initialisation of Lin et al. 2017, focal loss). Started near 0.5 everywhere, the
    network first spends many epochs moving that one bias towards the background.

    The UNet ends in a one-channel convolution whose input is added back unchanged (an identity
    residual), or in the one-channel transposed convolution itself: either way nothing follows
    the last one-channel layer, so its bias shifts every logit alike."""
    if not 0 < share < 1:
        raise InvalidInputError(f"share: the foreground share must lie in (0, 1), got {share}")
    final = [
        m
        for m in segmenter.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.out_channels == 1
    ][-1]
    assert final.bias is not None
    with torch.no_grad():
        final.bias += math.log(share / (1 - share))


def segmenter_multiple(model: nn.Module) -> int:
    """The factor the input side of a segmenter must be a multiple of (1 for classifiers)."""
    if isinstance(model, ServingWrapper):
        model = model.model
    if isinstance(model, UNet):
        return int(2 ** len(model.strides))
    return 1


def is_segmenter(model: nn.Module) -> bool:
    """Whether ``model`` (or the model inside a :class:`ServingWrapper`) is a segmenter."""
    if isinstance(model, ServingWrapper):
        return model.task == "segmentation"
    return isinstance(model, UNet)


def head_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters that stay trainable while a warm-started model is frozen.

    The classifier head is the final linear layer; the segmenter "head" is its decoder (the
    up-sampling path), so the frozen encoder keeps the features learned before.
    """
    if isinstance(model, ServingWrapper):
        model = model.model
    if isinstance(model, ResNet):
        assert model.fc is not None
        yield from model.fc.parameters()
    elif isinstance(model, UNet):
        for module in _unet_up_path(model):
            yield from module.parameters()
    else:
        raise InvalidInputError(f"model: cannot find the head of a {type(model).__name__}")


def set_backbone_frozen(model: nn.Module, frozen: bool) -> int:
    """Freeze (or unfreeze) all but :func:`head_parameters`; return the trainable count."""
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in head)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _unet_up_path(model: UNet) -> list[nn.Module]:
    # MONAI builds the UNet recursively: Sequential(down, SkipConnection(sub), up) per level,
    # with the bottom level a single down block.
    ups: list[nn.Module] = []
    level: nn.Module = model.model
    while isinstance(level, nn.Sequential) and len(level) == 3:
        ups.append(level[2])
        level = cast(nn.Module, level[1].submodule)
    return ups


class ServingWrapper(nn.Module):
    """Wraps a logits model so its output is probabilities, as the serving contract requires.

    ``task`` is a training task (classifier, type-classifier, segmenter) or a modelspec task
    (classification, segmentation): softmax over classes for classifiers, sigmoid for the segmenter.
    Logits are divided by ``temperature`` (calibration fitted on validation data) first;
    ``flip_average`` averages the logits of the image and of its left-right mirror (test-time
    augmentation; the mirrored output is mirrored back).
    """

    def __init__(
        self, model: nn.Module, task: str, *, temperature: float = 1.0, flip_average: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.task = spec_task(task)
        self.temperature = float(temperature)
        self.flip_average = flip_average

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(image)
        if self.flip_average:
            mirrored = self.model(torch.flip(image, dims=[-1]))
            if self.task == "segmentation":
                mirrored = torch.flip(mirrored, dims=[-1])
            logits = (logits + mirrored) / 2
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.task == "segmentation":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)


__all__ = [
    "RESNET_LAYERS",
    "ServingWrapper",
    "build_classifier",
    "build_segmenter",
    "head_parameters",
    "is_segmenter",
    "segmenter_multiple",
    "set_backbone_frozen",
    "spec_task",
]
