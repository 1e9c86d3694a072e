"""Evaluation outputs: metrics of a finished prediction table, written beside it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.atomic import atomic_write_text
from pipeline.metrics import classification_metrics

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Compute classification metrics from prediction rows and write ``metrics.json``.

    Used as an ``on_complete`` callable of :class:`pipeline.handlers.PredictionWriter`.

    Args:
        threshold: P(pneumonia) at or above which a scan counts as pneumonia.
        n_bootstrap: bootstrap resamples for the AUC's 95 % interval.
        seed: seed of the bootstrap.
    """

    def __init__(self, threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0) -> None:
        self.threshold = float(threshold)
        self.n_bootstrap = n_bootstrap
        self.seed = seed

    def __call__(self, rows: Sequence[dict], output_dir: Path) -> dict:
        labelled = [r for r in rows if r.get("label") != ""]
        if not labelled:
            raise ValueError(f"no labelled scans among {len(rows)} predictions: nothing to evaluate")
        metrics = classification_metrics(
            [int(r["label"]) for r in labelled],
            [float(r["prob_pneumonia"]) for r in labelled],
            threshold=self.threshold,
            categories=[r.get("category") or None for r in labelled],
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
        )
        atomic_write_text(Path(output_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        auc = metrics.get("auc")
        logger.info("AUC %s, accuracy %.3f on %d scans", f"{auc:.3f}" if auc is not None else "n/a",
                    metrics["accuracy"], metrics["n"])
        return metrics
