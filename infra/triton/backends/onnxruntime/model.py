"""An ONNX Runtime backend for Triton written in Python.

The Triton binary shipped in nvidia-pytriton carries only the Python backend. Triton runs a
backend directory holding a ``model.py`` through that backend, so placing this file at
``<backend-directory>/onnxruntime/model.py`` lets unchanged ``backend: "onnxruntime"``
repositories load. Inputs and outputs must be spelled out in ``config.pbtxt``.

Dynamic batching hands ``execute`` several requests at once: they are stacked along the batch
axis, run in one ONNX Runtime call and split again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        model_dir = Path(args["model_repository"]) / str(args["model_version"])
        filename = config.get("default_model_filename") or "model.onnx"
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        threads = int(
            params.get("intra_op_thread_count") or os.environ.get("MEDOPS_ORT_THREADS", "1")
        )
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / filename), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds_per_request = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
            for r in requests
        ]
        if self.batched and len(requests) > 1:
            sizes = [next(iter(f.values())).shape[0] for f in feeds_per_request]
            feeds = {
                name: np.concatenate([f[name] for f in feeds_per_request]) for name in self.inputs
            }
            results = self.session.run([n for n, _ in self.outputs], feeds)
            bounds = np.cumsum(sizes)[:-1]
            split = [np.split(r, bounds) for r in results]
            per_request = [[s[i] for s in split] for i in range(len(requests))]
        else:
            per_request = [
                self.session.run([n for n, _ in self.outputs], f) for f in feeds_per_request
            ]
        responses = []
        for arrays in per_request:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(a, dtype=dtype))
                for (name, dtype), a in zip(self.outputs, arrays, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.session = None
