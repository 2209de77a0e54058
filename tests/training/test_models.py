from __future__ import annotations

import math

import pytest
import torch

from medops.errors import InvalidInputError
from medops.models import (
    ServingWrapper,
    build_classifier,
    build_segmenter,
    head_parameters,
    set_backbone_frozen,
    start_at_prior,
)


def test_classifier_outputs_one_logit_per_class() -> None:
    model = build_classifier(4, arch="resnet10", widths=(8, 16, 32, 64)).eval()
    assert model(torch.rand(3, 3, 64, 64)).shape == (3, 4)


def test_segmenter_outputs_one_logit_channel_at_input_resolution() -> None:
    model = build_segmenter(channels=(8, 16, 32), num_res_units=1).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("units", [0, 1, 2])
def test_a_prior_start_shifts_every_logit_by_the_shares_log_odds(units: int) -> None:
    torch.manual_seed(0)
    model = build_segmenter(channels=(8, 16, 32), num_res_units=units).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        start_at_prior(model, 0.02)
        shift = model(x) - before
    assert torch.allclose(shift, torch.full_like(shift, math.log(0.02 / 0.98)), atol=1e-5)
    for share in (0.0, 1.0):
        with pytest.raises(InvalidInputError, match="foreground share"):
            start_at_prior(model, share)


def test_serving_wrapper_turns_logits_into_probabilities() -> None:
    cls = ServingWrapper(
        build_classifier(3, arch="resnet10", widths=(8, 8, 8, 8)), "type-classifier"
    )
    probs = cls.eval()(torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
    seg = ServingWrapper(build_segmenter(channels=(8, 16)), "segmenter").eval()
    with torch.no_grad():
        out = seg(torch.rand(1, 3, 32, 32))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_unknown_arch_and_task_are_rejected_by_name() -> None:
    with pytest.raises(InvalidInputError, match="resnet99"):
        build_classifier(arch="resnet99")
    with pytest.raises(InvalidInputError, match="detector"):
        ServingWrapper(build_segmenter(channels=(8, 16)), "detector")


def test_freezing_leaves_only_the_head_trainable() -> None:
    model = build_classifier(2, arch="resnet10", widths=(8, 8, 8, 8))
    head = sum(p.numel() for p in head_parameters(model))
    assert set_backbone_frozen(model, True) == head == 8 * 2 + 2
    assert not model.get_parameter("conv1.weight").requires_grad
    assert model.get_parameter("fc.weight").requires_grad
    total = sum(p.numel() for p in model.parameters())
    assert set_backbone_frozen(model, False) == total


def test_segmenter_head_is_the_decoder() -> None:
    model = build_segmenter(channels=(8, 16, 32), num_res_units=1)
    trainable = set_backbone_frozen(model, True)
    total = sum(p.numel() for p in model.parameters())
    assert 0 < trainable < total
    # the first encoder block is frozen, the last up-sampling block is not
    down, up = model.get_submodule("model.0"), model.get_submodule("model.2")
    assert not any(p.requires_grad for p in down.parameters())
    assert all(p.requires_grad for p in up.parameters())
