"""``bench/analyze.py`` compares like with like (not a timing): its raw compute runs the
models on exactly the inputs the gateway fed them, and it reads every stage from /metrics."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import tifffile
from gateway_harness import GatewayThread
from PIL import Image as PILImage

from bench.analyze import STAGES, RawCompute, stage_totals
from medops.modelspec import INPUT_NAME, OUTPUT_NAME
from pipelines.brain import CLASSIFIER, SEGMENTER


def test_the_raw_compute_sees_what_the_gateway_fed_its_models(
    onnx_gateway: GatewayThread,
    tiny_models: dict[str, Path],
    client_headers: dict[str, str],
    lgg_patient: Path,
) -> None:
    tif = next(p for p in sorted(lgg_patient.glob("*.tif")) if not p.name.endswith("_mask.tif"))
    buf = io.BytesIO()
    PILImage.fromarray(tifffile.imread(tif)).save(buf, format="PNG")
    png = buf.getvalue()
    before = stage_totals(onnx_gateway.url)
    r = httpx.post(
        f"http://{onnx_gateway.url}/v1/analyze?segment=always",
        content=png,
        headers={**client_headers, "content-type": "image/png"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    answered = r.json()["slices"][0]["probability"]

    raw = RawCompute({n: tiny_models[n] for n in (CLASSIFIER, SEGMENTER)}, threads=1)
    inputs = raw.inputs(png, "image/png")
    assert [len(v) for v in inputs.values()] == [1, 1]
    probs = raw.sessions[CLASSIFIER].run([OUTPUT_NAME], {INPUT_NAME: np.stack(inputs[CLASSIFIER])})
    assert abs(float(probs[0][0, -1]) - answered) < 1e-5
    assert raw.run(SEGMENTER, inputs[SEGMENTER]) > 0

    after = stage_totals(onnx_gateway.url)
    for stage in STAGES:
        assert after[stage][1] == before.get(stage, (0.0, 0.0))[1] + 1, stage
        assert after[stage][0] > before.get(stage, (0.0, 0.0))[0], stage
