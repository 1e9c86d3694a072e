"""The operating threshold: chosen on validation data while training, stored beside the model, read at inference.

A scan is called pneumonia when P(pneumonia) >= threshold. Methods (``threshold_method`` in train.json):

- ``fixed``: :data:`DEFAULT_THRESHOLD` (0.5);
- ``youden``: the cut on the validation scores maximising sensitivity + specificity - 1;
- ``sensitivity``: the highest cut on the validation scores whose sensitivity reaches ``target_sensitivity``.

A chosen cut is placed midway between the two neighbouring distinct validation scores (recorded as
``between``), never on a score, so that it splits the validation cases as intended with a margin on both sides.

:class:`ThresholdSelector` is a handler of the validation evaluator: whenever the key metric improves,
that is at the epoch whose weights the best-model saver writes as ``model.pt``, it chooses the threshold on
that epoch's validation predictions and writes ``threshold.json`` beside ``model.pt`` (atomically). The two
files therefore belong together after early stopping, an interrupted run or a resumed one.

An ensemble (several ``ckpt_files``) averages its members' probabilities, so its scores are not any member's
and neither is its threshold: :func:`choose_ensemble_threshold` (``python -m pipeline ensemble-threshold``)
chooses it on the ensemble's own validation predictions and writes :data:`ENSEMBLE_FILENAME` in the members'
common folder, with the SHA-256 of every member. :func:`load` reads the threshold of one model (0.5 when the
file is absent) or of an ensemble, for evaluation and inference.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import evenly_divisible_all_gather

from pipeline.engine.handlers import class_output
from pipeline.engine.record import sha256
from pipeline.evaluation.metrics import classification_metrics, threshold_for_sensitivity, youden_threshold
from pipeline.evaluation.report import read_predictions, scored_rows
from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import InputError

if TYPE_CHECKING:
    from pipeline.engine.decision import DecisionFitter

__all__ = [
    "DEFAULT_THRESHOLD",
    "ENSEMBLE_FILENAME",
    "FILENAME",
    "METHODS",
    "ThresholdSelector",
    "add_arguments",
    "choose_ensemble_threshold",
    "choose_threshold",
    "ensemble_threshold_file",
    "load",
    "read",
    "run",
]

logger = logging.getLogger(__name__)

METHODS = ("fixed", "youden", "sensitivity")
FILENAME = "threshold.json"
ENSEMBLE_FILENAME = "threshold_ensemble.json"
DEFAULT_THRESHOLD = 0.5


def _check_method(method: str, target_sensitivity: float | None) -> None:
    if method not in METHODS:
        raise ValueError(f"threshold method must be one of {METHODS}, got {method!r}")
    if method == "sensitivity" and (target_sensitivity is None or not 0.0 < target_sensitivity <= 1.0):
        raise ValueError(f"target_sensitivity must lie in (0, 1] for method 'sensitivity', got {target_sensitivity}")


def choose_threshold(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    method: str = "fixed",
    target_sensitivity: float | None = None,
    chosen_on: str = "validation",
) -> dict:
    """Choose the threshold on ``(labels (N,), probs (N,) P(pneumonia))``; return the record of ``threshold.json``.

    Returns:
        ``threshold``, ``method``, ``target_sensitivity`` (``None`` unless method ``sensitivity``),
        ``chosen_on``, ``between`` (the two validation scores a chosen threshold lies between; ``None`` for
        ``fixed``), and the cases and rates it was chosen on at that threshold: ``n``, ``n_positive``,
        ``n_negative``, ``auc``, ``sensitivity``, ``specificity``.

    Raises:
        ValueError: unknown method, bad target, or labels without the classes the method needs.
    """
    _check_method(method, target_sensitivity)
    if method == "youden":
        threshold = youden_threshold(labels, probs)
    elif method == "sensitivity":
        threshold = threshold_for_sensitivity(labels, probs, target_sensitivity)
    else:
        threshold = DEFAULT_THRESHOLD
    m = classification_metrics(labels, probs, threshold=threshold, n_bootstrap=0)
    scores = np.asarray(probs, dtype=np.float64)
    below, above = scores[scores < threshold], scores[scores >= threshold]
    between = [float(below.max()) if below.size else 0.0, float(above.min()) if above.size else 1.0]
    return {
        "threshold": float(threshold),
        "method": method,
        "target_sensitivity": float(target_sensitivity) if method == "sensitivity" else None,
        "chosen_on": chosen_on,
        "between": between if method != "fixed" else None,
        **{k: m[k] for k in ("n", "n_positive", "n_negative", "auc", "sensitivity", "specificity")},
    }


def threshold_file(path: str | os.PathLike) -> Path:
    """``threshold.json`` of a checkpoint folder, or the one beside a checkpoint file."""
    path = Path(path)
    return path / FILENAME if path.is_dir() or not path.suffix else path.parent / FILENAME


def read(path: str | os.PathLike) -> dict | None:
    """The threshold record stored for a checkpoint folder or file; ``None`` when there is none.

    Raises:
        InputError: the file is not JSON or its ``threshold`` is not a number in [0, 1].
    """
    file = threshold_file(path)
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(file, f"not valid JSON ({err})") from err
    value = record.get("threshold") if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InputError(file, f"expected an object with a 'threshold' number in [0, 1], got {value!r}")
    return record


def _member_file(path: str | os.PathLike) -> Path:
    """The checkpoint file of an ensemble member given as a file or as its folder (``model.pt``)."""
    path = Path(path)
    return path / "model.pt" if path.is_dir() or not path.suffix else path


def ensemble_threshold_file(ckpt_files: Sequence[str | os.PathLike]) -> Path:
    """:data:`ENSEMBLE_FILENAME` in the members' common folder (``models/`` for ``models/fold*/model.pt``)."""
    folders = [os.path.abspath(_member_file(f).parent) for f in ckpt_files]
    return Path(os.path.commonpath(folders)) / ENSEMBLE_FILENAME


def _ensemble_record(ckpt_files: Sequence[str | os.PathLike]) -> dict | None:
    """The stored ensemble threshold of exactly these members, ``None`` when none is stored.

    Raises:
        InputError: the file is unreadable, or was written for other members or other weights.
    """
    file = ensemble_threshold_file(ckpt_files)
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        stored = {m["sha256"] for m in record["members"]}
        value = record["threshold"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise InputError(file, f"not an ensemble threshold file ({err!r})") from err
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InputError(file, f"expected a 'threshold' number in [0, 1], got {value!r}")
    given = {sha256(_member_file(f)) for f in ckpt_files}
    if given != stored:
        raise InputError(
            file,
            f"chosen for another ensemble ({len(stored)} members: "
            f"{', '.join(m.get('file', '?') for m in record['members'])}) or for other weights; choose this one's with "
            "'python -m pipeline ensemble-threshold' (docs/evaluation.md), or pass --threshold",
        )
    return record


def load(paths: str | os.PathLike | Sequence[str | os.PathLike], default: float = DEFAULT_THRESHOLD) -> float:
    """The operating threshold of one model, or of an ensemble, for ``$pipeline.engine.threshold.load(...)`` in configs.

    Args:
        paths: a checkpoint folder or file (``threshold.json`` is read beside it), or a list of them.
        default: the threshold of a model without ``threshold.json``.

    Returns:
        one model: its stored threshold, or ``default``. Several (an ensemble): the threshold chosen on the
        ensemble's own validation predictions (:func:`choose_ensemble_threshold`); without one, ``default``
        when no member chose its threshold on data (all ``fixed`` or without a file).

    Raises:
        InputError: an ensemble whose members chose their thresholds on their own validation data has no
            ensemble threshold (their mean would belong to none of the ensemble's scores), or its file is
            unreadable or belongs to other members.
    """
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not paths:
        raise ValueError("no checkpoint given")
    if len(paths) == 1:
        record = read(paths[0])
        value = float(record["threshold"]) if record else float(default)
        logger.info("threshold %.4f for %s (%s)", value, paths[0], record["method"] if record else "default")
        return value
    record = _ensemble_record(paths)
    if record is not None:
        logger.info("ensemble threshold %.4f (%s) from %s", record["threshold"], record["method"], record["chosen_on"])
        return float(record["threshold"])
    chosen = [(p, r) for p, r in ((p, read(p)) for p in paths) if r and r["method"] != "fixed"]
    if chosen:
        members = ", ".join(f"{p}: {r['method']} {r['threshold']:.4f}" for p, r in chosen)
        raise InputError(
            ensemble_threshold_file(paths),
            f"not found; members chose their thresholds on their own validation data ({members}), which do not "
            "carry over to the ensemble's averaged probabilities. Evaluate the ensemble on validation data with "
            "--threshold 0.5, then run 'python -m pipeline ensemble-threshold PREDICTIONS.csv --ckpt-files ...' "
            "(docs/evaluation.md), or pass --threshold",
        )
    logger.info("ensemble of %d models without chosen thresholds: threshold %.4f", len(paths), default)
    return float(default)


def choose_ensemble_threshold(
    ckpt_files: Sequence[str | os.PathLike],
    predictions: str | os.PathLike,
    method: str = "youden",
    target_sensitivity: float | None = None,
) -> dict:
    """Choose an ensemble's threshold on its own validation predictions; write :data:`ENSEMBLE_FILENAME`.

    Args:
        ckpt_files: the members, as given to the bundle's ``ckpt_files`` (files or folders of ``model.pt``).
        predictions: ``predictions.csv`` of the ensemble (evaluate.json with these ``ckpt_files``) on labelled
            validation studies that none of the members trained on and that are not the test set.
        method: one of :data:`METHODS`.
        target_sensitivity: with method ``sensitivity``, the sensitivity to reach.

    Returns:
        the record written: that of :func:`choose_threshold` (``chosen_on`` the predictions file) and
        ``members`` (``file`` relative to the record's folder, ``sha256``), read back by :func:`load`.

    Raises:
        InputError: fewer than two members, a missing checkpoint, or a prediction table without labelled rows.
        ValueError: the method does not apply to the labels (e.g. one class only).
    """
    if isinstance(ckpt_files, str | os.PathLike) or len(ckpt_files) < 2:
        raise InputError("--ckpt-files", f"an ensemble has at least two members, got {ckpt_files!r}")
    file = ensemble_threshold_file(ckpt_files)
    members = [
        {"file": os.path.relpath(os.path.abspath(m), file.parent), "sha256": sha256(m)}
        for m in map(_member_file, ckpt_files)
    ]
    rows = [r for r in scored_rows(read_predictions(predictions)) if r["label"] is not None]
    if not rows:
        raise InputError(predictions, "no labelled row: an ensemble threshold is chosen on labelled validation studies")
    record = choose_threshold(
        [r["label"] for r in rows],
        [r["prob_pneumonia"] for r in rows],
        method,
        target_sensitivity,
        chosen_on=os.path.abspath(predictions),
    )
    record["members"] = members
    atomic_write_text(file, json.dumps(record, indent=2) + "\n")
    logger.info("ensemble threshold %.4f (%s) written to %s", record["threshold"], method, file)
    return record


class ThresholdSelector:
    """Validation handler writing ``OUTPUT_DIR/threshold.json`` for each new best model.

    Attach to the validation evaluator after the best-model saver (it reads ``engine.state.best_metric_epoch``,
    set by MONAI's workflows). Under ``torch.distributed`` the predictions of every rank are gathered and rank 0
    writes. When the method cannot be applied (validation data of one class), the record falls back to
    ``fixed`` and says why in ``fallback``.

    Args:
        output_dir: the folder of ``model.pt`` (the bundle's ``ckpt_dir``).
        method: one of :data:`METHODS`.
        target_sensitivity: sensitivity to reach with method ``sensitivity``, in (0, 1].
        model_filename: the best model's file, recorded in the JSON.
        decision: the run's :class:`~pipeline.engine.decision.DecisionFitter` (attached before this handler): the
            threshold is then chosen on its decided validation probabilities, not on the head's.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        method: str = "fixed",
        target_sensitivity: float | None = 0.9,
        model_filename: str = "model.pt",
        decision: DecisionFitter | None = None,
    ) -> None:
        _check_method(method, target_sensitivity)
        self.decision = decision
        self.output_dir = Path(output_dir)
        self.method = method
        self.target_sensitivity = target_sensitivity
        self.model_filename = model_filename
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        """Register on the evaluator's epochs and iterations."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _reset(self, _engine: Engine) -> None:
        self._probs, self._labels = [], []

    def _collect(self, engine: Engine) -> None:
        probs, labels = class_output(engine.state.output)
        self._probs.append(probs[:, 1].detach().float().cpu())
        self._labels.append(labels.detach().long().cpu())

    def _epoch_completed(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        probs, labels = torch.cat(self._probs), torch.cat(self._labels)
        if idist.get_world_size() > 1:
            probs, labels = evenly_divisible_all_gather(probs), evenly_divisible_all_gather(labels)
        labels, probs = labels.numpy(), probs.numpy()
        decided = self.decision.decided() if self.decision is not None else None
        if decided is not None:
            labels, probs = decided
        if idist.get_rank() == 0:
            self.write(
                labels,
                probs,
                engine.state.epoch,
                engine.state.key_metric_name,
                engine.state.best_metric,
            )

    def write(self, labels: np.ndarray, probs: np.ndarray, epoch: int, metric_name: str, metric: float) -> dict:
        """Choose the threshold on the best model's validation predictions and write the record atomically."""
        try:
            record = choose_threshold(labels, probs, self.method, self.target_sensitivity)
        except ValueError as err:
            logger.warning("threshold method %r not applicable (%s); using %s", self.method, err, DEFAULT_THRESHOLD)
            record = {**choose_threshold(labels, probs, "fixed"), "fallback": f"{self.method}: {err}"}
        record.update(model=self.model_filename, epoch=int(epoch), key_metric={metric_name: float(metric)})
        atomic_write_text(self.output_dir / FILENAME, json.dumps(record, indent=2) + "\n")
        logger.info(
            "operating threshold %.4f (%s) written to %s",
            record["threshold"],
            record["method"],
            self.output_dir / FILENAME,
        )
        return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m pipeline ensemble-threshold``."""
    parser.add_argument("predictions", type=Path, help="predictions.csv of the ensemble on labelled validation data")
    parser.add_argument("--ckpt-files", nargs="+", required=True, help="the ensemble's checkpoints (>= 2)")
    parser.add_argument("--method", choices=[m for m in METHODS if m != "fixed"], default="youden")
    parser.add_argument("--target-sensitivity", type=float, default=None, help="sensitivity for --method sensitivity")


def run(args: argparse.Namespace) -> int:
    """Choose the ensemble's threshold and print where it went."""
    try:
        record = choose_ensemble_threshold(args.ckpt_files, args.predictions, args.method, args.target_sensitivity)
    except InputError:
        raise
    except ValueError as err:  # the method does not apply to these labels, or a bad target
        raise InputError(args.predictions, str(err)) from err
    low, high = record["between"]
    rates = ", ".join(
        f"{k} {'n/a' if record[k] is None else format(record[k], '.3f')}" for k in ("sensitivity", "specificity")
    )
    print(
        f"threshold {record['threshold']:.6g} ({record['method']}, between scores {low:.6g} and {high:.6g}): "
        f"{rates} on {record['n']} studies"
    )
    print(f"wrote {ensemble_threshold_file(args.ckpt_files)}")
    return 0
