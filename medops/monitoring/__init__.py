"""Monitoring: Prometheus metrics, the prediction log, drift, quality and the retraining policy.

Imports no web framework: the gateway and the monitor service wire these parts together.
"""

from medops.monitoring.drift import (
    Calibration,
    CalibrationSet,
    DriftResult,
    FeatureScore,
    PredictionFeatures,
    Reference,
    build_reference,
    calibrate_alarm,
    compute_drift,
    load_reference,
    reference_dir,
)
from medops.monitoring.features import (
    FEATURE_NAMES,
    EmbeddingReducer,
    image_features,
    image_features_batch,
)
from medops.monitoring.metrics import STAGES, GatewayMetrics, MonitorMetrics
from medops.monitoring.store import PredictionRecord, PredictionStore
from medops.rle import dice, rle_decode, rle_encode

__all__ = [
    "FEATURE_NAMES",
    "STAGES",
    "Calibration",
    "CalibrationSet",
    "DriftResult",
    "EmbeddingReducer",
    "FeatureScore",
    "GatewayMetrics",
    "MonitorMetrics",
    "PredictionFeatures",
    "PredictionRecord",
    "PredictionStore",
    "Reference",
    "build_reference",
    "calibrate_alarm",
    "compute_drift",
    "dice",
    "image_features",
    "image_features_batch",
    "load_reference",
    "reference_dir",
    "rle_decode",
    "rle_encode",
]
