"""The clinical data plane: one analysis flow for every caller (REST, gRPC, DICOM, web)."""

from medops.clinical.encoders import NotAcceptableError, choose_media_type, encode, to_json
from medops.clinical.plane import ClinicalPlane
from medops.clinical.types import (
    OFFERED,
    SEGMENT_MODES,
    Analysis,
    AnalyzeRequest,
    Chain,
    Encoded,
    Prediction,
    Predictor,
    Route,
    SegmentMode,
)
from medops.imaging.upload import Upload

__all__ = [
    "OFFERED",
    "SEGMENT_MODES",
    "Analysis",
    "AnalyzeRequest",
    "Chain",
    "ClinicalPlane",
    "Encoded",
    "NotAcceptableError",
    "Prediction",
    "Predictor",
    "Route",
    "SegmentMode",
    "Upload",
    "choose_media_type",
    "encode",
    "to_json",
]
