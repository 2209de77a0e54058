"""The contract between training, export, the registry and serving.

Every exported model is one ONNX file with one input and one output, named here, and carries
its serving facts in the ONNX ``metadata_props`` (keys below) so that any backend that loads
the file knows how to preprocess and how to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

NAME_PATTERN: Final = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""Registered model (and task) names: DNS labels, as routing variants and Istio subsets are."""

INPUT_NAME: Final = "image"
"""float32 (N, 3, S, S), the output of ``medops.transforms.preprocess_slice``."""
OUTPUT_NAME: Final = "probabilities"
"""float32, softmax (classifiers) or sigmoid (segmenter) already applied in the graph."""

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"

# keys of ONNX metadata_props
META_TASK: Final = "medops.task"  # "classification" | "segmentation"
META_INPUT_SIZE: Final = "medops.input_size"  # "256"
META_CLASSES: Final = "medops.classes"  # JSON list of class names
META_THRESHOLD: Final = "medops.threshold"  # operating threshold, "0.5"
META_DATASET_VERSION: Final = "medops.dataset_version"
META_TEMPERATURE: Final = "medops.temperature"  # calibration, already applied in the graph
META_GATE_THRESHOLD: Final = "medops.gate_threshold"  # segmenter: segment at P(tumour) >= this
META_MIN_COMPONENT: Final = "medops.min_component_px"  # segmenter: drop smaller components
META_ACCEPTS_NONFINITE: Final = "medops.accepts_nonfinite"  # "true": NaN/±Inf inputs are valid


@dataclass(frozen=True)
class ModelInfo:
    """What serving needs to know about one model version."""

    name: str
    version: str
    task: str
    input_size: int
    classes: tuple[str, ...]
    threshold: float
    gate_threshold: float | None = None
    """Segmenter: the classifier's P(tumour) from which a slice is segmented (chosen with the
    classifier on validation data); None: the classifier's own operating threshold."""
    min_component_px: int = 0
    """Segmenter: connected components smaller than this (model pixels) are dropped."""
    accepts_nonfinite: bool = False
    """Whether NaN or ±Inf in a floating-point input is meaningful to the model (e.g. a mask
    marker); otherwise serving refuses such inputs with a 400."""
