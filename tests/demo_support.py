"""A stand-in training component for the console tests. No ``from __future__ import
annotations`` here: kfp reads the parameter types from real annotations."""

from typing import Any


def noisy_training(fail: bool) -> None:
    """kfp's executor dumps, our progress lines, and a failure on request."""
    from pipelines.progress import epoch_reporter

    print("a big blob of component output")
    report = epoch_reporter("segmenter", 2)
    for epoch in (1, 2):
        report(epoch, {"train_loss": 1.0 / epoch, "val_dice": 0.3 * epoch})
    if fail:
        print("the reason it failed")
        raise RuntimeError("training broke")


def noisy_pipeline() -> Any:
    """A one-step pipeline around :func:`noisy_training`, for ``kfp.local``."""
    from kfp import dsl

    step = dsl.component(noisy_training, base_image="python:3.11", install_kfp_package=False)

    @dsl.pipeline(name="noisy")
    def noisy(fail: bool) -> None:
        step(fail=fail).set_caching_options(False)

    return noisy
