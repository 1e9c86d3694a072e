"""Ignite handlers and batch helpers for the bundle's engines: learning curves, float batches, metric outputs.

:class:`LearningCurves` follows MONAI's handler pattern: construct in the config, ``attach(engine)`` is called
by the MONAI workflow that lists it in ``train_handlers`` / ``val_handlers``.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines import Workflow
from monai.engines.utils import default_prepare_batch

from pipeline.transforms.chain import HAS_MASK, MASK
from pipeline.utils.atomic import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)


def class_output(output: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decollated engine output -> ``(probs (B, C), labels (B,))`` for ignite's ``Accuracy``."""
    pred = torch.stack([torch.as_tensor(o["pred"]) for o in output])
    label = torch.stack([torch.as_tensor(o["label"]).reshape(-1) for o in output])
    return pred, label.argmax(dim=1) if label.shape[1] > 1 else label[:, 0].long()


def prepare_float_batch(
    batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor | dict | None]:
    """MONAI's ``default_prepare_batch``, with the image cast to float32 once it is on the device.

    The cache holds float16 volumes (half the memory); the network gets float32 (or AMP's choice). A labelled
    batch that carries lesion masks (the chain's ``lesion=True``) gets the multi-task target
    ``{"label": (B,), "mask": (B, 1, H, W, D) float32, "has_mask": (B,)}`` of
    :class:`pipeline.engine.multitask.MultiTaskLoss`.
    """
    image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    if label is not None and MASK in batchdata and HAS_MASK in batchdata:
        mask = torch.as_tensor(batchdata[MASK]).to(device=device, non_blocking=non_blocking).float()
        has_mask = torch.as_tensor(batchdata[HAS_MASK]).to(device=device, non_blocking=non_blocking)
        label = {"label": label, MASK: mask, HAS_MASK: has_mask}
    return image.float(), label


def logits_output(output: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decollated engine output -> ``(logits (B, C), labels (B,))`` for ignite's ``Loss``."""
    logits = torch.stack([torch.as_tensor(o["logits"]).float() for o in output])
    return logits, class_output(output)[1]


class LearningCurves:
    """Record loss, accuracy and AUC per epoch (train and validation); write a CSV and a PNG.

    The CSV ``OUTPUT_DIR/learning_curves.csv`` is rewritten (atomically) after every validation,
    the figure ``OUTPUT_DIR/learning_curves.png`` when training completes, like the tutorial's
    figure of accuracy and loss against epochs.

    Args:
        output_dir: folder for the CSV and PNG (e.g. beside the TensorBoard logs).
        evaluator: the validation engine whose metrics (``val_*``) are recorded.
        train_metrics: trainer metric names to record (e.g. ``("train_acc", "train_auc")``).
        loss_key: key of the loss in the trainer's output.
    """

    def __init__(
        self,
        output_dir: str,
        evaluator: Engine,
        train_metrics: Sequence[str] = ("train_acc", "train_auc"),
        loss_key: str = "loss",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.evaluator = evaluator
        self.train_metrics = tuple(train_metrics)
        self.loss_key = loss_key
        self.rows: list[dict[str, float]] = []
        self._losses: list[float] = []
        self._trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Register on the trainer's iterations and epochs and on the evaluator's epochs."""
        self._trainer = engine
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._train_epoch)
        engine.add_event_handler(Events.COMPLETED, self.plot)
        self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._val_epoch)

    def _iteration(self, engine: Engine) -> None:
        out = engine.state.output
        out = out[0] if isinstance(out, list) else out
        self._losses.append(float(out[self.loss_key]))

    def _train_epoch(self, engine: Engine) -> None:
        row = self._row(engine.state.epoch)
        row["train_loss"] = float(np.mean(self._losses)) if self._losses else np.nan
        row.update({k: float(engine.state.metrics[k]) for k in self.train_metrics if k in engine.state.metrics})
        self._losses = []
        self.write_csv()

    def _val_epoch(self, evaluator: Engine) -> None:
        # validation runs inside the trainer's EPOCH_COMPLETED, before or after _train_epoch
        epoch = self._trainer.state.epoch if self._trainer is not None else evaluator.state.epoch
        self._row(epoch).update({k: float(v) for k, v in evaluator.state.metrics.items() if np.isscalar(v)})
        self.write_csv()

    def _row(self, epoch: int) -> dict[str, float]:
        if not self.rows or self.rows[-1]["epoch"] != epoch:
            self.rows.append({"epoch": epoch})
        return self.rows[-1]

    def write_csv(self) -> Path | None:
        """Write the table of metrics per epoch (on rank 0 only under ``torch.distributed``)."""
        if idist.get_rank() != 0:
            return None
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        return atomic_write_text(self.output_dir / "learning_curves.csv", buf.getvalue())

    def plot(self, _engine: Engine | None = None) -> Path | None:
        """Plot loss, accuracy and AUC per epoch, train against validation (on rank 0 only)."""
        if not self.rows or idist.get_rank() != 0:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in self.rows]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, name in zip(axes, ("loss", "acc", "auc")):
            for split, style in (("train", "-o"), ("val", "-s")):
                values = [r.get(f"{split}_{name}", np.nan) for r in self.rows]
                if not np.all(np.isnan(values)):
                    ax.plot(epochs, values, style, ms=3, label=split)
            ax.set_title({"loss": "Loss", "acc": "Accuracy", "auc": "ROC AUC"}[name])
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        return atomic_write_bytes(self.output_dir / "learning_curves.png", buf.getvalue())


def set_data(engine: Workflow, datalist: Sequence[dict]) -> None:
    """Fill ``engine``'s dataset with ``datalist`` and size its epoch to match, when a run starts.

    The bundle builds its datasets empty, so a config parses (and ``ConfigWorkflow.initialize()`` works) with no
    cohort anywhere; MONAI's workflows skip a run whose ``epoch_length`` is 0, so it is set here from the filled
    data loader.
    """
    engine.data_loader.dataset.set_data(datalist)
    engine.state.epoch_length = len(engine.data_loader)
