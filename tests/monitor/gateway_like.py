"""A minimal serving app exposing GatewayMetrics, answering whatever status it is asked for.

Run as ``python gateway_like.py PORT``; the Prometheus integration test scrapes it next to the
real gateway for what a healthy gateway never shows (5xx answers, a challenger variant), so
every panel and alert query has series to read. ``POST /v1/analyze?variant=...&status=...``
walks the request stages and answers with the given status.
"""

from __future__ import annotations

import random
import sys
import time

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from medops.monitoring.metrics import GatewayMetrics

MODELS = {"champion": "3", "challenger": "4"}


def create_app() -> FastAPI:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    app = FastAPI()

    @app.post("/v1/analyze")
    async def analyze(variant: str = "champion", status: int = 200) -> JSONResponse:
        labels = {"model": "brain-tumor-classifier", "version": MODELS[variant], "variant": variant}
        start = time.perf_counter()
        for stage, seconds in (("decode", 0.002), ("preprocess", 0.003), ("infer", 0.01)):
            metrics.observe_stage(**labels, stage=stage, seconds=seconds * random.uniform(0.5, 2))
        if status == 200:
            p = random.uniform(0.55, 0.99)
            cls = random.choice(["tumour", "no_tumour"])
            metrics.observe_stage(**labels, stage="postprocess", seconds=0.001)
            metrics.observe_prediction(**labels, predicted_class=cls, confidence=p)
        metrics.observe_request(**labels, status=status, seconds=time.perf_counter() - start + 0.02)
        return JSONResponse({"variant": variant}, status_code=status)

    @app.get("/metrics")
    async def exposition() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
