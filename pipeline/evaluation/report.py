"""A self-contained HTML evaluation report from a prediction table: ``python -m pipeline report``.

The prediction table is the CSV written by the bundle's evaluation, with the columns of
:data:`COLUMNS` (``label`` 0 normal / 1 pneumonia, empty when unknown; ``category`` such as
``CT-0``, may be empty) and optionally those of :data:`OPTIONAL_COLUMNS`: ``status``/``reason`` (a study
the pipeline refused to score has status ``refused``, is left out of every metric and counted as
``n_refused``), and the severity of a network with a lesion output, ``involvement`` (predicted fraction of
the lung involved), ``involvement_true`` (the true fraction, empty when unknown), ``category_pred``
(``CT-0``..``CT-4``) and ``lesion_map``.

The report is one HTML file with every picture embedded as a base64 PNG data URI (no scripts, no external
resources): a metrics table with 95 % intervals (AUC by DeLong, proportions by Wilson), the ROC curve with
its bootstrap band, the confusion matrix, a reliability diagram, probability histograms per class, a
per-category table, the severity agreement (predicted against true involvement, category confusion and
kappa) when the table has it, and an optional gallery of saliency montages.

``python -m pipeline report`` writes the metrics as ``<report>.metrics.json`` beside the report, so an
evaluation's own ``metrics.json`` is never overwritten.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.evaluation.metrics import (
    CATEGORY_KEYS,
    PROPORTION_KEYS,
    category_agreement,
    classification_metrics,
    has_roc_band,
    involvement_agreement,
    roc_band,
    roc_curve,
)
from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import InputError

__all__ = [
    "COLUMNS",
    "OPTIONAL_COLUMNS",
    "REFUSED",
    "metrics_from_predictions",
    "metrics_from_rows",
    "metrics_path",
    "read_predictions",
    "scored_rows",
    "severity_from_rows",
    "write_report",
]

COLUMNS = ("study_id", "image", "label", "category", "prob_normal", "prob_pneumonia", "prediction")
#: Columns read when present: refusals, and the severity of a network with a lesion output.
OPTIONAL_COLUMNS = ("status", "reason", "involvement", "involvement_true", "category_pred", "lesion_map")
#: ``status`` of a study the pipeline refused to score (its probabilities may be empty).
REFUSED = "refused"
DEFAULT_TITLE = "Chest-CT pneumonia classification: evaluation report"
CLASS_COLOURS = {0: "#1f77b4", 1: "#d62728"}


def _probability(path: Path, row: int, column: str, text: str) -> float:
    """``text`` as a probability in [0, 1], or an :class:`InputError` naming the file and row."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, f"row {row}: {column} {text!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InputError(path, f"row {row}: {column} {text!r} is not a probability in [0, 1]")
    return value


def _optional_fraction(value: object) -> float | None:
    """An optional fraction of a row in memory (``None`` or ``""`` when unknown) as a float or ``None``."""
    return None if value is None or value == "" else float(value)


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Read and check a prediction table.

    Returns:
        one dict per row with the keys of :data:`COLUMNS` and of the :data:`OPTIONAL_COLUMNS` the file has:
        ``label`` as 0, 1 or ``None``, ``prob_normal`` and ``prob_pneumonia`` as floats (``None`` when empty in
        a refused row), ``involvement`` and ``involvement_true`` as floats or ``None`` when empty, the others
        as stripped strings.

    Raises:
        InputError: the file is missing or empty, lacks a column, or a row holds a label other
            than 0/1/empty, a probability or involvement that is not a number in [0, 1] (rows counted from 1
            after the header).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "prediction table not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise InputError(path, "empty file: expected a CSV header with columns " + ", ".join(COLUMNS))
        missing = [c for c in COLUMNS if c not in reader.fieldnames]
        if missing:
            raise InputError(path, f"missing column(s) {', '.join(missing)}; found {', '.join(reader.fieldnames)}")
        columns = [*COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in reader.fieldnames)]
        rows = []
        for i, raw in enumerate(reader, start=1):
            row = {c: (raw[c] or "").strip() for c in columns}
            if row["label"] not in ("", "0", "1"):
                raise InputError(path, f"row {i}: label {row['label']!r} is not 0, 1 or empty")
            row["label"] = int(row["label"]) if row["label"] else None
            refused = row.get("status") == REFUSED
            for column in ("prob_normal", "prob_pneumonia"):
                empty = refused and not row[column]
                row[column] = None if empty else _probability(path, i, column, row[column])
            for column in ("involvement", "involvement_true"):
                if row.get(column):
                    row[column] = _probability(path, i, column, row[column])
                elif column in row:
                    row[column] = None
            rows.append(row)
    if not rows:
        raise InputError(path, "no prediction rows after the header")
    return rows


def metrics_from_predictions(
    path: str | os.PathLike, threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """:func:`pipeline.evaluation.metrics.classification_metrics` of the labelled rows of a prediction table.

    The result also holds ``n_unlabelled`` and ``n_refused``, the scored rows without a label and the refused
    rows (both left out of every metric), and ``severity`` when the table has severity columns
    (:func:`severity_from_rows`).

    Raises:
        InputError: the table is unreadable (see :func:`read_predictions`) or no row has a label.
    """
    return metrics_from_rows(read_predictions(path), path, threshold, n_bootstrap, seed)


def metrics_from_rows(
    rows: Sequence[Mapping], source: str | os.PathLike, threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """:func:`metrics_from_predictions` of rows already in memory (``label`` 0, 1 or ``None``); ``source`` names them.

    Raises:
        InputError: no scored row has a label.
    """
    scored = scored_rows(rows)
    labelled = [r for r in scored if r["label"] is not None]
    if not labelled:
        raise InputError(source, "no row has a label (0 or 1); metrics need known labels")
    metrics = classification_metrics(
        [r["label"] for r in labelled],
        [r["prob_pneumonia"] for r in labelled],
        threshold=threshold,
        categories=[r["category"] for r in labelled],
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    metrics["n_unlabelled"] = len(scored) - len(labelled)
    metrics["n_refused"] = len(rows) - len(scored)
    if any("seen_in_training" in r for r in scored):  # evaluate.json's allow_seen: say how many were seen
        metrics["seen_in_training"] = sum(_truthy(r.get("seen_in_training")) for r in scored)
    severity = severity_from_rows(scored)
    if severity:
        metrics["severity"] = severity
    return metrics


def _truthy(value: object) -> bool:
    """A flag as written to JSON (``True``) or CSV (``"True"``)."""
    return value is True or str(value).strip().lower() in ("true", "1")


def scored_rows(rows: Sequence[Mapping]) -> list[Mapping]:
    """The rows the pipeline scored: all but those with ``status`` :data:`REFUSED`."""
    return [r for r in rows if r.get("status") != REFUSED]


def severity_from_rows(rows: Sequence[Mapping]) -> dict:
    """Severity agreement of the rows that carry severity columns; ``{}`` when none does.

    Returns:
        ``involvement`` (:func:`~pipeline.evaluation.metrics.involvement_agreement` of ``involvement`` against
        ``involvement_true``) when a row has a predicted involvement, and ``category``
        (:func:`~pipeline.evaluation.metrics.category_agreement` of ``category_pred`` against ``category``)
        when a row has a predicted category.
    """
    severity = {}
    if any(_optional_fraction(r.get("involvement")) is not None for r in rows):
        severity["involvement"] = involvement_agreement(
            [_optional_fraction(r.get("involvement")) for r in rows],
            [_optional_fraction(r.get("involvement_true")) for r in rows],
        )
    if any(r.get("category_pred") for r in rows):
        severity["category"] = category_agreement([r.get("category_pred") for r in rows], [r["category"] for r in rows])
    return severity


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return _png_uri(buf.getvalue())


def _roc_figure(y: np.ndarray, p: np.ndarray, metrics: Mapping) -> Figure:
    """ROC curve, its pointwise bootstrap band and the operating point at the threshold."""
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="chance")
    if metrics["auc"] is not None:
        if metrics.get("n_bootstrap", 0) > 0 and not has_roc_band(y):
            ax.plot([], [], " ", label="no bootstrap band: under two studies in a class")
        elif metrics.get("n_bootstrap", 0) > 0:
            grid, lo, hi = roc_band(y, p, n_bootstrap=metrics["n_bootstrap"], seed=metrics.get("seed", 0))
            ax.fill_between(grid, lo, hi, step="post", color="#d62728", alpha=0.2, lw=0, label="95% bootstrap band")
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, drawstyle="steps-post", c="#d62728", lw=2, label=f"ROC, AUC {_fmt(metrics['auc'])}")
        if metrics["sensitivity"] is not None and metrics["specificity"] is not None:
            ax.plot(
                1 - metrics["specificity"], metrics["sensitivity"], "ko", label=f"threshold {metrics['threshold']:g}"
            )
    else:
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title="ROC curve")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _confusion_figure(confusion: Mapping[str, int]) -> Figure:
    """2x2 confusion matrix, rows the true class, columns the predicted class."""
    counts = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    fig = Figure(figsize=(4.0, 3.6))
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    names = [["TN", "FP"], ["FN", "TP"]]
    for (i, j), v in np.ndenumerate(counts):
        colour = "white" if v > counts.max() / 2 else "black"
        ax.text(j, i, f"{names[i][j]}\n{v}", ha="center", va="center", color=colour, fontsize=12)
    ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="true", title="Confusion matrix")
    ax.set_xticklabels(["normal", "pneumonia"])
    ax.set_yticklabels(["normal", "pneumonia"])
    return fig


def _reliability_figure(metrics: Mapping) -> Figure:
    """Observed pneumonia fraction against mean P(pneumonia) per bin, with the bin sizes below."""
    bins = [b for b in metrics["calibration"] if b["n"]]
    fig = Figure(figsize=(4.6, 4.6))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="perfect calibration")
    ax.plot([b["mean_prob"] for b in bins], [b["frac_positive"] for b in bins], "o-", c="#d62728", label="model")
    ax.set(ylim=(0, 1), ylabel="observed fraction of pneumonia")
    ax.set_title(f"Reliability diagram (ECE {_fmt(metrics['ece'])})")
    ax.legend(loc="upper left", fontsize=8)
    edges = [b["lo"] for b in metrics["calibration"]]
    ax_n.bar(edges, [b["n"] for b in metrics["calibration"]], width=edges[1] - edges[0], align="edge", color="grey")
    ax_n.set(xlim=(0, 1), xlabel="predicted P(pneumonia)", ylabel="cases")
    return fig


def _involvement_figure(rows: Sequence[Mapping], agreement: Mapping) -> Figure:
    """Predicted against true lung involvement (percent), with the identity and the MosMed category bounds."""
    values = [(_optional_fraction(r.get("involvement_true")), _optional_fraction(r.get("involvement"))) for r in rows]
    pairs = np.array([v for v in values if None not in v], dtype=np.float64).reshape(-1, 2)
    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.subplots()
    for bound in (25, 50, 75):
        ax.axvline(bound, c="lightgrey", lw=0.8, ls="--")
        ax.axhline(bound, c="lightgrey", lw=0.8, ls="--")
    ax.plot([0, 100], [0, 100], ls=":", c="grey", lw=1, label="identity")
    ax.scatter(100 * pairs[:, 0], 100 * pairs[:, 1], s=18, c="#d62728", alpha=0.7, label=f"scans (n = {len(pairs)})")
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="true involvement (% of lung)", ylabel="predicted involvement (%)")
    ax.set_title(f"Involvement: Spearman {_fmt(agreement['spearman'])}, MAE {_fmt(agreement['mae_pp'])} pp")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def _histogram_figure(y: np.ndarray, p: np.ndarray, threshold: float) -> Figure:
    """Histograms of P(pneumonia) for each true class, with the threshold."""
    fig = Figure(figsize=(4.6, 3.6))
    ax = fig.subplots()
    edges = np.linspace(0, 1, 21)
    for cls, name in ((0, "normal"), (1, "pneumonia")):
        if (y == cls).any():
            ax.hist(p[y == cls], bins=edges, histtype="stepfilled", alpha=0.45, color=CLASS_COLOURS[cls], label=name)
    ax.axvline(threshold, c="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set(xlim=(0, 1), xlabel="predicted P(pneumonia)", ylabel="cases", title="Probabilities by true class")
    ax.legend(fontsize=8)
    return fig


def _fmt(value: float | int | None) -> str:
    """A metric for display: ``n/a`` when undefined, integers as is, ratios with 3 decimals."""
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _fmt_ci(ci: Sequence[float] | None) -> str:
    """An interval for display: ``[lo, hi]`` with 3 decimals, ``n/a`` when undefined."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a"


METRIC_ROWS = (
    ("accuracy", "Accuracy", "(TP + TN) / N"),
    ("sensitivity", "Sensitivity (recall)", "TP / (TP + FN)"),
    ("specificity", "Specificity", "TN / (TN + FP)"),
    ("ppv", "PPV (precision)", "TP / (TP + FP)"),
    ("npv", "NPV", "TN / (TN + FN)"),
    ("f1", "F1", "2 TP / (2 TP + FP + FN)"),
    ("brier", "Brier score", "mean (p - y)², lower is better"),
    ("ece", "ECE", "expected calibration error, 10 bins, lower is better"),
)

CATEGORY_HEADERS = {
    "n_positive": "pneumonia",
    "n_negative": "normal",
    "auc": "AUC",
    "sensitivity": "sens.",
    "specificity": "spec.",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "brier": "Brier",
    "positive_rate": "predicted pneumonia",
    "mean_prob": "mean P(pneumonia)",
}

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; } td, th { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #f2f2f2; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta td:first-child { font-weight: 600; } .note { color: #666; font-size: 0.9em; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1em; }
.figures img, figure img { max-width: 100%; } figure { margin: 0 0 1em; }
figcaption { font-size: 0.9em; color: #444; } table.compact { font-size: 0.85em; }
"""


def _table(
    header: Sequence[str] | None, rows: Sequence[Sequence[str]], numeric: Sequence[int] = (), cls: str = ""
) -> str:
    """An HTML table of escaped text; the columns in ``numeric`` are right-aligned."""
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if j in numeric else ''}>{html.escape(c)}</td>" for j, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table class='{cls}'>{head}{body}</table>"


def _metrics_table(m: Mapping) -> str:
    """The metrics with their intervals (``.get``: a ``metrics.json`` of an older version has fewer keys)."""
    auc_how = f"area under the ROC curve; interval: {m.get('auc_ci_method', 'bootstrap')}"
    if m.get("auc_ci_degenerate"):
        auc_how += f"; no interval: {m['auc_ci_reason']}"
    rows = [
        ["Cases (positive / negative)", f"{m['n']} ({m['n_positive']} / {m['n_negative']})", "", "labelled cases"],
        ["AUC", _fmt(m["auc"]), _fmt_ci(m.get("auc_ci95")), auc_how],
        ["Threshold", f"{m['threshold']:g}", "", "pneumonia when P(pneumonia) ≥ threshold"],
    ]
    rows += [
        [name, _fmt(m[key]), _fmt_ci(m.get(f"{key}_ci95")) if key in PROPORTION_KEYS else "", how]
        for key, name, how in METRIC_ROWS
    ]
    return _table(["Metric", "Value", "95% CI", "Definition"], rows, numeric=(1, 2))


def _category_cell(values: Mapping, key: str) -> str:
    """A per-category value, with its Wilson interval for a proportion."""
    interval = values.get(f"{key}_ci95")
    return _fmt(values[key]) + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _category_table(per_category: Mapping[str, Mapping]) -> str:
    if not per_category:
        return "<p class='note'>No categories in the prediction table.</p>"
    rows = [[cat, *(_category_cell(values, k) for k in CATEGORY_KEYS)] for cat, values in per_category.items()]
    header = ["Category", *(CATEGORY_HEADERS.get(k, k) for k in CATEGORY_KEYS)]
    return _table(header, rows, numeric=range(1, len(header)), cls="compact")


def _severity_section(severity: Mapping, rows: Sequence[Mapping]) -> list[str]:
    """The severity table, the category confusion matrix and the involvement scatter."""
    parts = ["<h2>Severity</h2>"]
    table = []
    involvement, category = severity.get("involvement"), severity.get("category")
    if involvement:
        n = f"n = {involvement['n']}, {involvement['n_without_truth']} without a true involvement"
        table.append(["Involvement: Spearman ρ", _fmt(involvement["spearman"]), f"predicted vs true fraction; {n}"])
        mae_how = "mean |predicted - true|, percentage points; 95 % CI " + _fmt_ci(involvement.get("mae_pp_ci95"))
        table.append(["Involvement: MAE", _fmt(involvement["mae_pp"]), mae_how + " (bootstrap over studies)"])
    if category:
        n = f"n = {category['n']} with both categories known"
        kappa_how = f"Cohen's kappa; {n}; 95 % CI {_fmt_ci(category.get('kappa_quadratic_ci95'))} (bootstrap)"
        table.append(["Category: quadratic-weighted κ", _fmt(category["kappa_quadratic"]), kappa_how])
        table.append(["Category: accuracy", _fmt(category["accuracy"]), "predicted category = true category"])
    parts.append(_table(["Metric", "Value", "Definition"], table, numeric=(1,)))
    if category and category["confusion"]:
        labels = category["labels"]
        confusion = [[label, *map(str, counts)] for label, counts in zip(labels, category["confusion"])]
        parts.append(_table(["true \\ predicted", *labels], confusion, numeric=range(1, len(labels) + 1)))
    if involvement and involvement["n"]:
        caption = "Predicted against true lung involvement; dashed: the MosMed category bounds (25, 50, 75 %)."
        parts.append(
            f"<figure><img src='{_figure_uri(_involvement_figure(rows, involvement))}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return parts


def write_report(
    predictions: str | os.PathLike | Sequence[Mapping],
    metrics: Mapping,
    out_html: str | os.PathLike,
    saliency_panels: Sequence[tuple[str, bytes]] | None = None,
    title: str = DEFAULT_TITLE,
    info: Mapping[str, str] | None = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Write the evaluation report as one self-contained HTML file (atomically).

    Args:
        predictions: the prediction table (see :func:`read_predictions`), or its rows; the labelled rows
            give the ROC curve and the histograms.
        metrics: :func:`pipeline.evaluation.metrics.classification_metrics` of that table (e.g. from
            :func:`metrics_from_predictions` or the bundle's ``metrics.json``).
        out_html: the report to write.
        saliency_panels: ``(caption, PNG bytes)`` pairs for the gallery, e.g. from
            :func:`pipeline.evaluation.saliency.saliency_montage`; ``None`` or empty leaves the gallery out.
        title: the report's heading.
        info: cohort and model facts shown in the header (e.g. ``{"model": "chestnet", ...}``).
        source: the table's file, shown in the header (default: ``predictions`` when it is a path).

    Returns:
        the path of the report.
    """
    if isinstance(predictions, str | os.PathLike):
        source, predictions = predictions, read_predictions(predictions)
    scored = scored_rows(predictions)
    rows = [r for r in scored if r["label"] is not None]
    y = np.array([r["label"] for r in rows], dtype=np.int64)
    p = np.array([r["prob_pneumonia"] for r in rows], dtype=np.float64)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {**(info or {}), "predictions": os.fspath(source or ""), "generated": generated}
    figures = [
        (_roc_figure(y, p, metrics), "ROC curve with the pointwise 95% bootstrap band; dot: the operating point."),
        (_confusion_figure(metrics["confusion"]), f"Confusion matrix at threshold {metrics['threshold']:g}."),
        (_reliability_figure(metrics), "Reliability diagram: observed pneumonia fraction per probability bin."),
        (_histogram_figure(y, p, metrics["threshold"]), "Distribution of P(pneumonia) for each true class."),
    ]
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        _table(None, [[str(k), str(v)] for k, v in meta.items()], cls="meta"),
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        "<p class='note'>95% CI: AUC by DeLong's method, proportions by Wilson score intervals.",
        " n/a: undefined (a ratio with a zero denominator, or AUC with one class).",
        f" Rows without a label: {metrics.get('n_unlabelled', 0)}; studies refused:"
        f" {metrics.get('n_refused', 0)} (both left out of every metric).</p>",
        "<div class='figures'>",
        *(
            f"<figure><img src='{_figure_uri(f)}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}</figcaption>"
            "</figure>"
            for f, c in figures
        ),
        "</div><h2>Per category</h2>",
        _category_table(metrics.get("per_category", {})),
        "<p class='note'>pneumonia / normal: labelled cases of each class; predicted pneumonia: the fraction"
        " of cases predicted pneumonia; AUC is n/a in a category holding one class; brackets: Wilson 95% CI.</p>",
    ]
    if metrics.get("severity"):
        parts += _severity_section(metrics["severity"], scored)
    if saliency_panels:
        parts.append("<h2>Saliency (Grad-CAM, pneumonia class)</h2>")
        parts += [
            f"<figure><img src='{_png_uri(png)}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, png in saliency_panels
        ]
    parts.append("</body></html>\n")
    return atomic_write_text(out_html, "\n".join(parts))


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m pipeline report``."""
    parser.add_argument("predictions", type=Path, help="prediction table (predictions.csv of the evaluation)")
    parser.add_argument(
        "--out", type=Path, required=True, help="HTML report to write; its metrics go beside it as <name>.metrics.json"
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="pneumonia when P(pneumonia) >= T (0.5)")
    parser.add_argument("--title", default=DEFAULT_TITLE, help="heading of the report")
    parser.add_argument(
        "--info",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="cohort or model fact for the header; repeatable",
    )
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples of the ROC band (1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")


def metrics_path(out_html: str | os.PathLike) -> Path:
    """Where ``python -m pipeline report`` writes its metrics: ``report.html`` -> ``report.metrics.json``.

    Never ``metrics.json``, the name of an evaluation's own metrics, which a rebuilt report (perhaps at another
    threshold) must not replace.
    """
    out_html = Path(out_html)
    return out_html.with_name(out_html.stem + ".metrics.json")


def run(args: argparse.Namespace) -> int:
    """Compute the metrics of a prediction table, write them beside the report (:func:`metrics_path`) and the report."""
    if not 0.0 <= args.threshold <= 1.0:
        raise InputError("--threshold", f"{args.threshold} is not in [0, 1]")
    metrics = metrics_from_predictions(args.predictions, args.threshold, args.n_bootstrap, args.seed)
    metrics_json = atomic_write_text(metrics_path(args.out), json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    write_report(args.predictions, metrics, args.out, title=args.title, info=dict(args.info))
    auc = f"AUC {_fmt(metrics['auc'])}" + (f" {_fmt_ci(metrics['auc_ci95'])} (DeLong)" if metrics["auc_ci95"] else "")
    print(f"{auc}, accuracy {_fmt(metrics['accuracy'])} on {metrics['n']} cases")
    print(f"wrote {args.out} and {metrics_json}")
    return 0
