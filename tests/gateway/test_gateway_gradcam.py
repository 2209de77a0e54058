"""``/v1/explain?method=gradcam``: MONAI's Grad-CAM on the served version's own torch network,
rebuilt from the weights logged with it in a real SQLite MLflow registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
import torch
from gateway_harness import GatewayThread
from gateway_support import SIZE
from monai.visualize import GradCAM

from medops.clinical.explain import GRADCAM_LAYERS
from medops.export import export_onnx
from medops.models import build_classifier, build_segmenter
from medops.modelspec import CHAMPION
from medops.registry import Registry
from medops.training import save_weights
from medops.transforms import preprocess_slice
from pipelines.brain import CLASSIFIER, SEGMENTER
from services.gateway.settings import GatewaySettings

NETWORKS = {
    CLASSIFIER: ({"arch": "resnet10", "widths": "4-8-8-8"}, "classification"),
    SEGMENTER: ({"channels": "4-8-16", "num_res_units": "1"}, "segmentation"),
}


def _network(name: str) -> torch.nn.Module:
    torch.manual_seed(7)
    if name == CLASSIFIER:
        return build_classifier(2, arch="resnet10", widths=(4, 8, 8, 8)).eval()
    return build_segmenter(channels=(4, 8, 16), num_res_units=1).eval()


@pytest.fixture(scope="module")
def gradcam_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayThread, dict[str, str]]]:
    root = tmp_path_factory.mktemp("gradcam")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry = Registry(uri, cache_dir=root / "cache")
    for name, (params, task) in NETWORKS.items():
        net = _network(name)
        export_onnx(
            net,
            root / f"{name}.onnx",
            task=task,
            input_size=SIZE,
            classes=["no_tumour", "tumour"] if task == "classification" else ["tumour"],
            threshold=0.5,
            dataset_version="test",
        )
        registry.log_and_register(
            name,
            onnx_path=root / f"{name}.onnx",
            dataset_version="test",
            params=params,
            metrics={},
            weights_path=save_weights(net, root / f"{name}.pt"),
            git_commit="test",
            aliases=(CHAMPION,),
        )
    home = root / "home"
    settings = GatewaySettings(
        home=home,
        tracking_uri=uri,
        models=[CLASSIFIER, SEGMENTER],
        poll_seconds=0,
        onnx_threads=1,
        deid_key="test-deid-key",
    )
    with GatewayThread(settings) as gw:
        keys = json.loads((home / "credentials.json").read_text())
        yield gw, {"authorization": f"Bearer {keys['client']}"}


@pytest.mark.integration
def test_gradcam_through_the_gateway_equals_monai_on_the_versions_torch_network(
    gradcam_gateway: tuple[GatewayThread, dict[str, str]], lgg_patient: Path
) -> None:
    gw, headers = gradcam_gateway
    image = next(p for p in sorted(lgg_patient.glob("*.tif")) if not p.stem.endswith("_mask"))
    r = httpx.post(
        f"http://{gw.url}/v1/explain?method=gradcam&segment=always",
        content=image.read_bytes(),
        headers={**headers, "content-type": "image/tiff"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["method"] == "gradcam" and "mask_fraction" not in doc
    (entry,) = doc["slices"]
    served = np.asarray(entry["classifier"]["saliency"])
    assert served.shape == (SIZE, SIZE)
    assert served.min() >= 0.0 and served.max() <= 1.0 + 1e-6

    x = torch.from_numpy(preprocess_slice(tifffile.imread(image).transpose(2, 0, 1), SIZE)[None])
    chosen = 1 if entry["class"] == "tumour" else 0
    cam = GradCAM(
        nn_module=_network(CLASSIFIER),
        target_layers=GRADCAM_LAYERS["classification"],
        postprocessing=lambda m: m,
    )(x, class_idx=chosen)
    expected = cam[0, 0].detach().numpy()
    assert float(expected.max()) > 0, "a map to compare"
    np.testing.assert_allclose(served, expected / expected.max(), atol=1e-3)
    assert served.max() == pytest.approx(1.0)
    # the segmenter's map is Grad-CAM of its mask score, at its input size, in [0, 1]
    seg = np.asarray(entry["segmenter"]["saliency"])
    assert seg.shape == (SIZE, SIZE) and seg.min() >= 0.0 and seg.max() <= 1.0 + 1e-6


class _BrightnessVote(torch.nn.Module):
    """Votes "tumour" by the mean of a rectified 1x1 convolution (``layer3``): its Grad-CAM is
    that activation itself, so it must peak on a bright spot and be 0 where the image is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.layer3 = torch.nn.Conv2d(3, 1, 1, bias=False)
        torch.nn.init.ones_(self.layer3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = torch.relu(self.layer3(x)).mean(dim=(2, 3))
        return torch.cat([-evidence, evidence], dim=1)


def test_gradcam_is_high_where_the_evidence_is_and_zero_where_there_is_none() -> None:
    from medops.clinical.explain import GradCam
    from medops.models import ServingWrapper

    image = np.zeros((3, SIZE, SIZE), np.float32)
    image[:, 10:20, 30:40] = 1.0
    cam = GradCam(ServingWrapper(_BrightnessVote(), "classification"), "classification", 0.5)
    heat = cam(image, 1)
    assert heat.max() == pytest.approx(1.0)
    assert heat[10:20, 30:40].min() > 0.9, "high on the evidence"
    assert float(np.abs(heat[40:, :]).max()) < 1e-6, "nothing where the image is empty"
