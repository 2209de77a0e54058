"""Model registry (MLflow), model cards and the promotion gate.

The pipeline registers and promotes through :class:`Registry`; the serving gateway resolves
aliases (``champion``, ``challenger``) to local ONNX files through the same class.
"""

from medops.registry.audit import AUDIT_FILE, default_audit_path
from medops.registry.card import (
    CROSS_VALIDATED,
    EVALUATIONS,
    SINGLE_SPLIT,
    intervals_from_metrics,
    render_model_card,
)
from medops.registry.client import (
    CARD_PATH,
    GATE_PATH,
    MODEL_DIR,
    ONNX_FILE,
    PARITY_TOLERANCE,
    REPORT_PATH,
    TAG_EVALUATION,
    TAG_HEADLINE,
    WEIGHTS_PATH,
    AliasChange,
    ModelSummary,
    RegisteredVersion,
    Registry,
    ResolvedModel,
    VersionSummary,
    current_git_commit,
    current_user,
    read_onnx_info,
)
from medops.registry.gate import GateDecision, promotion_gate

__all__ = [
    "AUDIT_FILE",
    "CARD_PATH",
    "CROSS_VALIDATED",
    "EVALUATIONS",
    "GATE_PATH",
    "MODEL_DIR",
    "ONNX_FILE",
    "PARITY_TOLERANCE",
    "REPORT_PATH",
    "SINGLE_SPLIT",
    "TAG_EVALUATION",
    "TAG_HEADLINE",
    "WEIGHTS_PATH",
    "AliasChange",
    "GateDecision",
    "ModelSummary",
    "RegisteredVersion",
    "Registry",
    "ResolvedModel",
    "VersionSummary",
    "current_git_commit",
    "current_user",
    "default_audit_path",
    "intervals_from_metrics",
    "promotion_gate",
    "read_onnx_info",
    "render_model_card",
]
