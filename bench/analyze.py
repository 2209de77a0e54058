"""``/v1/analyze`` against the raw compute of the models it ran: same inputs, threads and run.

Exports real-architecture networks with random weights (``medops.training`` preset widths, the
pipeline's ``medops.export``; seconds, no training), starts the gateway in its own process on
the in-process ONNX Runtime backend with the prediction log on, and times, for one 256x256 LGG
slice (PNG) and a 155-slice NIfTI volume (LGG patients' slices stacked), ``segment=always``
and ``segment=auto``. Interleaved with every request, this process runs the models the gateway
ran (the classifier on every slice, the segmenter on the slices the answer marks segmented) in
ONNX Runtime on the same preprocessed batches (``preprocess_slice``, ``analyze_batch_size``
slices per call) with the same thread count: the raw compute. Prints p50 per slice of both,
their ratio against the goal (<= 1.15 x), the gateway's peak RSS for the volume and the mean
per-stage time from its ``/metrics`` (``medops_request_duration_seconds``). Asserts nothing.

Random weights do not flag a realistic share of slices, so the classifier's threshold is set
to flag as many slices of the volume as carry tumour in the LGG masks (``auto`` then segments
that share); nor do they draw realistic masks (speckle over most of the slice, thousands of
runs where a tumour has a few), which inflates the mask encoding and the log. ``--champions``
serves the trained champions of the registry at ``MEDOPS_TRACKING_URI`` (or ``MEDOPS_HOME``'s,
e.g. after ``make demo``) instead, as a deployment does: from the registry, with their
thresholds, rules and drift references (so the log's embeddings are computed too). The table
says how many runs a segmented slice's mask has on average.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gateway_harness import TASKS, free_port, gateway_process

from medops.modelspec import INPUT_NAME, META_THRESHOLD, OUTPUT_NAME
from pipelines.brain import CLASSIFIER, SEGMENTER

VOLUME_SLICES = 155
BATCH = 16
"""The gateway's default ``analyze_batch_size``; both sides batch alike."""
STAGES = ("decode", "preprocess", "infer", "postprocess", "total")
GOAL = 1.15
NIFTI_GZ = "application/gzip"


def export_models(folder: Path, preset: str) -> dict[str, Path]:
    """Both served models at the preset's architecture, widths, input size and flip averaging,
    with seeded random weights."""
    import torch

    from medops.export import export_onnx
    from medops.models import ServingWrapper
    from medops.training.config import TrainConfig
    from medops.training.loop import build_model

    paths = {}
    for task, name in (("classifier", CLASSIFIER), ("segmenter", SEGMENTER)):
        config = TrainConfig.preset(task, preset)  # type: ignore[arg-type]
        torch.manual_seed(0)
        net = ServingWrapper(build_model(config), task, flip_average=config.test_time_flip)
        result = export_onnx(
            net,
            folder / f"{name}.onnx",
            task=task,
            input_size=config.image_size,
            classes=TASKS[name][1],
            threshold=0.5,
            dataset_version="bench-random-weights",
        )
        paths[name] = result.path
    return paths


def champions(folder: Path, home: Path) -> tuple[dict[str, Path], str]:
    """The registry's champion ONNX files of both served models and its tracking URI; their
    drift references are copied into the gateway's ``home`` (its log stays there too)."""
    from medops.monitoring import reference_dir
    from medops.registry import Registry
    from medops.settings import MedopsSettings

    settings = MedopsSettings()
    registry = Registry(settings.mlflow_uri, cache_dir=folder / "registry-cache")
    models = {}
    for name in (CLASSIFIER, SEGMENTER):
        resolved = registry.resolve(name, "champion")
        models[name] = resolved.onnx_path
        source = reference_dir(name, resolved.info.version, home=settings.home)
        if source.is_dir():
            shutil.copytree(source, reference_dir(name, resolved.info.version, home=home))
    return models, settings.mlflow_uri


def set_threshold(path: Path, threshold: float) -> None:
    import onnx

    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == META_THRESHOLD:
            prop.value = repr(float(threshold))
    onnx.save(proto, str(path))


def lgg_inputs(lgg: Path, folder: Path) -> tuple[bytes, Path, float]:
    """One slice as PNG (the first patient's slice with the most tumour), a NIfTI volume of
    :data:`VOLUME_SLICES` slices stacked from the first patients, and the share of the
    volume's slices that carry tumour."""
    from PIL import Image as PILImage

    from medops.imaging.formats import write_nifti
    from medops.imaging.image import Image
    from medops.imaging.lgg import lgg_patient_mask, lgg_patient_volume

    patients = sorted(p for p in lgg.iterdir() if p.is_dir())
    volumes, masks, count = [], [], 0
    for patient in patients:
        volumes.append(lgg_patient_volume(patient).array)
        masks.append(lgg_patient_mask(patient).array)
        count += volumes[-1].shape[1]
        if count >= VOLUME_SLICES:
            break
    array = np.concatenate(volumes, axis=1)[:, :VOLUME_SLICES]
    mask = np.concatenate(masks, axis=1)[:, :VOLUME_SLICES]
    tumour_share = float(mask.reshape(VOLUME_SLICES, -1).any(axis=1).mean())
    nifti = write_nifti(Image(array, np.diag([1.0, 1.0, 2.5, 1.0])), folder / "volume.nii.gz")
    first = masks[0][0].reshape(masks[0].shape[1], -1).sum(axis=1)
    best = int(first.argmax())
    png = io.BytesIO()
    PILImage.fromarray(np.moveaxis(volumes[0][:, best], 0, -1)).save(png, format="PNG")
    return png.getvalue(), nifti, tumour_share


class RawCompute:
    """The two models in this process, as the gateway's ONNX backend opens them."""

    def __init__(self, models: dict[str, Path], threads: int, spinning: bool = False) -> None:
        import onnxruntime as ort

        from medops.export import read_model_metadata

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
        self.sessions = {
            name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
            for name, p in models.items()
        }
        self.sizes = {name: int(read_model_metadata(p)["input_size"]) for name, p in models.items()}

    def inputs(self, body: bytes, content_type: str) -> dict[str, list[np.ndarray]]:
        """Each model's preprocessed slices, read and preprocessed as the gateway does."""
        from medops.deid import UIDMap
        from medops.imaging.upload import Upload, read_upload
        from medops.transforms import preprocess_slice

        image = read_upload(Upload((body,), None, content_type), UIDMap(b"bench")).image
        return {
            name: [preprocess_slice(image.slice(k), size) for k in range(image.num_slices)]
            for name, size in self.sizes.items()
        }

    def run(self, name: str, slices: list[np.ndarray]) -> float:
        """Seconds to run ``name`` on ``slices`` in batches of :data:`BATCH`."""
        session = self.sessions[name]
        batches = [
            np.stack(slices[i : i + BATCH]).astype(np.float32, copy=False)
            for i in range(0, len(slices), BATCH)
        ]
        start = time.perf_counter()
        for batch in batches:
            session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return time.perf_counter() - start


def stage_totals(url: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) per stage of the classifier-labelled analyze requests."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{url}/metrics", timeout=30).text
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "medops_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != CLASSIFIER:
                continue
            kind = sample.name.rsplit("_", 1)[-1]
            if kind in ("sum", "count"):
                entry = totals.setdefault(sample.labels["stage"], [0.0, 0.0])
                entry[0 if kind == "sum" else 1] += sample.value
    return {stage: (s, c) for stage, (s, c) in totals.items()}


def memory_mib(pid: int) -> tuple[float, float]:
    """Current and peak resident memory (VmRSS, VmHWM) of ``pid`` in MiB."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    rss, peak = (int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    return rss, peak


@dataclass
class Scenario:
    label: str
    body: bytes
    content_type: str
    segment: str
    requests: int
    gateway_s: list[float] = field(default_factory=list)
    raw_s: list[float] = field(default_factory=list)
    segmented: int = 0
    slices: int = 0
    runs: float = 0.0
    """Mean RLE runs of a segmented slice's mask in the answer."""
    stages: dict[str, float] = field(default_factory=dict)


def run_scenario(
    scenario: Scenario, url: str, headers: dict[str, str], raw: RawCompute, warmup: int = 1
) -> None:
    import httpx

    inputs = raw.inputs(scenario.body, scenario.content_type)
    with httpx.Client(timeout=600) as client:

        def analyze() -> dict[str, object]:
            r = client.post(
                f"http://{url}/v1/analyze?segment={scenario.segment}",
                content=scenario.body,
                headers={**headers, "content-type": scenario.content_type},
            )
            r.raise_for_status()
            answer: dict[str, object] = r.json()
            return answer

        for _ in range(warmup):
            analyze()
        before = stage_totals(url)
        for _ in range(scenario.requests):
            start = time.perf_counter()
            answer = analyze()
            scenario.gateway_s.append(time.perf_counter() - start)
            slices = answer["slices"]
            assert isinstance(slices, list)
            wanted = [k for k, s in enumerate(slices) if s["segmented"]]
            scenario.slices, scenario.segmented = len(slices), len(wanted)
            masks = answer["mask"]["slices"]  # type: ignore[index]
            scenario.runs = statistics.fmean([len(masks[k]["counts"]) for k in wanted] or [0])
            # the models it ran, on the same batches, right after it (so load hits both alike)
            seconds = raw.run(CLASSIFIER, inputs[CLASSIFIER])
            if wanted:
                seconds += raw.run(SEGMENTER, [inputs[SEGMENTER][k] for k in wanted])
            scenario.raw_s.append(seconds)
        after = stage_totals(url)
    for stage in STAGES:
        s0, c0 = before.get(stage, (0.0, 0.0))
        s1, c1 = after.get(stage, (0.0, 0.0))
        if c1 > c0:
            scenario.stages[stage] = (s1 - s0) / (c1 - c0) * 1000


def report(scenarios: list[Scenario]) -> None:
    print(f"{'input':22} {'segment':7} {'seg/slices':>10} {'runs':>6} {'gateway p50':>11} "
          f"{'raw p50':>8} {'per slice':>10} {'raw/slice':>10} {'ratio':>6}  "
          f"goal <= {GOAL} x")  # fmt: skip
    for s in scenarios:
        g, r = statistics.median(s.gateway_s) * 1000, statistics.median(s.raw_s) * 1000
        ratio = g / r
        print(f"{s.label:22} {s.segment:7} {f'{s.segmented}/{s.slices}':>10} {s.runs:6.0f} "
              f"{g:9.1f}ms {r:6.1f}ms {g / s.slices:8.2f}ms {r / s.slices:8.2f}ms "
              f"{ratio:6.2f}  {'PASS' if ratio <= GOAL else 'MISS'}")  # fmt: skip
    print("mean ms per request by stage (gateway /metrics, medops_request_duration_seconds):")
    print(f"{'input':22} {'segment':7} " + " ".join(f"{stage:>11}" for stage in STAGES)
          + f" {'raw compute':>11}")  # fmt: skip
    for s in scenarios:
        cells = " ".join(f"{s.stages.get(stage, float('nan')):11.1f}" for stage in STAGES)
        print(f"{s.label:22} {s.segment:7} {cells} {statistics.fmean(s.raw_s) * 1000:11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("fast", "full"), default="fast",
                        help="architecture and input size of the exported models")  # fmt: skip
    parser.add_argument("--slice-requests", type=int, default=30)
    parser.add_argument("--volume-requests", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--spinning",
        action="store_true",
        help="ONNX Runtime threads that spin while waiting (raw and gateway alike; "
        "the gateway's default is off)",
    )
    parser.add_argument(
        "--champions",
        action="store_true",
        help="serve the registry's trained champions instead of random weights",
    )
    parser.add_argument("--no-prediction-log", action="store_true",
                        help="switch the prediction log off, to see its cost")  # fmt: skip
    args = parser.parse_args()
    data_dir = Path(
        os.environ.get("MEDOPS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
    )

    with tempfile.TemporaryDirectory(prefix="medops-bench-analyze-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        png, nifti, tumour_share = lgg_inputs(data_dir / "lgg-mri-segmentation", folder)
        volume = nifti.read_bytes()
        home = folder / "home"
        registry: dict[str, str] = {}
        if args.champions:
            models, uri = champions(folder, home)
            registry = {"MEDOPS_GATEWAY_TRACKING_URI": uri}
            origin = "the registry's trained champions"
        else:
            models = export_models(folder, args.preset)
            origin = f"{args.preset} preset architectures, random weights"
            raw = RawCompute(models, args.threads, args.spinning)
            # flag as many volume slices as carry tumour (random weights flag all or none)
            probs = np.concatenate(
                [
                    raw.sessions[CLASSIFIER].run([OUTPUT_NAME], {INPUT_NAME: np.stack(part)})[0]
                    for part in _chunks(raw.inputs(volume, NIFTI_GZ)[CLASSIFIER])
                ]
            )[:, -1]
            set_threshold(models[CLASSIFIER], float(np.quantile(probs, 1 - tumour_share)))
        prepared = time.perf_counter() - t
        raw = RawCompute(models, args.threads, args.spinning)
        port = free_port()
        env = {
            "MEDOPS_HOME": str(home),
            "MEDOPS_GATEWAY_POLL_SECONDS": "0",
            "MEDOPS_GATEWAY_LOG_LEVEL": "WARNING",
            "MEDOPS_GATEWAY_MODELS": json.dumps([CLASSIFIER, SEGMENTER]),
            "MEDOPS_GATEWAY_ONNX_THREADS": str(args.threads),
            "MEDOPS_GATEWAY_ONNX_SPINNING": "true" if args.spinning else "false",
            "MEDOPS_GATEWAY_ANALYZE_BATCH_SIZE": str(BATCH),
            "MEDOPS_GATEWAY_PREDICTION_LOG": "false" if args.no_prediction_log else "true",
            **registry,
        }
        files = [] if registry else [f"{n}={p}" for n, p in models.items()]
        argv = ["--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(free_port()),
                "--backend", "onnx", *[a for f in files for a in ("--model-file", f)]]  # fmt: skip
        with contextlib.ExitStack() as stack:
            proc = stack.enter_context(gateway_process(argv, env, port, folder / "gateway.log"))
            url = f"127.0.0.1:{port}"
            key = json.loads((home / "credentials.json").read_text())["client"]
            headers = {"authorization": f"Bearer {key}"}
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            sizes = ", ".join(f"{n} {s} px" for n, s in raw.sizes.items())
            print(f"models: {origin} ({sizes}; ready in {prepared:.0f} s); "
                  f"ONNX Runtime {args.threads} threads, "
                  f"batches of {BATCH}; prediction log "
                  f"{'off' if args.no_prediction_log else 'on'}; {os.cpu_count()} CPUs, "
                  f"load average {load} (on a busy machine: same-run ratios only)")  # fmt: skip
            slice_runs = [
                Scenario("one slice (PNG)", png, "image/png", mode, args.slice_requests)
                for mode in ("always", "auto")
            ]
            volume_runs = [
                Scenario(
                    f"{VOLUME_SLICES} slices (NIfTI)", volume, NIFTI_GZ, mode, args.volume_requests
                )
                for mode in ("always", "auto")
            ]
            for s in slice_runs:
                run_scenario(s, url, headers, raw)
            rss_before, peak_before = memory_mib(proc.pid)
            for s in volume_runs:
                run_scenario(s, url, headers, raw)
            rss_after, peak_after = memory_mib(proc.pid)
            report([*slice_runs, *volume_runs])
            print(f"gateway memory: RSS {rss_before:.0f} MiB after the slices (peak "
                  f"{peak_before:.0f} MiB); peak {peak_after:.0f} MiB with the "
                  f"{VOLUME_SLICES}-slice volume (RSS now {rss_after:.0f} MiB)")  # fmt: skip


def _chunks(slices: list[np.ndarray]) -> list[list[np.ndarray]]:
    return [slices[i : i + BATCH] for i in range(0, len(slices), BATCH)]


if __name__ == "__main__":
    main()
