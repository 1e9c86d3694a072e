"""Evaluation outputs: metrics and the HTML report of a finished prediction table, written beside it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from pipeline.evaluation.report import metrics_from_predictions, write_report
from pipeline.evaluation.saliency import pick_examples, saliency_montage
from pipeline.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Compute the metrics of the finished ``predictions.csv``; write ``metrics.json`` and ``report.html``.

    Used as an ``on_complete`` callable of :class:`pipeline.engine.handlers.PredictionWriter`, which
    has already written ``predictions.csv`` in the same folder.

    Args:
        threshold: P(pneumonia) at or above which a scan counts as pneumonia.
        n_bootstrap: bootstrap resamples for the AUC's 95 % interval.
        seed: seed of the bootstrap.
        report: also write the self-contained HTML report.
        network: with ``preprocessing``, draws Grad-CAM montages of a few TP/FP/FN/TN scans.
        preprocessing: the deterministic transform giving ``{"image": (1, H, W, D)}`` from a datalist item.
        n_examples: scans per outcome (TP, FP, FN, TN) in the saliency gallery.
        info: facts for the report's header (model, cohort, ...).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        n_bootstrap: int = 1000,
        seed: int = 0,
        report: bool = True,
        network: torch.nn.Module | None = None,
        preprocessing: Callable[[dict], Mapping] | None = None,
        n_examples: int = 1,
        info: Mapping[str, str] | None = None,
    ) -> None:
        self.threshold = float(threshold)
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.report = report
        self.network = network
        self.preprocessing = preprocessing
        self.n_examples = n_examples
        self.info = dict(info or {})

    def __call__(self, rows: Sequence[dict], output_dir: Path) -> dict:
        output_dir = Path(output_dir)
        predictions = output_dir / "predictions.csv"
        metrics = metrics_from_predictions(predictions, self.threshold, self.n_bootstrap, self.seed)
        atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        auc = metrics.get("auc")
        logger.info(
            "AUC %s, accuracy %.3f on %d scans",
            f"{auc:.3f}" if auc is not None else "n/a",
            metrics["accuracy"],
            metrics["n"],
        )
        if self.report:
            write_report(
                predictions,
                metrics,
                output_dir / "report.html",
                saliency_panels=self._saliency([r for r in rows if r.get("label") != ""]),
                info=self.info,
            )
        return metrics

    def _saliency(self, rows: Sequence[dict]) -> list[tuple[str, bytes]]:
        if self.network is None or self.preprocessing is None:
            return []
        panels = []
        for outcome, picked in pick_examples(rows, k=self.n_examples, threshold=self.threshold).items():
            for row in picked:
                image = self.preprocessing({"image": row["image"]})["image"]
                device = next(self.network.parameters()).device
                png = saliency_montage(self.network, torch.as_tensor(image).float().to(device))
                panels.append((f"{outcome}: {row['study_id']} (P(pneumonia) {row['prob_pneumonia']:.2f})", png))
        return panels
