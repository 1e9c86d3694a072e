"""The operating threshold: chosen on validation data while training, stored beside the model, read at inference.

A scan is called pneumonia when P(pneumonia) >= threshold. Methods (``threshold_method`` in train.json):

- ``fixed``: :data:`DEFAULT_THRESHOLD` (0.5);
- ``youden``: the validation score maximising sensitivity + specificity - 1;
- ``sensitivity``: the highest validation score whose sensitivity reaches ``target_sensitivity``.

:class:`ThresholdSelector` is a handler of the validation evaluator: whenever the key metric improves,
that is at the epoch whose weights the best-model saver writes as ``model.pt``, it chooses the threshold on
that epoch's validation predictions and writes ``threshold.json`` beside ``model.pt`` (atomically). The two
files therefore belong together after early stopping, an interrupted run or a resumed one.
:func:`load` reads the threshold back for evaluation and inference (0.5 when the file is absent).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import evenly_divisible_all_gather

from pipeline.engine.handlers import class_output
from pipeline.evaluation.metrics import classification_metrics, threshold_for_sensitivity, youden_threshold
from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import InputError

__all__ = ["DEFAULT_THRESHOLD", "FILENAME", "METHODS", "ThresholdSelector", "choose_threshold", "load", "read"]

logger = logging.getLogger(__name__)

METHODS = ("fixed", "youden", "sensitivity")
FILENAME = "threshold.json"
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
        ``chosen_on``, and the cases and rates it was chosen on at that threshold: ``n``, ``n_positive``,
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
    return {
        "threshold": float(threshold),
        "method": method,
        "target_sensitivity": float(target_sensitivity) if method == "sensitivity" else None,
        "chosen_on": chosen_on,
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


def load(paths: str | os.PathLike | Sequence[str | os.PathLike], default: float = DEFAULT_THRESHOLD) -> float:
    """The operating threshold of one model, or of an ensemble, for ``$pipeline.engine.threshold.load(...)`` in configs.

    Args:
        paths: a checkpoint folder or file (``threshold.json`` is read beside it), or a list of them.
        default: the threshold of a model without ``threshold.json``.

    Returns:
        the stored threshold; for several models the mean of theirs (each chosen on its own validation
        data; a model without a file counts as ``default``).
    """
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not paths:
        raise ValueError("no checkpoint given")
    values = []
    for path in paths:
        record = read(path)
        values.append(float(record["threshold"]) if record else float(default))
        logger.info("threshold %.4f for %s (%s)", values[-1], path, record["method"] if record else "default")
    return float(np.mean(values))


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
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        method: str = "fixed",
        target_sensitivity: float | None = 0.9,
        model_filename: str = "model.pt",
    ) -> None:
        _check_method(method, target_sensitivity)
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
        if idist.get_rank() == 0:
            self.write(
                labels.numpy(),
                probs.numpy(),
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
