"""``medops serve``: the gateway's command, registered through ``medops.commands``."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import click

from .settings import BackendKind, GatewaySettings


@click.command("serve")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="REST port (default 8080).")
@click.option("--grpc-port", type=int, default=None, help="gRPC port (default 8081).")
@click.option(
    "--backend",
    type=click.Choice(["onnx", "triton-http", "triton-grpc", "v2-http"]),
    default=None,
    help="Where inference runs (default: in-process ONNX Runtime).",
)
@click.option("--backend-url", default=None, help="host:port of a remote backend.")
@click.option(
    "--model-file",
    "model_files",
    multiple=True,
    metavar="NAME=PATH",
    help="Serve an ONNX file as model NAME instead of the registry's champion (repeatable).",
)
@click.option("--no-auth", is_flag=True, help="Accept requests without API keys (local only).")
def serve(
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    backend: BackendKind | None,
    backend_url: str | None,
    model_files: tuple[str, ...],
    no_auth: bool,
) -> None:
    """Serve the models over the Open Inference Protocol (REST + gRPC) and /v1/analyze."""
    from medops.service.logs import configure_logging
    from medops.transforms import limit_resize_threads

    from .app import build_gateway

    overrides: dict[str, object] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "grpc_port": grpc_port,
            "backend": backend,
            "backend_url": backend_url,
        }.items()
        if v is not None
    }
    if model_files:
        pairs = [m.split("=", 1) for m in model_files]
        if any(len(p) != 2 for p in pairs):
            raise click.BadParameter("expected NAME=PATH", param_hint="--model-file")
        overrides["model_files"] = {name: Path(path) for name, path in pairs}
    if no_auth:
        overrides["auth_enabled"] = False
    settings = GatewaySettings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_level)
    # process-wide (torch's threads): set here, where the process is the gateway's own
    limit_resize_threads(settings.preprocess_threads)
    gateway = build_gateway(settings)
    with contextlib.suppress(KeyboardInterrupt):
        if settings.uvloop:
            import uvloop

            uvloop.run(gateway.serve())
        else:
            asyncio.run(gateway.serve())
