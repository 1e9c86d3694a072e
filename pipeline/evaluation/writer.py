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
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from pipeline.data.cohort import CLASS_NAMES, study_id_of
from pipeline.evaluation.report import COLUMNS, metrics_from_rows, scored_rows, write_report
from pipeline.evaluation.saliency import pick_examples, saliency_montage
from pipeline.synth.generate import nifti_bytes
from pipeline.transforms.decision import CLASSIFIER_KEY, RAW_INVOLVEMENT_KEY
from pipeline.transforms.severity import category, to_scan_geometry
from pipeline.utils.atomic import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

#: Per-scan columns of networks with a lesion output, after :data:`~pipeline.evaluation.report.COLUMNS`.
SEVERITY_COLUMNS = (
    "involvement",
    "involvement_true",
    "category_pred",
    "lesion_map",
    RAW_INVOLVEMENT_KEY,
    "lesion_ml",
    "focus_ml",
)


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

    ``prob_pneumonia`` is the model's decided P(pneumonia) (:class:`~pipeline.transforms.decision.Decided`);
    with that postprocessing, ``prob_classifier`` is the classifier head's own. A network with a lesion output
    (postprocessing :class:`~pipeline.transforms.severity.Involvementd`) adds :data:`SEVERITY_COLUMNS`:
    ``involvement`` (fraction of the lung, calibrated when the model's decision calibrates it),
    ``involvement_true`` (from the study's lesion mask, empty without one), ``category_pred`` (CT-0..CT-4,
    :func:`~pipeline.transforms.severity.category` of the decided P and that involvement), ``lesion_map``:
    ``OUTPUT_DIR/lesion_maps/<study_id>_lesion.nii.gz``, P(lesion) as uint8 percent in the grid and affine of the
    file the scan came from (``lesion_maps=False`` leaves the maps out), ``involvement_raw`` (as measured, before
    the calibration; empty without one), ``lesion_ml`` and ``focus_ml`` (the lesion volume in the lungs and its
    largest connected focus, mL, :func:`~pipeline.transforms.severity.lesion_evidence`).

    Args:
        output_dir: folder for the outputs.
        threshold: P(pneumonia) at or above which the prediction is ``pneumonia``.
        class_names: names of the output channels.
        print_results: print the per-scan readout.
        on_complete: callables run on the finished rows.
        lesion_maps: write each scan's lesion map (networks with a lesion output).
        refusals: an object whose ``refused`` list holds the studies refused before the run (a
            :class:`~pipeline.data.cache.CheckedCacheDataset` with ``refuse="study"``).

    Every row has ``status``: ``ok``, or ``refused`` with the ``reason`` and empty probabilities for a study
    refused on bad input (:mod:`pipeline.data.refusal`: those of ``refusals`` and those of
    ``engine.state.refused``). ``on_complete`` gets every row (metrics count the refused ones and score the
    others), and is not run when no study was predicted. With ``allow_seen`` (evaluate.json) each row also says
    ``seen_in_training``.
    """

    def __init__(
        self,
        output_dir: str,
        threshold: float = 0.5,
        class_names: Sequence[str] = CLASS_NAMES,
        print_results: bool = True,
        on_complete: Sequence[Callable[[list[dict], Path], object]] = (),
        lesion_maps: bool = True,
        refusals: object | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.class_names = tuple(class_names)
        self.print_results = print_results
        self.on_complete = list(on_complete)
        self.lesion_maps = lesion_maps
        self.refusals = refusals
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        """Register on the evaluator."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, _engine: Engine) -> None:
        self.rows = [self._refused_row(r) for r in getattr(self.refusals, "refused", [])]

    def write_refused(self) -> None:
        """Write the table of a run that had no study left to predict: the rows of ``refusals`` only."""
        self._reset(None)
        self._write(None)

    def _refused_row(self, refusal: Mapping) -> dict:
        """The row of a study refused on bad input (:func:`pipeline.data.refusal.refusal`)."""
        image = str(refusal["image"])
        row = {
            "study_id": str(refusal.get("study_id") or study_id_of(image)),
            "image": image,
            "label": "" if refusal.get("label") is None else refusal["label"],
            "category": str(refusal.get("category") or ""),
        }
        row.update({f"prob_{name}": "" for name in self.class_names})
        return {**row, "prediction": "", "status": "refused", "reason": str(refusal["reason"])}

    def _collect(self, engine: Engine) -> None:
        self.rows += [self._refused_row(r) for r in getattr(engine.state, "refused", None) or []]
        engine.state.refused = []
        batch, output = engine.state.batch, engine.state.output
        for item, out in zip(batch, output or []):
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
            if CLASSIFIER_KEY in out:
                row[CLASSIFIER_KEY] = float(out[CLASSIFIER_KEY])
            row["prediction"] = self.class_names[1] if probs[1] >= self.threshold else self.class_names[0]
            if "involvement" in out:
                row.update(self._severity(item, out, float(probs[1]), row["study_id"]))
            if "seen_in_training" in item:
                row["seen_in_training"] = bool(item["seen_in_training"])
            self.rows.append({**row, "status": "ok", "reason": ""})

    def _severity(self, item: Mapping, out: Mapping, prob_pneumonia: float, study_id: str) -> dict:
        """The :data:`SEVERITY_COLUMNS` of one scan; writes its lesion map."""
        truth = float(out["involvement_true"])
        row = {
            "involvement": round(float(out["involvement"]), 5),
            "involvement_true": "" if math.isnan(truth) else round(truth, 5),
            "category_pred": category(prob_pneumonia, float(out["involvement"]), self.threshold),
            "lesion_map": "",
            RAW_INVOLVEMENT_KEY: round(float(out[RAW_INVOLVEMENT_KEY]), 5) if RAW_INVOLVEMENT_KEY in out else "",
            "lesion_ml": float(out["lesion_ml"]),
            "focus_ml": float(out["focus_ml"]),
        }
        image = item.get("image")
        meta = getattr(image, "meta", None) or {}
        if self.lesion_maps and "lesion" in out and "original_affine" in meta:
            probs = to_scan_geometry(out["lesion"], image.affine, meta["original_affine"], meta["spatial_shape"])
            percent = np.clip(np.rint(probs * 100), 0, 100).astype(np.uint8)
            path = self.output_dir / "lesion_maps" / f"{study_id}_lesion.nii.gz"
            atomic_write_bytes(path, nifti_bytes(percent, np.asarray(meta["original_affine"], dtype=np.float64)))
            row["lesion_map"] = str(path)
        return row

    def _write(self, _engine: Engine) -> None:
        fields = list(COLUMNS[:4]) + [f"prob_{n}" for n in self.class_names] + ["prediction"]
        if any(CLASSIFIER_KEY in row for row in self.rows):
            fields.append(CLASSIFIER_KEY)
        if any("involvement" in row for row in self.rows):
            fields += list(SEVERITY_COLUMNS)
        if any("seen_in_training" in row for row in self.rows):
            fields.append("seen_in_training")
        fields += ["status", "reason"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.output_dir / "predictions.csv", buf.getvalue())
        atomic_write_text(self.output_dir / "predictions.json", json.dumps(self.rows, indent=2) + "\n")
        if self.print_results:
            for row in self.rows:
                if row["status"] == "refused":
                    print(f"{row['study_id']}: refused: {row['reason']}", flush=True)
                    continue
                parts = ", ".join(f"{100 * row[f'prob_{n}']:.1f} % {n}" for n in self.class_names)
                if "involvement" in row:
                    parts += f"; {100 * row['involvement']:.1f} % of the lung involved, {row['category_pred']}"
                print(f"{row['study_id']}: {parts}", flush=True)
        logger.info("wrote %d predictions to %s", len(self.rows), os.fspath(self.output_dir / "predictions.csv"))
        if any(row["status"] == "ok" for row in self.rows):
            for fn in self.on_complete:
                fn(self.rows, self.output_dir)


def write_refusals(output_dir: str | os.PathLike, refusals: object) -> None:
    """Write the table of a run left with no study to predict, before :func:`pipeline.utils.guard.finish` reads it.

    Every study was refused while a cache filled, so the evaluator (and its :class:`PredictionWriter`) never ran:
    ``predictions.csv``/``.json`` get the rows of ``refusals`` (an object with a ``refused`` list,
    :class:`~pipeline.data.cache.CheckedCacheDataset`). Nothing is written when the evaluator wrote its table or
    nothing was refused.
    """
    if not (Path(output_dir) / "predictions.json").is_file() and getattr(refusals, "refused", None):
        PredictionWriter(str(output_dir), print_results=False, refusals=refusals).write_refused()


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
                saliency_panels=self._saliency([r for r in scored_rows(rows) if r["label"] is not None]),
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
