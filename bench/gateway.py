"""Gateway overhead against calling Triton directly and through nginx: same model, payload
and run.

Starts a real Triton (CPU, from .venv-triton), Debian's nginx as a plain reverse proxy in
front of it (HTTP/1.1 keep-alive upstream, ``grpc_pass``; ``nginx_proxy.NginxProxy``) and
gateways in their own processes (forwarding over HTTP or gRPC, each with and without input
tensors in shared memory, and with pass-through off: ``*-decode`` decodes and re-encodes every
tensor, as before it), then measures, for a 1x3x256x256 float32 tensor, per case: p50/p90/p99
latency over HTTP (binary tensors) or gRPC on the three paths (direct, nginx, gateway,
interleaved), the overhead of nginx and of the gateway over direct, the CPU each proxy spends
per request (nginx: master and workers), and throughput at concurrency 1, 8 and 32 as a ratio
to direct. Ends with the issue's goals per case, PASS or MISS. Prints; asserts nothing.
``bench/analyze.py`` measures ``/v1/analyze``.

Models: the registry's champions when ``--registry`` is given, else small contract-abiding
models at 256x256 (``gateway_harness.write_tiny_model``), so the figures isolate the
gateway's own cost.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gateway_harness import (
    TritonServer,
    free_port,
    gateway_process,
    write_repository,
    write_tiny_model,
)
from nginx_proxy import NginxProxy

from medops.modelspec import CHAMPION
from pipelines.brain import BRAIN_MODELS, CLASSIFIER

SHAPE = (1, 3, 256, 256)
PATHS = ("direct", "nginx", "gateway")
CONCURRENCY = (1, 8, 32)


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p90 and p99 in ms."""
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return statistics.median(ordered) * 1000, at(0.90), at(0.99)


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
    make: Callable[[], Callable[[], None]], n: int, pids: Callable[[], list[int]] | None = None
) -> tuple[list[float], float]:
    """``n`` request times in seconds, and the CPU ms the processes ``pids()`` spent per
    request (0 without them)."""
    call = make()
    for _ in range(10):
        call()
    samples = []
    watched = pids() if pids else []
    cpu0 = sum(cpu_seconds(p) for p in watched)
    for _ in range(n):
        t = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t)
    cpu = (sum(cpu_seconds(p) for p in watched) - cpu0) / n * 1000
    return samples, cpu


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
        return {name: reg.resolve(name, CHAMPION).onnx_path for name in BRAIN_MODELS}
    return {
        name: write_tiny_model(name, folder / f"{name}.onnx", size=256, seed=i)
        for i, name in enumerate(BRAIN_MODELS)
    }


@dataclass
class Figures:
    """One path's figures in one case: pooled latency samples, CPU, throughput by concurrency."""

    samples: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    per_second: dict[int, float] = field(default_factory=dict)

    def p(self) -> tuple[float, float, float]:
        return _percentiles(self.samples)

    def cpu(self) -> float:
        return statistics.fmean(self.cpu_ms) if self.cpu_ms else 0.0


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report_goals(name: str, direct: Figures, nginx: Figures, gateway: Figures) -> None:
    """The issue's goals for one case, each with PASS or MISS."""
    d50, g50, n50 = direct.p()[0], gateway.p()[0], nginx.p()[0]
    g_over, n_over = g50 - d50, n50 - d50
    ratio = f"{g_over / n_over:.2f} x" if n_over > 0 else "n/a (nginx adds nothing)"
    rows = [
        (f"gateway p50 overhead {g_over:+.2f} ms over direct", "<= 1 ms", g_over <= 1.0),
        (f"gateway / nginx p50 overhead {ratio} (nginx {n_over:+.2f} ms)", "<= 1.5 x",
         g_over <= 1.5 * max(n_over, 0.0)),
        (f"gateway CPU {gateway.cpu():.2f} ms per request", "<= 0.5 ms", gateway.cpu() <= 0.5),
    ]  # fmt: skip
    for c in (8, 32):
        r = gateway.per_second[c] / direct.per_second[c]
        rows.append((f"throughput at concurrency {c}: {r:.2f} of direct", ">= 0.9", r >= 0.9))
    for text, goal, ok in rows:
        print(f"{name:15} {_verdict(ok):4}  {text} (goal {goal})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per latency figure")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per throughput figure")
    parser.add_argument("--registry", action="store_true", help="serve the registry's champions")
    parser.add_argument("--cases", default="", help="comma-separated subset of the cases to run")
    args = parser.parse_args()

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
            nginx = stack.enter_context(NginxProxy(triton.http_url, triton.grpc_url))
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
            unknown = sorted(set(wanted) - set(setups))
            if unknown:
                raise SystemExit(f"unknown case(s) {unknown}; choose from {list(setups)}")
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
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"model {CLASSIFIER}, input float32 {'x'.join(map(str, SHAPE))}, "
                  f"{'registry champions' if args.registry else 'tiny models'}; "
                  f"Triton {triton.http_url}, nginx {nginx.http_url} / {nginx.grpc_url}; "
                  f"{os.cpu_count()} CPUs, load average {load} (figures from a busy machine "
                  f"are same-run ratios only)")  # fmt: skip

            def callers(name: str) -> dict[str, Callable[[], Callable[[], None]]]:
                """direct, nginx and gateway request makers for ``name``'s transport."""
                transport, http_url, grpc_url, _ = cases[name]
                caller = _http_caller if transport == "http" else _grpc_caller
                urls = (
                    (triton.http_url, nginx.http_url, http_url)
                    if transport == "http"
                    else (triton.grpc_url, nginx.grpc_url, grpc_url)
                )
                keys: tuple[dict[str, str], ...] = ({}, auth, auth)  # nginx forwards the key
                return {
                    path: functools.partial(caller, url, CLASSIFIER, headers)
                    for path, url, headers in zip(PATHS, urls, keys, strict=True)
                }

            def pids_of(name: str, path: str) -> Callable[[], list[int]] | None:
                if path == "gateway":
                    return lambda: [cases[name][3]]
                if path == "nginx":
                    return lambda: [nginx.pid, *nginx.worker_pids()]
                return None

            figures = {name: {path: Figures() for path in PATHS} for name in cases}
            for name in cases:
                makers = callers(name)
                for _round in range(2):  # interleaved, so load changes hit all paths alike
                    for path in PATHS:
                        samples, cpu = latency(
                            makers[path], args.requests // 2, pids_of(name, path)
                        )
                        figures[name][path].samples += samples
                        figures[name][path].cpu_ms.append(cpu)
            print(f"{'case':15} {'path':8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
                  f"{'+p50 ms':>8} {'+p90 ms':>8} {'CPU ms/req':>10}")  # fmt: skip
            for name, by_path in figures.items():
                d50, d90, _ = by_path["direct"].p()
                for path, fig in by_path.items():
                    p50, p90, p99 = fig.p()
                    overhead = (
                        f" {p50 - d50:+8.2f} {p90 - d90:+8.2f} {fig.cpu():10.2f}"
                        if path != "direct"
                        else ""
                    )
                    print(f"{name:15} {path:8} {p50:8.2f} {p90:8.2f} {p99:8.2f}{overhead}")
            print(f"{'case':15} {'conc':>4} {'direct/s':>9} {'nginx/s':>8} {'gateway/s':>10} "
                  f"{'nginx':>6} {'gateway':>8}  (ratios to direct)")  # fmt: skip
            for name in cases:
                makers = callers(name)
                for c in CONCURRENCY:
                    rates: dict[str, list[float]] = {path: [] for path in PATHS}
                    for order in (PATHS, PATHS[::-1]):  # half each way: drift hits all alike
                        for path in order:
                            rates[path].append(throughput(makers[path], c, args.seconds / 2))
                    for path in PATHS:
                        figures[name][path].per_second[c] = statistics.fmean(rates[path])
                    d, n, g = (figures[name][path].per_second[c] for path in PATHS)
                    print(f"{name:15} {c:4d} {d:9.1f} {n:8.1f} {g:10.1f} "
                          f"{n / d:6.2f} {g / d:8.2f}")  # fmt: skip
            print("goals (issue 14), per case:")
            for name, by_path in figures.items():
                report_goals(name, by_path["direct"], by_path["nginx"], by_path["gateway"])


if __name__ == "__main__":
    main()
