"""Model quality on a patient-level held-out split of the LGG data (the pipeline's own steps).

``python -m bench quality`` trains the classifier and the segmenter with the full preset
(``python bench/quality.py --preset fast`` for a quicker look), evaluates them on held-out
test patients and prints mean per-patient Dice, AUC, sensitivity and specificity at the
validation-chosen threshold, calibration (ECE), the two-stage system and training time, with
ratios to the targets (Dice >= 0.80, AUC >= 0.95) and to the published U-Net (0.836 mean
Dice on 110 patients).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

TARGETS = {"dice_patient_mean": 0.80, "auc": 0.95}
PUBLISHED_UNET_DICE = 0.836


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="full", choices=["tiny", "fast", "full"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("MEDOPS_DATA_DIR", "../shared/data")),
    )
    parser.add_argument("--home", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    from medops.evaluation import evaluate_two_stage
    from pipelines import steps

    args = _arguments()
    home = args.home or Path(tempfile.mkdtemp(prefix="medops-bench-quality-"))
    work = home / "bench-quality"
    work.mkdir(parents=True, exist_ok=True)
    lgg = args.data_dir / "lgg-mri-segmentation"
    started = time.perf_counter()
    manifest = steps.ingest_data(str(lgg), str(home))["manifest"]
    splits = str(work / "splits.json")
    counts = steps.split_data(manifest, splits, seed=args.seed)
    steps.validate_data(manifest, splits, str(work / "validation.txt"))
    patients = f"{counts['train']}/{counts['val']}/{counts['test']}"
    print(f"preset {args.preset}; patients train/val/test = {patients} (by patient)")

    results: dict[str, dict[str, float]] = {}
    for task in ("classifier", "segmenter"):
        weights = str(work / f"{task}.pt")
        summary = steps.train(task, args.preset, manifest, splits, str(home), weights)
        headline = steps.evaluate(
            task,
            args.preset,
            manifest,
            splits,
            str(home),
            weights,
            str(work / f"{task}-report.html"),
            str(work / f"{task}-evaluation.json"),
        )
        results[task] = headline | {
            "train_seconds": summary["train_seconds"],
            "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"],
        }

    # the two-stage system: the classifier gates the segmenter, on the same test slices
    from medops.evaluation import predict_probs
    from medops.training import build_model, load_weights

    models = {}
    for task in ("classifier", "segmenter"):
        config = steps.train_config(task, args.preset)
        models[task] = build_model(config)
        load_weights(models[task], str(work / f"{task}.pt"))
        models[task].eval()
    size = steps.train_config("segmenter", args.preset).image_size
    if steps.train_config("classifier", args.preset).image_size == size:
        test = steps.load_split(manifest, splits, "test", size=size, home=str(home))
        threshold = json.loads((work / "classifier-evaluation.json").read_text())["threshold"]
        two_stage = evaluate_two_stage(
            predict_probs(models["classifier"], test.images),
            predict_probs(models["segmenter"], test.images),
            test,
            threshold=threshold,
        ).headline()
    else:
        two_stage = {}

    c, s = results["classifier"], results["segmenter"]
    print(
        f"classifier  AUC {c['auc']:.3f}  sensitivity {c['sensitivity']:.3f}  "
        f"specificity {c['specificity']:.3f}  (threshold {c['threshold']:.3f} from validation)"
        f"  ECE {c['ece']:.3f}  slices {c['n']:.0f}"
    )
    print(
        f"segmenter   Dice per patient mean {s['dice_patient_mean']:.3f} "
        f"(median {s['dice_patient_median']:.3f})  IoU {s['iou_patient_mean']:.3f}  "
        f"HD95 {s['hd95_mean']:.1f} px  patients {s['patients']:.0f}"
    )
    for key, value in two_stage.items():
        print(f"two-stage   {key} {value:.3f}")
    print(
        f"training    classifier {c['train_seconds']:.0f} s ({c['epochs_run']:.0f} epochs), "
        f"segmenter {s['train_seconds']:.0f} s ({s['epochs_run']:.0f} epochs); "
        f"wall {time.perf_counter() - started:.0f} s"
    )
    print(
        f"vs targets  Dice {s['dice_patient_mean'] / TARGETS['dice_patient_mean']:.2f}x of "
        f"0.80, AUC {c['auc'] / TARGETS['auc']:.2f}x of 0.95; Dice "
        f"{s['dice_patient_mean'] / PUBLISHED_UNET_DICE:.2f}x the published U-Net (0.836, "
        "110 patients, 22-fold CV; here 40 patients, one held-out split)"
    )
    print(f"reports     {work}")


if __name__ == "__main__":
    main()
