"""What Triton's dynamic batcher buys with the real models: the generated ``config.pbtxt``
against the same repository with ``dynamic_batching`` removed, in one run.

Exports the classifier and the segmenter at the fast preset's architecture with seeded random
weights (``bench/analyze.py``; the cost of a forward pass does not depend on the weights),
adds each one's int8 variant (:func:`medops.export.quantize.quantize_int8`, calibrated on
LGG training slices) as version 2, writes the repository as the pipeline publishes it
(``medops.export.write_triton_repository``, CPU instances) and starts a real Triton on it twice:
as generated, and with the batcher removed. Clients send one slice per request (binary V2
over HTTP), as the gateway does for one image, from 1, 8 and 32 threads; prints slices per
second of each version with and without the batcher and their ratio. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gateway_harness import TritonServer

from bench.gateway import CONCURRENCY, throughput
from medops.modelspec import INPUT_NAME, OUTPUT_NAME
from pipelines.brain import CLASSIFIER, SEGMENTER


def without_batcher(repo: Path) -> None:
    """The same repository with every config's ``dynamic_batching`` removed."""
    from google.protobuf import text_format

    from medops.export.triton import read_model_config

    for path in repo.glob("*/**/*.pbtxt"):
        config = read_model_config(path)
        config.ClearField("dynamic_batching")
        path.write_text(text_format.MessageToString(config))


def caller(url: str, model: str, version: str, size: int) -> Callable[[], Callable[[], None]]:
    def make() -> Callable[[], None]:
        import tritonclient.http as thttp

        client = thttp.InferenceServerClient(url)
        x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        inp = thttp.InferInput(INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = thttp.InferRequestedOutput(OUTPUT_NAME, binary_data=True)

        def call() -> None:
            client.infer(model, [inp], outputs=[out], model_version=version)

        return call

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per concurrency level")
    args = parser.parse_args()
    from bench.analyze import export_models
    from medops.export import read_model_metadata
    from medops.export.quantize import calibration_sample, quantize_int8
    from medops.export.triton import TritonModel, write_triton_repository
    from medops.imaging.lgg import lgg_patient_volume
    from medops.transforms import preprocess_slices

    here = Path(__file__).resolve().parents[1]
    data_dir = Path(os.environ.get("MEDOPS_DATA_DIR", here.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory(prefix="medops-bench-batching-") as tmp:
        folder = Path(tmp)
        models = export_models(folder, "fast")
        patients = sorted(p for p in (data_dir / "lgg-mri-segmentation").iterdir() if p.is_dir())
        volume = lgg_patient_volume(patients[0]).array
        sizes = {n: int(read_model_metadata(p)["input_size"]) for n, p in models.items()}
        entries = {}
        for name, path in models.items():
            slices = preprocess_slices([volume[:, k] for k in range(volume.shape[1])], sizes[name])
            int8 = quantize_int8(path, folder / f"{name}-int8.onnx", calibration_sample(slices, 64))
            entries[name] = (path, int8.path)
        figures: dict[str, dict[tuple[str, str, int], float]] = {}
        for label in ("batcher", "none"):
            # one repository, two versions per model: 1 float32, 2 int8
            merged = folder / f"repository-{label}"
            write_triton_repository(
                [
                    TritonModel(name=name, version=v, onnx_path=p)
                    for name, (fp32, int8) in entries.items()
                    for v, p in ((1, fp32), (2, int8))
                ],
                merged,
            )
            if label == "none":
                without_batcher(merged)
            server = TritonServer(merged).start()
            try:
                got = figures.setdefault(label, {})
                for name in entries:
                    for version in ("1", "2"):
                        make = caller(server.http_url, name, version, sizes[name])
                        for c in CONCURRENCY:
                            got[(name, version, c)] = throughput(make, c, args.seconds)
            finally:
                server.stop()
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"Triton (CPU) with the generated config.pbtxt vs dynamic_batching removed; fast "
              f"preset architectures, random weights; one slice per request; {os.cpu_count()} "
              f"CPUs, load average {load} (same-run ratios only)")  # fmt: skip
        print(f"{'model':24} {'precision':9} {'clients':>7} {'batcher/s':>10} {'none/s':>8} "
              f"{'ratio':>6}")  # fmt: skip
        for name in (CLASSIFIER, SEGMENTER):
            for version, precision in (("1", "float32"), ("2", "int8")):
                for c in CONCURRENCY:
                    on, off = figures["batcher"][(name, version, c)], figures["none"][
                        (name, version, c)]  # fmt: skip
                    print(f"{name:24} {precision:9} {c:7d} {on:10.1f} {off:8.1f} "
                          f"{on / off:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
