"""Model registry (MLflow), model cards and the promotion gate.

The pipeline registers and promotes through :class:`Registry`; the serving gateway resolves
aliases (``champion``, ``challenger``) to local ONNX files through the same class.
"""

from medops.registry.card import render_model_card
from medops.registry.client import (
    CARD_PATH,
    GATE_PATH,
    MODEL_DIR,
    ONNX_FILE,
    REPORT_PATH,
    WEIGHTS_PATH,
    ModelSummary,
    RegisteredVersion,
    Registry,
    ResolvedModel,
    VersionSummary,
    current_git_commit,
    read_onnx_info,
)
from medops.registry.gate import GateDecision, promotion_gate

__all__ = [
    "CARD_PATH",
    "GATE_PATH",
    "MODEL_DIR",
    "ONNX_FILE",
    "REPORT_PATH",
    "WEIGHTS_PATH",
    "GateDecision",
    "ModelSummary",
    "RegisteredVersion",
    "Registry",
    "ResolvedModel",
    "VersionSummary",
    "current_git_commit",
    "promotion_gate",
    "read_onnx_info",
    "render_model_card",
]
