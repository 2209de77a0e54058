from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from medops import modelspec
from medops.errors import InvalidInputError
from medops.export import (
    ExportError,
    ExportResult,
    TritonModel,
    check_onnx_parity,
    export_onnx,
    prelu_as_leaky_relu,
    read_model_config,
    read_model_metadata,
    write_triton_repository,
)
from medops.models import ServingWrapper, build_classifier, build_segmenter
from pipelines.brain import CLASSIFIER, SEGMENTER


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[torch.nn.Module, ExportResult]]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx")
    classifier = build_classifier(2, arch="resnet10", widths=(8, 16, 32, 64)).eval()
    segmenter = build_segmenter(channels=(8, 16, 32), num_res_units=1).eval()
    return {
        "classifier": (
            classifier,
            export_onnx(
                classifier,
                folder / "cls.onnx",
                task="classifier",
                input_size=32,
                classes=["no tumour", "tumour"],
                threshold=0.42,
                dataset_version="lgg-abc123",
            ),
        ),
        "segmenter": (
            segmenter,
            export_onnx(
                segmenter,
                folder / "seg.onnx",
                task="segmenter",
                input_size=32,
                classes=["tumour"],
                threshold=0.5,
                dataset_version="lgg-abc123",
            ),
        ),
    }


def test_onnx_matches_pytorch_within_the_bound(exported: dict) -> None:
    for _model, result in exported.values():
        assert result.path.is_file() and result.input_size == 32 and result.opset >= 17
        assert 0.0 <= result.max_abs_diff <= 1e-4


def test_single_file_graph_has_the_contract_names_and_a_dynamic_batch(exported: dict) -> None:
    model, result = exported["segmenter"]
    proto = onnx.load(str(result.path))
    assert [i.name for i in proto.graph.input] == [modelspec.INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [modelspec.OUTPUT_NAME]
    assert not list(result.path.parent.glob("*.data"))
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    wrapper = ServingWrapper(model, "segmenter").eval()
    for batch in (1, 5):
        x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
        out = session.run(None, {"image": x})[0]
        assert out.shape == (batch, 1, 32, 32)
        with torch.no_grad():
            np.testing.assert_allclose(out, wrapper(torch.from_numpy(x)).numpy(), atol=1e-4)
    cls_session = ort.InferenceSession(str(exported["classifier"][1].path))
    probs = cls_session.run(None, {"image": np.zeros((5, 3, 32, 32), np.float32)})[0]
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_learned_prelu_slopes_are_exported_as_leaky_relu(tmp_path: Path) -> None:
    torch.manual_seed(1)
    segmenter = build_segmenter(channels=(8, 16), num_res_units=1).eval()
    prelus = [m for m in segmenter.modules() if isinstance(m, torch.nn.PReLU)]
    with torch.no_grad():
        for prelu in prelus:
            prelu.weight.uniform_(0.05, 0.5)
    result = export_onnx(segmenter, tmp_path / "seg.onnx", task="segmenter", input_size=32,
                         classes=["tumour"], threshold=0.5, dataset_version="d")  # fmt: skip
    nodes = onnx.load(str(result.path)).graph.node
    assert not [n for n in nodes if n.op_type == "PRelu"]
    alphas = [onnx.helper.get_attribute_value(n.attribute[0]) for n in nodes
              if n.op_type == "LeakyRelu"]  # fmt: skip
    expected = [p.weight.item() for p in prelus]
    np.testing.assert_allclose(sorted(alphas), sorted(expected), rtol=1e-7)
    assert result.max_abs_diff <= 1e-5


def test_a_per_channel_prelu_is_left_as_it_is() -> None:
    from onnx import TensorProto, helper, numpy_helper

    shared = numpy_helper.from_array(np.array([0.2], np.float32), "shared")
    per_channel = numpy_helper.from_array(np.array([[[0.1]], [[0.3]]], np.float32), "channels")
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "shared"], ["y"]),
         helper.make_node("PRelu", ["y", "channels"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 2, 2])],
        [shared, per_channel],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = {"x": np.random.default_rng(0).normal(size=(1, 2, 2, 2)).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]
    assert prelu_as_leaky_relu(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["LeakyRelu", "PRelu"]
    assert [i.name for i in model.graph.initializer] == ["channels"]
    np.testing.assert_array_equal(ort.InferenceSession(model.SerializeToString()).run(None, x)[0],
                                  before)  # fmt: skip


def test_serving_metadata_is_stored_in_the_model(exported: dict) -> None:
    info = read_model_metadata(exported["classifier"][1].path)
    assert info["task"] == "classification" and info["input_size"] == 32
    assert info["classes"] == ["no tumour", "tumour"] and info["threshold"] == 0.42
    assert info["dataset_version"] == "lgg-abc123" and info["outputs"] == ["probabilities"]
    assert read_model_metadata(exported["segmenter"][1].path)["task"] == "segmentation"


def test_a_model_that_differs_from_its_onnx_file_fails_the_parity_check(exported: dict) -> None:
    model, result = exported["classifier"]
    assert check_onnx_parity(model, result.path, input_size=32) <= 1e-4
    changed = build_classifier(2, arch="resnet10", widths=(8, 16, 32, 64)).eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.get_parameter("fc.bias")[1] += 0.5  # shifts the softmax
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_onnx_parity(changed, result.path, input_size=32)


def test_bad_export_arguments_are_refused(tmp_path: Path) -> None:
    seg = build_segmenter(channels=(8, 16, 32))
    with pytest.raises(InvalidInputError, match="multiple of 4"):
        export_onnx(
            seg,
            tmp_path / "s.onnx",
            task="segmenter",
            input_size=30,
            classes=["t"],
            threshold=0.5,
            dataset_version="v",
        )
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_model_metadata(tmp_path / "missing.onnx")


def test_triton_repository_layout_and_configs(exported: dict, tmp_path: Path) -> None:
    cls_path, seg_path = exported["classifier"][1].path, exported["segmenter"][1].path
    repo = write_triton_repository(
        [
            TritonModel(CLASSIFIER, 1, cls_path),
            TritonModel(SEGMENTER, 1, seg_path),
            TritonModel(SEGMENTER, 2, seg_path, parameters={"alias": "challenger"}),
        ],
        tmp_path / "repo",
    )
    cls_dir, seg_dir = repo / CLASSIFIER, repo / SEGMENTER
    assert (cls_dir / "1" / "model.onnx").read_bytes() == cls_path.read_bytes()
    assert (seg_dir / "2" / "model.onnx").is_file()

    gpu_text = (cls_dir / "config.pbtxt").read_text()
    cpu_text = (cls_dir / "configs" / "cpu.pbtxt").read_text()
    assert "KIND_GPU" in gpu_text and "KIND_CPU" not in gpu_text
    assert "KIND_CPU" in cpu_text and "KIND_GPU" not in cpu_text

    config = read_model_config(cls_dir / "config.pbtxt")
    assert config.name == CLASSIFIER and config.backend == "onnxruntime"
    assert config.max_batch_size > 1
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [3, 32, 32])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("probabilities", [2])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.parameters[modelspec.META_THRESHOLD].string_value == "0.42"
    assert json.loads(config.parameters[modelspec.META_CLASSES].string_value) == [
        "no tumour",
        "tumour",
    ]

    seg = read_model_config(seg_dir / "configs" / "cpu.pbtxt")
    assert [list(o.dims) for o in seg.output] == [[1, 32, 32]]
    assert list(seg.version_policy.specific.versions) == [1, 2]
    assert seg.parameters["alias"].string_value == "challenger"


def test_triton_repository_refuses_duplicate_versions(exported: dict, tmp_path: Path) -> None:
    path = exported["classifier"][1].path
    with pytest.raises(InvalidInputError, match="version listed twice"):
        write_triton_repository([TritonModel("m", 1, path), TritonModel("m", 1, path)], tmp_path)
