"""One self-contained interactive HTML report (Plotly, with plotly.js inlined: works offline)."""

from __future__ import annotations

import base64
import hashlib
import html
import io
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
from PIL import Image as PILImage
from plotly.subplots import make_subplots

from medops.evaluation.classifier import ClassifierEvaluation
from medops.evaluation.segmenter import SegmenterEvaluation
from medops.evaluation.two_stage import TwoStageEvaluation
from medops.training.arrays import SliceArrays

PLOT_IDS = (
    "roc-curve",
    "pr-curve",
    "calibration",
    "confusion-matrix",
    "dice-distribution",
    "worst-cases",
    "two-stage",
    "subgroups",
)
"""The div id of every plot the report can hold (each present when its input is)."""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{color:#666;font-size:.9rem}
"""


def pseudonym(sample_id: str) -> str:
    """A stable non-identifying label for a slice (the report never shows patient ids)."""
    return "case-" + hashlib.sha256(sample_id.encode()).hexdigest()[:8]


def _table(metrics: Mapping[str, float], caption: str) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in metrics.items()
    )
    return f"<table><caption>{html.escape(caption)}</caption>{rows}</table>"


def _roc(ev: ClassifierEvaluation) -> go.Figure:
    assert ev.roc is not None
    fpr, tpr, thresholds = ev.roc
    fig = go.Figure()
    fig.add_scatter(
        x=fpr,
        y=tpr,
        mode="lines",
        name=f"ROC (AUC {ev.auc:.3f})",
        customdata=thresholds,
        hovertemplate="FPR %{x:.3f} TPR %{y:.3f} thr %{customdata:.3f}",
    )
    fig.add_scatter(
        x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"
    )
    fig.add_scatter(
        x=[1 - ev.specificity],
        y=[ev.sensitivity],
        mode="markers",
        marker={"size": 12},
        name=f"operating point (thr {ev.threshold:.3f}, {ev.threshold_source})",
    )
    fig.update_layout(title="ROC curve", xaxis_title="1 - specificity", yaxis_title="sensitivity")
    return fig


def _pr(ev: ClassifierEvaluation) -> go.Figure:
    assert ev.pr is not None
    precision, recall = ev.pr
    fig = go.Figure()
    fig.add_scatter(
        x=recall, y=precision, mode="lines", line_shape="vh", name=f"PR (AP {ev.pr_auc:.3f})"
    )
    fig.update_layout(title="Precision-recall curve", xaxis_title="recall", yaxis_title="precision")
    return fig


def _calibration(ev: ClassifierEvaluation) -> go.Figure:
    bins = [b for b in ev.reliability if b.count]
    fig = make_subplots(rows=2, cols=1, row_heights=[0.75, 0.25], shared_xaxes=True)
    fig.add_scatter(
        x=[b.mean_confidence for b in bins],
        y=[b.observed for b in bins],
        mode="lines+markers",
        name=f"model (ECE {ev.ece:.3f})",
        row=1,
        col=1,
    )
    fig.add_scatter(
        x=[0, 1],
        y=[0, 1],
        mode="lines",
        line={"dash": "dot", "color": "grey"},
        name="perfect calibration",
        row=1,
        col=1,
    )
    fig.add_bar(
        x=[(b.lower + b.upper) / 2 for b in bins],
        y=[b.count for b in bins],
        width=0.09,
        name="slices per bin",
        row=2,
        col=1,
    )
    what = "P(tumour)" if ev.binary else "top-class probability"
    fig.update_layout(title=f"Reliability curve ({what}, 10 bins)")
    fig.update_yaxes(title_text="observed frequency", row=1, col=1)
    fig.update_xaxes(title_text="mean predicted probability", row=2, col=1)
    return fig


def _confusion(ev: ClassifierEvaluation) -> go.Figure:
    names = [str(i) for i in range(ev.num_classes)]
    fig = go.Figure(
        go.Heatmap(
            z=ev.confusion,
            x=names,
            y=names,
            text=ev.confusion,
            texttemplate="%{text}",
            colorscale="Blues",
        )
    )
    fig.update_layout(
        title="Confusion matrix",
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
    )
    return fig


def _dice_figure(ev: SegmenterEvaluation) -> go.Figure:
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("per patient (volume Dice)", "per tumour slice")
    )
    fig.add_histogram(
        x=[p["dice"] for p in ev.patients.values()],
        xbins={"start": 0, "end": 1.0001, "size": 0.05},
        name="patients",
        row=1,
        col=1,
    )
    fig.add_histogram(
        x=ev.slice_dice[ev.tumour_slices],
        xbins={"start": 0, "end": 1.0001, "size": 0.05},
        name="tumour slices",
        row=1,
        col=2,
    )
    fig.update_layout(title="Dice distribution", showlegend=False)
    fig.update_xaxes(title_text="Dice", range=[0, 1])
    return fig


def _png(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _overlay(gray: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2).astype(np.float32)
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.array(colour, dtype=np.float32)
    return rgb.astype(np.uint8)


def _worst(ev: SegmenterEvaluation, data: SliceArrays, k: int = 6) -> go.Figure | None:
    worst = ev.worst_slices(k)
    if not worst:
        return None
    titles = []
    for i in worst:
        titles += [
            f"{pseudonym(ev.sample_ids[i])} image",
            "truth",
            f"prediction (Dice {ev.slice_dice[i]:.2f})",
        ]
    fig = make_subplots(
        rows=len(worst),
        cols=3,
        subplot_titles=titles,
        horizontal_spacing=0.02,
        vertical_spacing=0.04,
    )
    for row, i in enumerate(worst, start=1):
        image = np.clip(np.asarray(data.images[i], dtype=np.float32), 0, 1)
        rgb = (image.transpose(1, 2, 0) * 255).astype(np.uint8)
        flair = image[1] if image.shape[0] > 1 else image[0]  # LGG channel 1 is FLAIR
        panels = [
            rgb,
            _overlay(flair, ev.truth[i], (0, 200, 0)),
            _overlay(flair, ev.pred[i], (230, 30, 30)),
        ]
        for col, panel in enumerate(panels, start=1):
            fig.add_trace(go.Image(source=_png(panel)), row=row, col=col)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(
        title="Worst tumour slices (lowest Dice): truth green, prediction red",
        height=260 * len(worst),
        width=800,
    )
    return fig


def _two_stage(ev: TwoStageEvaluation) -> go.Figure:
    patients = list(ev.gated.patients)
    labels = [f"patient {i + 1}" for i in range(len(patients))]
    fig = go.Figure()
    fig.add_bar(
        x=labels,
        y=[ev.segmenter_only.patients[p]["dice"] for p in patients],
        name="segmenter alone",
    )
    fig.add_bar(
        x=labels, y=[ev.gated.patients[p]["dice"] for p in patients], name="classifier-gated"
    )
    fig.update_layout(
        title="Two-stage system: per-patient Dice", barmode="group", yaxis_range=[0, 1]
    )
    return fig


def _subgroups(subgroups: Mapping[str, Mapping[str, Mapping[str, float]]]) -> go.Figure:
    fig = make_subplots(rows=1, cols=max(1, len(subgroups)), subplot_titles=list(subgroups))
    for col, (attribute, groups) in enumerate(subgroups.items(), start=1):
        names = list(groups)
        metric_names = [m for m in next(iter(groups.values()), {}) if m != "n"][:4]
        for metric in metric_names:
            fig.add_bar(
                x=[f"{g} (n={int(groups[g].get('n', 0))})" for g in names],
                y=[groups[g].get(metric, float("nan")) for g in names],
                name=f"{attribute}: {metric}",
                row=1,
                col=col,
            )
    fig.update_layout(title="Subgroup metrics", barmode="group")
    return fig


def _subgroup_tables(subgroups: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    parts = []
    for attribute, groups in subgroups.items():
        metric_names = sorted({m for values in groups.values() for m in values})
        head = "".join(f"<th>{html.escape(m)}</th>" for m in metric_names)
        body = "".join(
            f"<tr><td>{html.escape(g)}</td>"
            + "".join(f"<td>{values.get(m, float('nan')):.4g}</td>" for m in metric_names)
            + "</tr>"
            for g, values in groups.items()
        )
        parts.append(
            f"<table><caption>{html.escape(attribute)}</caption><tr><th>group</th>{head}</tr>{body}</table>"
        )
    return "".join(parts)


def build_report(
    *,
    classifier: ClassifierEvaluation | None = None,
    segmenter: SegmenterEvaluation | None = None,
    two_stage: TwoStageEvaluation | None = None,
    subgroups: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]
    | Mapping[str, Mapping[str, Mapping[str, float]]]
    | None = None,
    data: SliceArrays | None = None,
    title: str = "medops evaluation report",
) -> str:
    """The HTML of one self-contained report: headline tables, ROC, PR, reliability, confusion
    matrix (multi-class), Dice distribution, worst cases with overlays (needs ``data``, the
    arrays the segmenter was evaluated on), the two-stage comparison and subgroup metrics.

    ``subgroups`` is :func:`subgroup_metrics`'s result, or a dict of those keyed by model
    (e.g. {"classifier": ..., "segmenter": ...}). Plot divs carry the ids in :data:`PLOT_IDS`.
    """
    figures: list[tuple[str, str, go.Figure]] = []
    tables: list[str] = []
    if classifier is not None:
        tables.append(_table(classifier.headline(), "classifier"))
        if classifier.binary:
            figures += [
                ("Classifier", "roc-curve", _roc(classifier)),
                ("Classifier", "pr-curve", _pr(classifier)),
            ]
        else:
            figures.append(("Classifier", "confusion-matrix", _confusion(classifier)))
        figures.append(("Classifier", "calibration", _calibration(classifier)))
    if segmenter is not None:
        tables.append(_table(segmenter.headline(), "segmenter"))
        figures.append(("Segmenter", "dice-distribution", _dice_figure(segmenter)))
        if data is not None:
            worst = _worst(segmenter, data)
            if worst is not None:
                figures.append(("Segmenter", "worst-cases", worst))
    if two_stage is not None:
        tables.append(_table(two_stage.headline(), "two-stage system"))
        figures.append(("Two-stage system", "two-stage", _two_stage(two_stage)))
    subgroup_html = ""
    if subgroups:
        nested = all(
            isinstance(v, Mapping)
            and all(
                isinstance(g, Mapping) and all(isinstance(m, Mapping) for m in g.values())
                for g in v.values()
            )
            for v in subgroups.values()
        )
        per_model = subgroups if nested else {"": subgroups}
        for model_name, groups in per_model.items():
            figure = _subgroups(groups)  # type: ignore[arg-type]
            figure.update_layout(title=f"Subgroup metrics {model_name}".strip())
            div_id = "subgroups" if not model_name else f"subgroups-{model_name}"
            figures.append(("Subgroups", div_id, figure))
            subgroup_html += f"<h3>{html.escape(model_name)}</h3>" + _subgroup_tables(groups)  # type: ignore[arg-type]
    body: list[str] = [f"<h1>{html.escape(title)}</h1>", "<h2>Headline metrics</h2>", *tables]
    section = None
    for index, (name, div_id, figure) in enumerate(figures):
        if name != section:
            body.append(f"<h2>{html.escape(name)}</h2>")
            section = name
        body.append(figure.to_html(full_html=False, include_plotlyjs=index == 0, div_id=div_id))
    if subgroup_html:
        body.append("<h2>Subgroup tables</h2>" + subgroup_html)
    body.append(
        '<p class="note">Slices are shown under pseudonyms; thresholds are chosen on validation '
        "data; Dice is the volume Dice per patient unless stated.</p>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
