"""Model quality of a recipe on the LGG development patients, judged as it serves.

``python -m bench quality`` runs the fast preset's 5-fold patient-level cross-validation.
``python bench/quality.py --preset full --folds 1`` trains the full preset once and judges it
on the pipeline's held-out split (a quarter of the patients). ``--seeds 0,1,2`` repeats the
run over seeds and prints the spread; ``--set segmenter.test_time_flip=false`` changes one
training setting (an ablation). Every table gives the served two-stage answer's mean
per-patient volume Dice with a bootstrap 95 % interval over patients, the segmenter alone,
the plain gate (the classifier's threshold, no post-processing), slice AUC, sensitivity and
specificity at the validation-chosen operating point, ECE before and after calibration and
the per-fold spread, with ratios to the targets and to the published U-Net.

``--task tasks/kvasir-polyp-segmenter.yaml`` judges a task file's model the same way: folds
by its groups, mean Dice and IoU per group (an image, or images kept together) with
bootstrap intervals, against the task's published reference where one is known
(``--set task.epochs=40`` changes one of its training settings).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

TARGETS = {
    "fast": {"two_stage_dice_patient_mean": 0.75, "auc": 0.93, "ece": 0.05},
    "full": {"two_stage_dice_patient_mean": 0.85, "auc": 0.97, "ece": 0.05},
}
PUBLISHED_UNET_DICE = 0.836
"""Buda et al. 2019: mean per-patient Dice of a U-Net on all 110 LGG patients (22-fold CV)."""
PUBLISHED_TASK_DICE = {"kvasir-polyp-segmenter": (0.818, "U-Net", 0.898, "PraNet")}
"""Kvasir-SEG: mean Dice per image of a U-Net (Jha et al. 2020) and of PraNet (Fan et al.
2020), the published best this project compares with."""


def _setting(text: str) -> tuple[str, str, Any]:
    try:
        target, value = text.split("=", 1)
        task, key = target.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected task.key=value") from None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return task, key, parsed


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="fast", choices=["tiny", "fast", "full"])
    parser.add_argument("--folds", type=int, default=5, help="1: the single held-out split")
    parser.add_argument("--seeds", default="0", help="comma-separated split seeds")
    parser.add_argument("--set", dest="settings", type=_setting, action="append", default=[])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("MEDOPS_DATA_DIR", "../shared/data")),
    )
    parser.add_argument("--home", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--task", type=Path, default=None, help="a task file instead of LGG")
    return parser.parse_args()


def main() -> None:
    from pipelines.crossval import cross_validate

    args = _arguments()
    home = args.home or Path(tempfile.mkdtemp(prefix="medops-bench-quality-"))
    overrides: dict[str, dict[str, Any]] = {}
    for task, key, value in args.settings:
        overrides.setdefault(task, {})[key] = value
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.task is not None:
        _task_quality(args, home, overrides, seeds)
        return
    lgg = args.data_dir / "lgg-mri-segmentation"
    runs = []
    for seed in seeds:
        result = cross_validate(
            args.preset,
            lgg,
            home,
            folds=args.folds,
            seed=seed,
            work=home / "bench-quality" / f"{args.preset}-k{args.folds}-seed{seed}",
            overrides=overrides,
            on_fold=lambda fold: print(f"  fold {fold.fold} done", flush=True),
        )
        print(result.to_text(), flush=True)
        runs.append(result.summary())
        _versus_targets(args.preset, result.summary())
    if len(runs) > 1:
        dice = [r["pooled_two_stage_dice"]["mean"] for r in runs]
        auc = [r["auc"]["mean"] for r in runs]
        print(
            f"over seeds {seeds}: served Dice {', '.join(f'{d:.3f}' for d in dice)} "
            f"(spread {max(dice) - min(dice):.3f}); AUC {', '.join(f'{a:.3f}' for a in auc)}"
        )
    if overrides:
        print(f"settings changed from the preset: {json.dumps(overrides)}")
    print(f"reports and weights under {home / 'bench-quality'}")


def _task_quality(
    args: argparse.Namespace, home: Path, overrides: dict[str, dict[str, Any]], seeds: list[int]
) -> None:
    from medops.tasks import read_task
    from pipelines.crossval import cross_validate

    spec = read_task(args.task)
    for seed in seeds:
        result = cross_validate(
            args.preset,
            args.data_dir / spec.data.path,
            home,
            folds=args.folds,
            seed=seed,
            work=home / "bench-quality" / f"{spec.name}-{args.preset}-k{args.folds}-seed{seed}",
            overrides=overrides,
            on_fold=lambda fold: print(f"  fold {fold.fold} done", flush=True),
            task=spec,
        )
        print(result.to_text(), flush=True)
        dice = result.summary().get("pooled_segmenter_dice")
        published = PUBLISHED_TASK_DICE.get(spec.name)
        if dice and published:
            unet, unet_name, best, best_name = published
            print(
                f"  vs published: mean Dice {dice['mean']:.3f} = {dice['mean'] / unet:.2f}x "
                f"{unet_name} ({unet}), {dice['mean'] / best:.2f}x {best_name} ({best})",
                flush=True,
            )
    if overrides:
        print(f"settings changed from the preset: {json.dumps(overrides)}")
    print(f"reports and weights under {home / 'bench-quality'}")


def _versus_targets(preset: str, summary: dict[str, dict[str, float]]) -> None:
    targets = TARGETS.get(preset)
    dice = summary["pooled_two_stage_dice"]["mean"]
    parts = [f"served Dice {dice / PUBLISHED_UNET_DICE:.2f}x the published U-Net (0.836)"]
    if targets:
        parts.append(
            f"{dice / targets['two_stage_dice_patient_mean']:.2f}x the Dice target "
            f"{targets['two_stage_dice_patient_mean']}"
        )
        parts.append(f"AUC {summary['auc']['mean'] / targets['auc']:.2f}x of {targets['auc']}")
        parts.append(f"ECE {summary['ece']['mean']:.3f} (target <= {targets['ece']})")
    print("  vs targets: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
