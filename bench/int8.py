"""The int8 edge variant against its float32 source, in one run: speed and quality.

For the classifier and the segmenter: the champions registered under ``$MEDOPS_HOME`` when
there are, else the fast preset's architectures with seeded random weights (said in the
output; their Dice and AUC mean nothing, only the differences do). Each is quantized the way
``medops export --precision int8`` does (:func:`medops.export.quantize.quantize_int8`,
calibrated on slices of the pipeline's training split), nothing is registered. Prints ONNX
Runtime latency (``--threads`` intra-op threads, batch 1 and 16, rounds interleaved so load
hits both alike, median) and the test split's AUC / Dice of both, with the goals (>= 1.8 x
faster, within 0.01). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medops.modelspec import CHAMPION, INPUT_NAME, OUTPUT_NAME
from pipelines.brain import CLASSIFIER, SEGMENTER

SPEEDUP_GOAL = 1.8
QUALITY_GOAL = 0.01
ROLES = {CLASSIFIER: ("classifier", "auc"), SEGMENTER: ("segmenter", "dice_patient_mean")}


def champions(home: Path) -> dict[str, Path] | None:
    """The registered champions' ONNX files (None unless both models have one)."""
    from medops.registry import Registry
    from medops.settings import MedopsSettings

    settings = MedopsSettings(home=home)
    if not (home / "mlflow.db").is_file():
        return None
    registry = Registry(settings.mlflow_uri)
    found = {}
    for name in ROLES:
        if registry.get_alias(name, CHAMPION) is None:
            return None
        found[name] = registry.resolve(name, CHAMPION).onnx_path
    return found


def latency_ms(paths: dict[str, Path], batch: np.ndarray, threads: int, rounds: int) -> dict:
    """Median ms per call of each file on ``batch``, rounds interleaved."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # threads that spin after a run would take the cores from the next session measured
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {
        k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for k, p in paths.items()
    }
    for s in sessions.values():
        s.run([OUTPUT_NAME], {INPUT_NAME: batch})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run([OUTPUT_NAME], {INPUT_NAME: batch})
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--preset", default="tiny",
                        help="pipeline preset capping the split (tiny: few patients)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="the pipeline's split seed")
    args = parser.parse_args()
    from bench.analyze import export_models
    from medops.export import read_model_metadata
    from medops.export.quantize import calibration_sample, quantize_int8
    from medops.registry import read_onnx_info
    from pipelines import steps
    from pipelines.local import LGG_DIR
    from pipelines.presets import get_preset

    here = Path(__file__).resolve().parents[1]
    data_dir = Path(os.environ.get("MEDOPS_DATA_DIR", here.parent / "shared" / "data"))
    home = Path(os.environ.get("MEDOPS_HOME", here / ".medops"))
    with tempfile.TemporaryDirectory(prefix="medops-bench-int8-") as tmp:
        folder = Path(tmp)
        models = champions(home)
        origin = f"registered champions under {home}"
        if models is None:
            models = export_models(folder, "fast")
            origin = "fast preset architectures with random weights (no champions registered)"
        cache = folder / "cache"
        manifest = steps.ingest_data(str(data_dir / LGG_DIR), str(cache))["manifest"]
        splits = str(folder / "splits.json")
        caps = get_preset(args.preset).max_patients
        steps.split_data(manifest, splits, seed=args.seed, max_patients=caps or None)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"models: {origin}; ONNX Runtime {args.threads} threads; test split of preset "
              f"{args.preset}; {os.cpu_count()} CPUs, load average {load} "
              "(same-run ratios only)")  # fmt: skip
        print(f"{'model':24} {'batch':>5} {'fp32 ms':>9} {'int8 ms':>9} {'speed-up':>9}  "
              f"goal >= {SPEEDUP_GOAL} x")  # fmt: skip
        quality = []
        for name, path in models.items():
            role, metric = ROLES[name]
            size = int(read_model_metadata(path)["input_size"])
            train = steps.load_split(manifest, splits, "train", size=size, home=str(cache))
            int8 = quantize_int8(path, folder / f"{name}-int8.onnx", calibration_sample(
                train.images, 256)).path  # fmt: skip
            for batch in (1, 16):
                x = np.ascontiguousarray(train.images[:batch], dtype=np.float32)
                ms = latency_ms({"fp32": path, "int8": int8}, x, args.threads, args.rounds)
                ratio = ms["fp32"] / ms["int8"]
                print(f"{name:24} {batch:5d} {ms['fp32']:9.2f} {ms['int8']:9.2f} {ratio:8.2f}x  "
                      f"{'PASS' if ratio >= SPEEDUP_GOAL else 'MISS'}")  # fmt: skip
            test = steps.load_split(manifest, splits, "test", size=size, home=str(cache))
            info = read_onnx_info(path, name=name)
            scores = {}
            for label, p in (("fp32", path), ("int8", int8)):
                ev = steps._evaluate_probs(role, steps.onnx_probs(p, test.images), test, info)
                scores[label] = float(ev.headline()[metric])
            quality.append((name, metric, scores))
        print(f"{'model':24} {'metric':18} {'fp32':>7} {'int8':>7} {'diff':>7}  "
              f"goal within {QUALITY_GOAL}")  # fmt: skip
        for name, metric, s in quality:
            diff = s["int8"] - s["fp32"]
            print(f"{name:24} {metric:18} {s['fp32']:7.4f} {s['int8']:7.4f} {diff:+7.4f}  "
                  f"{'PASS' if abs(diff) <= QUALITY_GOAL else 'MISS'}")  # fmt: skip


if __name__ == "__main__":
    main()
