"""Helpers shared by the routing tests: a fake clock, document builders and a tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medops import modelspec

MODEL = "brain-tumor-classifier"
SIZE = 16


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def canary_doc(
    challenger_weight: int,
    *,
    strategy: str = "canary",
    challenger_first: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A routing document splitting MODEL between champion and challenger."""
    champion = {"name": "champion", "alias": "champion", "weight": 100 - challenger_weight}
    challenger = {"name": "challenger", "alias": "challenger", "weight": challenger_weight}
    variants = [challenger, champion] if challenger_first else [champion, challenger]
    return {"models": {MODEL: {"strategy": strategy, "variants": variants, **extra}}}


def tiny_classifier(path: Path, *, bias: float, failing: bool = False) -> Path:
    """A real ONNX classifier (mean pool -> linear -> softmax) with medops metadata.

    ``failing`` adds a Reshape to rows of 7 values, impossible for 3*16*16 inputs: the model
    loads, and every inference fails inside ONNX Runtime.
    """
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.full((3, 2), 0.1, np.float32), "w"),
        numpy_helper.from_array(np.array([bias, 0.0], np.float32), "b"),
    ]
    if failing:
        nodes += [
            helper.make_node("Reshape", ["image", "rows"], ["rows7"]),
            helper.make_node("ReduceMean", ["rows7"], ["mean"], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["logits", "nothing"], ["scores"]),
        ]
        inits += [
            numpy_helper.from_array(np.array([-1, 7], np.int64), "rows"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
    nodes.append(
        helper.make_node(
            "Softmax", ["scores" if failing else "logits"], [modelspec.OUTPUT_NAME], axis=1
        )
    )
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(modelspec.OUTPUT_NAME, TensorProto.FLOAT, ["N", 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {
        modelspec.META_TASK: "classification",
        modelspec.META_INPUT_SIZE: str(SIZE),
        modelspec.META_CLASSES: json.dumps(["no_tumour", "tumour"]),
        modelspec.META_THRESHOLD: "0.5",
        modelspec.META_DATASET_VERSION: "routing-test",
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
