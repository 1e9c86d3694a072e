"""Cross-validation summary: ``python -m pipeline cv-summary EVAL_DIR... --out cv.json``.

Each argument is the evaluation folder of one fold (its ``metrics.json``, written by the bundle's
``evaluate.json`` run with ``--fold K``) or that ``metrics.json`` itself. The summary gives, for every
metric, the mean and the sample standard deviation (``ddof=1``) over the folds where it is defined, and
the same for each category present; undefined values (``null``) are left out and counted.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.evaluation.metrics import CATEGORY_KEYS
from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import InputError

__all__ = ["SUMMARY_KEYS", "add_arguments", "read_metrics", "run", "summarize", "summarize_values"]

#: Metrics of each fold's ``metrics.json`` that are summarised.
SUMMARY_KEYS = (*CATEGORY_KEYS, "threshold", "ece")


def read_metrics(path: str | os.PathLike) -> dict:
    """The metrics of one fold: ``path/metrics.json`` or ``path`` itself."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(file, "metrics.json not found (evaluate the fold first)")
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(file, f"not valid JSON ({err})") from err
    if not isinstance(metrics, dict) or "auc" not in metrics or not isinstance(metrics["auc"], float | int | None):
        raise InputError(file, "not a metrics.json of the bundle's evaluation (expected an object with 'auc')")
    return metrics


def summarize_values(values: Sequence[float | None]) -> dict:
    """``mean``, ``sd`` (sample, ``None`` with fewer than two), ``min``, ``max``, ``n_defined`` and the ``values``."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    return {
        "mean": float(defined.mean()) if defined.size else None,
        "sd": float(defined.std(ddof=1)) if defined.size > 1 else None,
        "min": float(defined.min()) if defined.size else None,
        "max": float(defined.max()) if defined.size else None,
        "n_defined": int(defined.size),
        "values": list(values),
    }


def summarize(folds: Sequence[Mapping], names: Sequence[str] | None = None) -> dict:
    """Mean and sd of every metric of :data:`SUMMARY_KEYS` over the folds' metrics, overall and per category.

    Returns:
        ``{"n_folds", "folds" (names), "metrics": {key: summary}, "per_category": {category: {key: summary}}}``
        with summaries from :func:`summarize_values`; a category summarises the folds where it is present.
    """
    if len(folds) == 0:
        raise ValueError("no folds to summarise")
    names = list(names) if names is not None else [f"fold{k}" for k in range(len(folds))]
    categories = sorted({c for m in folds for c in m.get("per_category", {})})
    per_category = {}
    for cat in categories:
        present = [m["per_category"][cat] for m in folds if cat in m.get("per_category", {})]
        per_category[cat] = {k: summarize_values([m.get(k) for m in present]) for k in CATEGORY_KEYS}
    return {
        "n_folds": len(folds),
        "folds": names,
        "metrics": {k: summarize_values([m.get(k) for m in folds]) for k in SUMMARY_KEYS},
        "per_category": per_category,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m pipeline cv-summary``."""
    parser.add_argument("runs", nargs="+", help="evaluation folder (or metrics.json) of each fold")
    parser.add_argument("--out", required=True, help="summary JSON to write")


def run(args: argparse.Namespace) -> int:
    """Write the summary and print ``metric: mean ± sd`` for the main metrics."""
    summary = summarize([read_metrics(p) for p in args.runs], names=[os.fspath(p) for p in args.runs])
    atomic_write_text(Path(args.out), json.dumps(summary, indent=2) + "\n")
    for key in ("auc", "accuracy", "sensitivity", "specificity", "f1", "brier", "ece", "threshold"):
        s = summary["metrics"][key]
        if s["mean"] is None:
            print(f"{key}: undefined in every fold")
            continue
        sd = f" ± {s['sd']:.3f}" if s["sd"] is not None else ""
        print(f"{key}: {s['mean']:.3f}{sd} ({s['n_defined']} of {summary['n_folds']} folds)")
    print(f"wrote {args.out}")
    return 0
