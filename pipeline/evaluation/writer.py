"""What an evaluation or inference run writes: per-scan predictions, then metrics and the HTML report.

:class:`PredictionWriter` (an evaluator handler) collects the rows and writes ``predictions.csv``/``.json``; its
``on_complete`` callables get the same rows in memory, e.g. :class:`MetricsWriter` for ``metrics.json`` and
``report.html`` (no CSV round trip).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from pipeline.data.cohort import CLASS_NAMES, study_id_of
from pipeline.evaluation.report import COLUMNS, metrics_from_rows, write_report
from pipeline.evaluation.saliency import pick_examples, saliency_montage
from pipeline.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)


def _image_name(item: dict) -> str:
    image = item.get("image")
    meta = getattr(image, "meta", None) or item.get("image_meta_dict") or {}
    name = meta.get("filename_or_obj", "")
    return str(name[0] if isinstance(name, list | tuple) else name)


class PredictionWriter:
    """Collect per-scan probabilities from an evaluator; write CSV and JSON and print a readout.

    Writes ``OUTPUT_DIR/predictions.csv`` (columns :data:`~pipeline.evaluation.report.COLUMNS`) and
    ``OUTPUT_DIR/predictions.json`` atomically when the evaluation epoch completes, and prints
    one line per scan the way the tutorial did: ``study_0001: 27.9 % normal, 72.1 % pneumonia``.
    With ``on_complete``, each callable then gets ``(rows, output_dir)`` (e.g. to write metrics).

    Args:
        output_dir: folder for the outputs.
        threshold: P(pneumonia) at or above which the prediction is ``pneumonia``.
        class_names: names of the output channels.
        print_results: print the per-scan readout.
        on_complete: callables run on the finished rows.
    """

    def __init__(
        self,
        output_dir: str,
        threshold: float = 0.5,
        class_names: Sequence[str] = CLASS_NAMES,
        print_results: bool = True,
        on_complete: Sequence[Callable[[list[dict], Path], object]] = (),
    ) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.class_names = tuple(class_names)
        self.print_results = print_results
        self.on_complete = list(on_complete)
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        """Register on the evaluator."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, _engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        for item, out in zip(batch, output):
            probs = torch.as_tensor(out["pred"]).detach().float().reshape(-1).cpu().numpy()
            image = _image_name(item)
            label = out.get("label", item.get("label"))
            if label is not None:
                label = torch.as_tensor(label).reshape(-1)
                label = int(label.argmax()) if label.numel() > 1 else int(label.item())
            row = {
                "study_id": str(item.get("study_id") or study_id_of(image)),
                "image": image,
                "label": "" if label is None else label,
                "category": str(item.get("category") or ""),
            }
            row.update({f"prob_{name}": float(p) for name, p in zip(self.class_names, probs)})
            row["prediction"] = self.class_names[1] if probs[1] >= self.threshold else self.class_names[0]
            self.rows.append(row)

    def _write(self, _engine: Engine) -> None:
        fields = list(COLUMNS[:4]) + [f"prob_{n}" for n in self.class_names] + ["prediction"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.output_dir / "predictions.csv", buf.getvalue())
        atomic_write_text(self.output_dir / "predictions.json", json.dumps(self.rows, indent=2) + "\n")
        if self.print_results:
            for row in self.rows:
                parts = ", ".join(f"{100 * row[f'prob_{n}']:.1f} % {n}" for n in self.class_names)
                print(f"{row['study_id']}: {parts}", flush=True)
        logger.info("wrote %d predictions to %s", len(self.rows), os.fspath(self.output_dir / "predictions.csv"))
        for fn in self.on_complete:
            fn(self.rows, self.output_dir)


class MetricsWriter:
    """Compute the metrics of the finished ``predictions.csv``; write ``metrics.json`` and ``report.html``.

    Used as an ``on_complete`` callable of :class:`PredictionWriter`, which has already written
    ``predictions.csv`` in the same folder and hands over the same rows.

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
        rows = [{**r, "label": None if r.get("label") in ("", None) else int(r["label"])} for r in rows]
        metrics = metrics_from_rows(rows, predictions, self.threshold, self.n_bootstrap, self.seed)
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
                rows,
                metrics,
                output_dir / "report.html",
                saliency_panels=self._saliency([r for r in rows if r["label"] is not None]),
                source=predictions,
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
