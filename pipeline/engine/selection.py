"""Model selection: validation AUC (and lesion involvement), ties broken by validation loss; the LR schedule.

On an easy validation set several epochs reach AUC 1.0; selecting on AUC alone then freezes at the first of
them, however much better calibrated a later model is. :func:`selection_metric` is the validation key metric
``AUC - TIE_WEIGHT * loss / (1 + loss)``: the loss term is below ``TIE_WEIGHT`` (1e-4), smaller than any AUC
step of a validation set of up to 100 x 100 studies, so it only orders models of equal AUC.

A multi-task network is selected on both of its outputs: ``(AUC + 1 - involvement MAE) / 2`` minus the same tie
term, where the mean absolute error of the lung involvement (a fraction, :class:`InvolvementError`) is taken over
the validation studies whose truth is known. Classification saturates within a few epochs while the lesion map is
still learning; AUC alone would keep the first such epoch's half-trained lesion head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ignite.metrics import Metric, MetricsLambda
from monai.optimizers import WarmupCosineSchedule
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, StepLR

__all__ = [
    "SCHEDULES",
    "TIE_WEIGHT",
    "InvolvementError",
    "lr_schedule",
    "selection_metric",
    "selection_score",
]

TIE_WEIGHT = 1e-4
#: ``"cosine"``: per-epoch linear warm-up then cosine decay (independent of cohort size and process count);
#: ``"tutorial"``: x ``decay_rate`` every ``decay_steps`` iterations, as the Keras tutorial.
SCHEDULES = ("cosine", "tutorial")


def selection_score(auc: float, loss: float, involvement_error: float | None = None) -> float:
    """``auc - TIE_WEIGHT * loss / (1 + loss)``: AUC first, lower loss breaks ties.

    With ``involvement_error`` (mean absolute error of the involvement fraction; NaN or ``None`` when no
    validation study has a known involvement) the first term is ``(auc + 1 - involvement_error) / 2``.
    """
    first = float(auc)
    if involvement_error is not None and not math.isnan(float(involvement_error)):
        first = (first + 1.0 - float(involvement_error)) / 2.0
    return first - TIE_WEIGHT * float(loss) / (1.0 + float(loss))


def selection_metric(auc: Metric, loss: Metric, involvement_error: Metric | None = None) -> MetricsLambda:
    """An ignite metric computing :func:`selection_score` from AUC, loss and (optionally) involvement metrics."""
    return MetricsLambda(selection_score, auc, loss, involvement_error)


class InvolvementError(Metric):
    """Mean absolute error of the predicted lung involvement (fraction) over the studies whose truth is known.

    Reads the evaluator's decollated output (``"involvement"`` and ``"involvement_true"`` of
    :class:`pipeline.transforms.severity.Involvementd`; NaN truth is skipped); NaN when no study had a truth.
    """

    def reset(self) -> None:
        self._sum, self._n = 0.0, 0

    def update(self, output: Sequence[dict]) -> None:
        for item in output:
            truth = float(item.get("involvement_true", math.nan))
            if "involvement" in item and not math.isnan(truth):
                self._sum += abs(float(item["involvement"]) - truth)
                self._n += 1

    def compute(self) -> float:
        return self._sum / self._n if self._n else math.nan


def lr_schedule(
    name: str,
    optimizer: Optimizer,
    epochs: int,
    warmup_epochs: int = 2,
    decay_steps: int = 30,
    decay_rate: float = 0.96,
) -> LRScheduler:
    """The learning-rate scheduler of schedule ``name`` (step it per epoch for ``"cosine"``, per iteration else)."""
    if name == "cosine":
        warmup = min(warmup_epochs, max(epochs - 1, 0))
        return WarmupCosineSchedule(optimizer, warmup_steps=warmup, t_total=epochs, warmup_multiplier=0.1)
    if name == "tutorial":
        return StepLR(optimizer, step_size=decay_steps, gamma=decay_rate)
    raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {name!r}")
