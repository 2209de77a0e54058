"""Gateway overhead against calling Triton directly: same model, payload and run.

Starts a real Triton (CPU, from .venv-triton) and gateways in their own processes
(forwarding over HTTP or gRPC, each with and without input tensors in shared memory, and with
pass-through off: ``*-decode`` decodes and re-encodes every tensor, as before it), then
measures, for a 1x3x256x256 float32 tensor:
p50/p99 latency over HTTP (binary tensors) and gRPC, direct and through the gateway, and
throughput at concurrency 1, 8 and 32. Also ``/v1/analyze`` latency for one LGG slice and for
one patient's DICOM series. Prints figures and ratios; asserts nothing.

Models: the registry's champions when ``--registry`` is given, else small contract-abiding
models at 256x256 (``gateway_harness.write_tiny_model``), so the figures isolate the
gateway's own cost.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gateway_harness import (
    TritonServer,
    free_port,
    gateway_process,
    write_repository,
    write_tiny_model,
)

from medops.modelspec import CHAMPION, CLASSIFIER, MODEL_NAMES

SHAPE = (1, 3, 256, 256)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50 * 1000, p99 * 1000


def _http_caller(url: str, model: str, headers: dict[str, str]) -> Callable[[], None]:
    import tritonclient.http as thttp

    client = thttp.InferenceServerClient(url)
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    inp = thttp.InferInput("image", list(SHAPE), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = thttp.InferRequestedOutput("probabilities", binary_data=True)

    def call() -> None:
        client.infer(model, [inp], outputs=[out], headers=dict(headers))

    return call


def _grpc_caller(url: str, model: str, headers: dict[str, str]) -> Callable[[], None]:
    import tritonclient.grpc as tgrpc

    client = tgrpc.InferenceServerClient(url)
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    inp = tgrpc.InferInput("image", list(SHAPE), "FP32")
    inp.set_data_from_numpy(x)

    def call() -> None:
        client.infer(model, [inp], headers=dict(headers))

    return call


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(
    make: Callable[[], Callable[[], None]], n: int, pid: int | None = None
) -> tuple[float, float, float]:
    """p50 and p99 in ms, and the CPU ms ``pid`` spent per request (0 without a pid)."""
    call = make()
    for _ in range(10):
        call()
    samples = []
    cpu0 = cpu_seconds(pid) if pid else 0.0
    for _ in range(n):
        t = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t)
    cpu = (cpu_seconds(pid) - cpu0) / n * 1000 if pid else 0.0
    return (*_percentiles(samples), cpu)


def throughput(make: Callable[[], Callable[[], None]], concurrency: int, seconds: float) -> float:
    counts = [0] * concurrency
    warm = threading.Barrier(concurrency + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        call = make()  # tritonclient.http clients belong to the thread that made them
        call()
        warm.wait()
        while not stop.is_set():
            call()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    warm.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - start
    for t in threads:
        t.join()
    return sum(counts) / elapsed


def _models(folder: Path, registry: bool) -> dict[str, Path]:
    if registry:
        from medops.registry import Registry
        from medops.settings import MedopsSettings

        reg = Registry(MedopsSettings().mlflow_uri)
        return {name: reg.resolve(name, CHAMPION).onnx_path for name in MODEL_NAMES}
    return {
        name: write_tiny_model(name, folder / f"{name}.onnx", size=256, seed=i)
        for i, name in enumerate(MODEL_NAMES)
    }


def _analyze_inputs(data_dir: Path, folder: Path) -> tuple[bytes, bytes, int]:
    from medops.imaging.dicom import write_dicom_series
    from medops.imaging.lgg import lgg_patient_volume

    lgg = data_dir / "lgg-mri-segmentation"
    patient = sorted(p for p in lgg.iterdir() if p.is_dir())[0]
    tif = next(p for p in sorted(patient.glob("*.tif")) if not p.name.endswith("_mask.tif"))
    volume = lgg_patient_volume(patient)
    paths = write_dicom_series(volume, folder / "dicom")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in paths:
            z.write(p, arcname=p.name)
    return tif.read_bytes(), buf.getvalue(), volume.num_slices


def _analyze_latency(
    url: str, headers: dict[str, str], body: bytes, ctype: str, n: int
) -> tuple[float, float]:
    import httpx

    with httpx.Client(timeout=120) as client:
        samples = []
        for i in range(n + 2):
            t = time.perf_counter()
            r = client.post(
                f"http://{url}/v1/analyze?segment=always",
                content=body,
                headers={**headers, "content-type": ctype},
            )
            r.raise_for_status()
            if i >= 2:
                samples.append(time.perf_counter() - t)
    return _percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per latency figure")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per throughput figure")
    parser.add_argument("--registry", action="store_true", help="serve the registry's champions")
    parser.add_argument("--cases", default="", help="comma-separated subset of the cases to run")
    args = parser.parse_args()
    data_dir = Path(
        os.environ.get("MEDOPS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
    )

    with tempfile.TemporaryDirectory(prefix="medops-bench-") as tmp:
        folder = Path(tmp)
        models = _models(folder, args.registry)
        repo = write_repository(folder / "repository", {n: (p, 1) for n, p in models.items()})
        model_args = [a for n, p in models.items() for a in ("--model-file", f"{n}={p}")]
        home = folder / "home"
        env = {
            "MEDOPS_HOME": str(home),
            "MEDOPS_GATEWAY_POLL_SECONDS": "0",
            "MEDOPS_GATEWAY_LOG_LEVEL": "WARNING",
        }
        with TritonServer(repo) as triton, contextlib.ExitStack() as stack:
            # (client transport, gateway backend, shared memory) per case
            setups = {
                "HTTP": ("http", "triton-http", False),
                "HTTP-decode": ("http", "triton-http", False),
                "HTTP+shm": ("http", "triton-http", True),
                "gRPC": ("grpc", "triton-grpc", False),
                "gRPC-decode": ("grpc", "triton-grpc", False),
                "gRPC+shm": ("grpc", "triton-grpc", True),
                "HTTP+shm+uvloop": ("http", "triton-http", True),
            }
            wanted = [c for c in args.cases.split(",") if c] or list(setups)
            cases = {}
            for name, (transport, backend, shm) in setups.items():
                if name not in wanted:
                    continue
                port, grpc_port = free_port(), free_port()
                backend_url = triton.http_url if backend == "triton-http" else triton.grpc_url
                argv = ["--host", "127.0.0.1", "--port", str(port), "--grpc-port",
                        str(grpc_port), "--backend", backend, "--backend-url", backend_url,
                        *model_args]  # fmt: skip
                extra = {"MEDOPS_GATEWAY_SHARED_MEMORY": "true"} if shm else {}
                if name.endswith("uvloop"):
                    extra["MEDOPS_GATEWAY_UVLOOP"] = "true"
                if name.endswith("decode"):
                    extra["MEDOPS_GATEWAY_PASSTHROUGH"] = "false"
                proc = stack.enter_context(
                    gateway_process(argv, {**env, **extra}, port, folder / f"{name}.log")
                )
                cases[name] = (transport, f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", proc.pid)
            key = json.loads((home / "credentials.json").read_text())["client"]
            auth = {"authorization": f"Bearer {key}"}
            print(f"model {CLASSIFIER}, input float32 {'x'.join(map(str, SHAPE))}, "
                  f"{'registry champions' if args.registry else 'tiny models'}; "
                  f"Triton {triton.http_url}; {os.cpu_count()} CPUs")  # fmt: skip

            def callers(
                name: str,
            ) -> tuple[Callable[[], Callable[[], None]], Callable[[], Callable[[], None]]]:
                transport, http_url, grpc_url, _ = cases[name]
                if transport == "http":
                    return (lambda: _http_caller(triton.http_url, CLASSIFIER, {}),
                            lambda: _http_caller(http_url, CLASSIFIER, auth))  # fmt: skip
                return (lambda: _grpc_caller(triton.grpc_url, CLASSIFIER, {}),
                        lambda: _grpc_caller(grpc_url, CLASSIFIER, auth))  # fmt: skip

            print(f"{'case':15} {'path':8} {'p50 ms':>8} {'p99 ms':>8}")
            for name in cases:
                direct, via = callers(name)
                for _round in range(2):  # interleaved, so load changes hit both alike
                    d50, d99, _ = latency(direct, args.requests // 2)
                    g50, g99, cpu = latency(via, args.requests // 2, cases[name][3])
                    print(f"{name:15} {'direct':8} {d50:8.2f} {d99:8.2f}")
                    print(f"{name:15} {'gateway':8} {g50:8.2f} {g99:8.2f}   "
                          f"overhead p50 {g50 - d50:+.2f} ms, p99 {g99 - d99:+.2f} ms; "
                          f"gateway CPU {cpu:.2f} ms per request")  # fmt: skip
            print(f"{'case':15} {'conc':>4} {'direct/s':>9} {'gateway/s':>10} {'ratio':>6}")
            for name in cases:
                direct, via = callers(name)
                for c in (1, 8, 32):
                    d = throughput(direct, c, args.seconds)
                    g = throughput(via, c, args.seconds)
                    print(f"{name:15} {c:4d} {d:9.1f} {g:10.1f} {g / d:6.2f}")
            gw_http = next(iter(cases.values()))[1]
            tif, series, slices = _analyze_inputs(data_dir, folder)
            s50, s99 = _analyze_latency(gw_http, auth, tif, "image/tiff", 20)
            v50, v99 = _analyze_latency(gw_http, auth, series, "application/zip", 5)
            print(f"/v1/analyze one LGG slice (tif, classify and segment): "
                  f"p50 {s50:.1f} ms, p99 {s99:.1f} ms")  # fmt: skip
            per_slice = v50 / slices
            print(
                f"/v1/analyze one patient ({slices}-slice DICOM series zip): p50 {v50:.1f} ms "
                f"({per_slice:.1f} ms per slice), p99 {v99:.1f} ms"
            )


if __name__ == "__main__":
    main()
