"""The brain-tumour models this project ships as tasks (``tasks/brain-tumor-*.yaml``): their
registered names, by the role each plays in the brain pipeline, and what their model cards say.
The library and the services name none of them; they serve whatever the task files declare.
"""

from __future__ import annotations

from typing import Final

CLASSIFIER: Final = "brain-tumor-classifier"
"""Binary: does the slice show a tumour. Output ``probabilities`` (N, 2): [no tumour, tumour]."""
SEGMENTER: Final = "brain-tumor-segmenter"
"""Pixel-wise tumour probability. Output ``probabilities`` (N, 1, H, W)."""
TYPE_CLASSIFIER: Final = "brain-tumor-type-classifier"
"""Tumour type (4 classes). Output ``probabilities`` (N, K)."""
BRAIN_MODELS: Final = (CLASSIFIER, SEGMENTER, TYPE_CLASSIFIER)

INTENDED_USE: Final[dict[str, str]] = {
    CLASSIFIER: (
        "Flags axial brain MRI slices (pre-contrast, FLAIR, post-contrast stacked as RGB) that "
        "likely show a lower-grade glioma, to prioritise review. Decision support for "
        "radiologists only; not a diagnosis."
    ),
    SEGMENTER: (
        "Outlines the FLAIR abnormality of lower-grade gliomas on axial brain MRI slices, to "
        "speed up contouring and volume tracking. Every contour must be reviewed by a clinician."
    ),
    TYPE_CLASSIFIER: (
        "Suggests the tumour type (glioma, meningioma, pituitary, none) of a brain MRI slice "
        "for research and triage experiments; not validated for clinical use."
    ),
}

KNOWN_LIMITS: Final[tuple[str, ...]] = (
    "Trained on a small public research cohort (TCGA-LGG, a few institutions); performance on "
    "other scanners, sequences, field strengths or tumour types is unknown.",
    "Slice-level 2D model: no 3D context; very small lesions and slices at the top and bottom "
    "of the brain are the hardest.",
)
"""What every brain model's card says of its limits, before the card's general ones."""
