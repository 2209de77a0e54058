"""The task file: one imaging task (or one chain of tasks) declared as data.

A task file is YAML validated by the pydantic models below (``extra="forbid"``, so a mistyped
key is an error, never silently ignored). Structure is checked by pydantic; the rules that tie
fields together (a class list that fits the label kind, a layout that can carry the labels,
floors on declared metrics...) by :func:`semantic_problems`, which names the field of each.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from medops.data.layouts import LAYOUTS, LayoutOptions
from medops.modelspec import NAME_PATTERN

_METRIC_PATTERN = r"^[a-z][a-z0-9_]*$"
_SAMPLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Metric = Annotated[str, Field(pattern=_METRIC_PATTERN)]
SampleName = Annotated[str, Field(pattern=_SAMPLE_PATTERN)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A finite number (an int is one too; a quoted "0.5" is not)."""

Layout = Literal["lgg", "class-folders", "msd", "dicom-folders", "image-mask-folders"]
"""How the data lies on disk: the layouts of :mod:`medops.data.layouts` (``image-mask-folders``
is an images/masks folder pair such as Kvasir-SEG)."""
LabelKind = Literal[
    "binary-classification",
    "multiclass-classification",
    "binary-segmentation",
    "multilabel-segmentation",
]
LabelSource = Literal["mask", "mask-present", "folder"]
"""Where a label comes from: the mask itself (segmentation), whether the mask is non-empty
(slice classification from segmentation data), or the sample's class folder."""
GroupBy = Literal["patient", "identical-files", "image"]
"""What one split unit is: the layout's patient (LGG folder, MSD volume, DICOM folder),
byte-identical pictures (class folders), or each image on its own."""
Family = Literal["resnet", "resunet"]
Arch = Literal["resnet10", "resnet18", "resnet34"]
PresetName = Literal["tiny", "fast", "full", "refresh"]
"""The pipeline presets a task tunes (``pipelines/presets.py``)."""

MASK_LAYOUTS = frozenset({"lgg", "msd", "dicom-folders", "image-mask-folders"})
"""Layouts whose samples carry masks."""
PATIENT_LAYOUTS = frozenset({"lgg", "msd", "dicom-folders"})
"""Layouts that know which patient a sample belongs to."""
READABLE_LAYOUTS = frozenset(LAYOUTS)
"""Layouts medops reads (and so trains on) today."""


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Doc):
    path: str = Field(min_length=1)
    """The dataset folder, relative to the data root (``MEDOPS_DATA_DIR`` or ``--data-dir``)."""
    layout: Layout
    images: str | None = None
    """image-mask-folders: the folder of images (default ``images``)."""
    masks: str | None = None
    """image-mask-folders: the folder of masks, one per image with the same stem (default
    ``masks``)."""


class LabelSpec(_Doc):
    kind: LabelKind
    classes: list[str] = Field(min_length=1)
    """Classifiers: the output classes in output order (binary: negative, then positive).
    Segmenters: the foreground classes, one output channel each."""
    source: LabelSource
    mask_threshold: StrictInt | None = Field(default=None, ge=1, le=65535)
    """A mask pixel is foreground when its value is at least this (JPEG masks need 128)."""


class GroupSpec(_Doc):
    by: GroupBy
    together: list[list[SampleName]] = Field(default_factory=list)
    """Samples (image names without extension) that must share a side of every split:
    near-duplicate frames, neighbouring frames, one lesion photographed twice."""


class PreprocessSpec(_Doc):
    """Parameters of ``medops.transforms.preprocess_slice``, the one shared preprocessing."""

    size: StrictInt = Field(ge=8, le=2048)
    """Side of the square model input; a preset may train at another (``image_size``)."""
    channels: StrictInt = Field(default=3, ge=1, le=4)
    normalisation: Literal["percentile"] = "percentile"
    """Per-channel clip to the 0.5th/99.5th percentiles, scaled to [0, 1]."""
    bias_correction: StrictBool = False
    """N4 bias-field correction before normalisation (MRI)."""


class ArchitectureSpec(_Doc):
    family: Family
    """resnet: a slice classifier; resunet: a MONAI residual U-Net segmenter."""
    arch: Arch | None = None
    widths: tuple[StrictInt, StrictInt, StrictInt, StrictInt] | None = None
    """resnet stage widths."""
    channels: list[StrictInt] | None = Field(default=None, min_length=2, max_length=7)
    """resunet level widths."""
    num_res_units: StrictInt | None = Field(default=None, ge=0, le=8)


class TrainOverrides(_Doc):
    """Training settings of one preset that differ from the training preset and the task's
    own architecture and size (each a field of ``medops.training.TrainConfig``)."""

    image_size: StrictInt | None = Field(default=None, ge=8, le=2048)
    epochs: StrictInt | None = Field(default=None, ge=1)
    batch_size: StrictInt | None = Field(default=None, ge=1)
    lr: Number | None = Field(default=None, gt=0)
    weight_decay: Number | None = Field(default=None, ge=0)
    patience: StrictInt | None = Field(default=None, ge=0)
    arch: Arch | None = None
    widths: tuple[StrictInt, StrictInt, StrictInt, StrictInt] | None = None
    channels: list[StrictInt] | None = Field(default=None, min_length=2, max_length=7)
    num_res_units: StrictInt | None = Field(default=None, ge=0, le=8)
    augment: StrictBool | None = None
    loss: Literal["dice_bce", "dice_focal"] | None = None
    test_time_flip: StrictBool | None = None
    freeze_epochs: StrictInt | None = Field(default=None, ge=0)
    candidates: StrictInt | None = Field(default=None, ge=1, le=16)
    output_prior: StrictBool | None = None
    precision: Literal["fp32", "bf16"] | None = None
    max_steps_per_epoch: StrictInt | None = Field(default=None, ge=1)


class PresetSpec(_Doc):
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    floors: dict[Metric, Number] = Field(default_factory=dict)
    """The gate's absolute floors (ceilings for lower-is-better metrics such as ece)."""
    tolerance: dict[Metric, Number] = Field(default_factory=dict)
    """How much worse than the champion (same test patients) a challenger may be."""


class DecisionSpec(_Doc):
    rule: Literal["threshold", "argmax", "pixel-threshold"]
    """threshold: positive when P(positive class) >= threshold; argmax: the likeliest class;
    pixel-threshold: foreground pixels at P >= threshold."""
    positive_class: str | None = None
    """threshold: the class the threshold is for (the last output)."""
    threshold: Number | Literal["youden"] | None = None
    """A fixed value in (0, 1), or chosen on validation data by Youden's J."""
    calibration: Literal["temperature", "none"] = "none"
    """Temperature scaling fitted on validation data, applied in the exported graph."""
    min_component_px: StrictInt | Literal["validation"] | None = None
    """pixel-threshold: drop connected components smaller than this (model pixels), or the
    size chosen on validation data."""


class TaskSpec(_Doc):
    """One task: the data, labels, preprocessing, model, gate and decision of a model."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    intended_use: str = ""
    """What its model cards say it is for (and not for)."""
    limits: list[str] = Field(default_factory=list)
    """Known limits its model cards list (the cards add the general ones)."""
    models: list[Name] = Field(min_length=1)
    """Registered model names this task trains (the first is the one chains and serving use)."""
    modality: str = Field(pattern=r"^[A-Z]{2}$")
    """DICOM modality code: MR, CT, CR, DX, MG, US, ES (endoscopy), SM (microscopy), XC..."""
    data: DataSpec
    label: LabelSpec
    groups: GroupSpec
    preprocessing: PreprocessSpec
    model: ArchitectureSpec
    presets: dict[PresetName, PresetSpec] = Field(default_factory=dict)
    metrics: list[Metric] = Field(min_length=1)
    """Headline metrics of the evaluation; the first is the ranking metric."""
    intervals: list[Metric] = Field(default_factory=list)
    """Metrics reported with a bootstrap 95 % interval over groups."""
    decision: DecisionSpec

    @property
    def kind(self) -> str:
        return self.label.kind

    @property
    def is_segmentation(self) -> bool:
        return self.label.kind.endswith("-segmentation")

    @property
    def trainable(self) -> bool:
        """Whether medops reads this task's data layout today."""
        return self.data.layout in READABLE_LAYOUTS

    def train_overrides(self, preset: str) -> dict[str, object]:
        """The ``TrainConfig`` fields this task sets for ``preset``, over the training preset:
        its architecture, size and class count, then the preset's own overrides."""
        spec = self.model
        out: dict[str, object] = {"image_size": self.preprocessing.size}
        if spec.family == "resnet":
            out["num_classes"] = len(self.label.classes)
            if spec.arch is not None:
                out["arch"] = spec.arch
            if spec.widths is not None:
                out["widths"] = tuple(spec.widths)
        else:
            if spec.channels is not None:
                out["channels"] = tuple(spec.channels)
            if spec.num_res_units is not None:
                out["num_res_units"] = spec.num_res_units
        chosen = self.presets.get(preset)  # type: ignore[call-overload]
        if chosen is not None:
            for key, value in chosen.train.model_dump(exclude_unset=True).items():
                out[key] = tuple(value) if isinstance(value, list | tuple) else value
        return out

    def layout_options(self) -> LayoutOptions:
        """What the data layer reads beyond the files: folder names, mask threshold, groups."""
        return LayoutOptions(
            images=self.data.images or "images",
            masks=self.data.masks or "masks",
            mask_threshold=self.label.mask_threshold,
            together=tuple(tuple(group) for group in self.groups.together),
        )

    def preprocess_kwargs(self, preset: str | None = None) -> dict[str, object]:
        """Keyword arguments of ``preprocess_slice`` at ``preset``'s training size."""
        size = self.train_overrides(preset)["image_size"] if preset else self.preprocessing.size
        return {
            "size": size,
            "channels": self.preprocessing.channels,
            "bias_correction": self.preprocessing.bias_correction,
        }


class ChainSteps(_Doc):
    classifier: str = Field(pattern=NAME_PATTERN)
    """The task whose model classifies every slice (binary classification)."""
    segmenter: str | None = Field(default=None, pattern=NAME_PATTERN)
    """The task whose model segments the slices the classifier flags."""
    segment: Literal["flagged"] = "flagged"
    """Which slices are segmented: those whose P(positive) reaches the gate threshold."""
    gate_threshold: Number | Literal["validation", "classifier"] = "validation"
    """validation: chosen with this classifier on validation data and stored with the
    segmenter's version; classifier: the classifier's own operating threshold."""


class ChainSpec(_Doc):
    """Several tasks answering one analysis (``medops.clinical.Chain``)."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    chain: ChainSteps


class Problem(BaseModel):
    """One thing wrong with a task file: the file, the field path and what was found."""

    model_config = ConfigDict(frozen=True)

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


def _classes_problem(label: LabelSpec) -> str | None:
    n = len(label.classes)
    wanted = {
        "binary-classification": (n == 2, "exactly 2 classes (negative, then positive)"),
        "multiclass-classification": (n >= 3, "at least 3 classes (2 is binary-classification)"),
        "binary-segmentation": (n == 1, "exactly 1 foreground class"),
        "multilabel-segmentation": (n >= 2, "at least 2 foreground classes"),
    }
    fits, what = wanted[label.kind]
    if not fits:
        return f"{label.kind} needs {what}, found {n}: {label.classes}"
    return None


def semantic_problems(spec: TaskSpec) -> list[tuple[str, str]]:
    """``(field path, message)`` for every rule that ties fields of ``spec`` together."""
    out: list[tuple[str, str]] = []
    label, data, model = spec.label, spec.data, spec.model
    segmentation = spec.is_segmentation

    if len(set(spec.models)) != len(spec.models):
        out.append(("models", f"a model name is listed twice: {spec.models}"))

    if problem := _classes_problem(label):
        out.append(("label.classes", problem))
    if len(set(label.classes)) != len(label.classes):
        out.append(("label.classes", f"a class is listed twice: {label.classes}"))
    if segmentation and label.source != "mask":
        out.append(("label.source", f"{label.kind} labels come from masks, found {label.source}"))
    if not segmentation and label.source == "mask":
        out.append(("label.source", f"{label.kind} needs mask-present or folder, found mask"))
    if label.source in ("mask", "mask-present") and data.layout not in MASK_LAYOUTS:
        out.append(
            ("label.source", f"{label.source} needs masks, which layout {data.layout} lacks")
        )
    if label.source == "folder" and data.layout != "class-folders":
        out.append(("label.source", f"folder labels need class-folders, found {data.layout}"))
    if label.mask_threshold is not None and label.source == "folder":
        out.append(("label.mask_threshold", "set, but the labels come from folders"))

    if (data.images is not None or data.masks is not None) and data.layout != "image-mask-folders":
        out.append(("data", f"images/masks are for image-mask-folders, not {data.layout}"))
    if data.path.startswith("/") or ".." in data.path.split("/"):
        out.append(("data.path", f"must be relative to the data root, found {data.path!r}"))

    if spec.groups.by == "patient" and data.layout not in PATIENT_LAYOUTS:
        out.append(
            ("groups.by", f"layout {data.layout} knows no patients; use identical-files or image")
        )
    for i, group in enumerate(spec.groups.together):
        if len(group) < 2:
            out.append((f"groups.together[{i}]", f"a group needs 2 or more samples: {group}"))
    seen: dict[str, int] = {}
    for i, group in enumerate(spec.groups.together):
        for sample in group:
            if sample in seen and seen[sample] != i:
                out.append((f"groups.together[{i}]", f"{sample} is also in group {seen[sample]}"))
            seen.setdefault(sample, i)

    wanted_family = "resunet" if segmentation else "resnet"
    if model.family != wanted_family:
        out.append(("model.family", f"{label.kind} needs {wanted_family}, found {model.family}"))
    resnet_only = {"arch": model.arch, "widths": model.widths}
    resunet_only = {"channels": model.channels, "num_res_units": model.num_res_units}
    for key, value in (resunet_only if model.family == "resnet" else resnet_only).items():
        if value is not None:
            out.append((f"model.{key}", f"not a setting of the {model.family} family"))
    for name, preset in spec.presets.items():
        train = preset.train
        foreign = resunet_only if model.family == "resnet" else resnet_only
        for key in foreign:
            if getattr(train, key) is not None:
                where = f"presets.{name}.train.{key}"
                out.append((where, f"not a setting of the {model.family} family"))
    if model.family == "resunet":
        sizes: list[str] = ["", *spec.presets]
        for at in sizes:
            overrides = spec.train_overrides(at)
            levels = overrides.get("channels")
            if not isinstance(levels, tuple):
                continue
            multiple = 2 ** (len(levels) - 1)
            size = overrides["image_size"]
            if isinstance(size, int) and size % multiple:
                where = f"presets.{at}.train.image_size" if at else "preprocessing.size"
                out.append(
                    (where, f"{size} is not a multiple of {multiple} ({len(levels)} levels)")
                )

    if len(set(spec.metrics)) != len(spec.metrics):
        out.append(("metrics", f"a metric is listed twice: {spec.metrics}"))
    declared = set(spec.metrics)
    for i, metric in enumerate(spec.intervals):
        if metric not in declared:
            out.append((f"intervals[{i}]", f"{metric} is not one of metrics {spec.metrics}"))
    for name, preset in spec.presets.items():
        for part in ("floors", "tolerance"):
            for metric, value in getattr(preset, part).items():
                where = f"presets.{name}.{part}.{metric}"
                if metric not in declared:
                    out.append((where, f"{metric} is not one of metrics {spec.metrics}"))
                if part == "tolerance" and value < 0:
                    out.append((where, f"a tolerance is at least 0, found {value}"))

    decision = spec.decision
    rules = {
        "binary-classification": "threshold",
        "multiclass-classification": "argmax",
        "binary-segmentation": "pixel-threshold",
        "multilabel-segmentation": "pixel-threshold",
    }
    if decision.rule != rules[label.kind]:
        out.append(
            ("decision.rule", f"{label.kind} decides by {rules[label.kind]}, found {decision.rule}")
        )
    if decision.rule == "threshold":
        if decision.positive_class is None:
            out.append(("decision.positive_class", "a threshold rule names its positive class"))
        elif decision.positive_class != label.classes[-1]:
            out.append(
                (
                    "decision.positive_class",
                    f"{decision.positive_class!r} must be the last of label.classes "
                    f"{label.classes} (serving thresholds the last output)",
                )
            )
    elif decision.positive_class is not None:
        out.append(("decision.positive_class", f"only for the threshold rule, not {decision.rule}"))
    if decision.rule == "argmax" and decision.threshold is not None:
        out.append(("decision.threshold", "the argmax rule has no threshold"))
    if decision.rule != "argmax" and decision.threshold is None:
        out.append(("decision.threshold", f"the {decision.rule} rule needs a threshold"))
    if isinstance(decision.threshold, float) and not 0 < decision.threshold < 1:
        out.append(("decision.threshold", f"must lie in (0, 1), found {decision.threshold}"))
    if decision.rule == "pixel-threshold" and decision.threshold == "youden":
        out.append(("decision.threshold", "Youden's J chooses a slice threshold, not a pixel one"))
    if decision.min_component_px is not None and decision.rule != "pixel-threshold":
        out.append(("decision.min_component_px", "only for the pixel-threshold rule"))
    if isinstance(decision.min_component_px, int) and decision.min_component_px < 0:
        out.append(("decision.min_component_px", f"at least 0, found {decision.min_component_px}"))
    return out
