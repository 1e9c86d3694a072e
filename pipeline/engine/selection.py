"""Model selection: validation AUC, ties broken by validation loss; and the epoch-level learning-rate schedule.

On an easy validation set several epochs reach AUC 1.0; selecting on AUC alone then freezes at the first of
them, however much better calibrated a later model is. :func:`selection_metric` is the validation key metric
``AUC - TIE_WEIGHT * loss / (1 + loss)``: the loss term is below ``TIE_WEIGHT`` (1e-4), smaller than any AUC
step of a validation set of up to 100 x 100 studies, so it only orders models of equal AUC.
"""

from __future__ import annotations

from ignite.metrics import Metric, MetricsLambda
from monai.optimizers import WarmupCosineSchedule
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, StepLR

__all__ = ["SCHEDULES", "TIE_WEIGHT", "lr_schedule", "selection_metric", "selection_score"]

TIE_WEIGHT = 1e-4
#: ``"cosine"``: per-epoch linear warm-up then cosine decay (independent of cohort size and process count);
#: ``"tutorial"``: x ``decay_rate`` every ``decay_steps`` iterations, as the Keras tutorial.
SCHEDULES = ("cosine", "tutorial")


def selection_score(auc: float, loss: float) -> float:
    """``auc - TIE_WEIGHT * loss / (1 + loss)``: AUC first, lower loss breaks ties."""
    return float(auc) - TIE_WEIGHT * float(loss) / (1.0 + float(loss))


def selection_metric(auc: Metric, loss: Metric) -> MetricsLambda:
    """An ignite metric computing :func:`selection_score` from an AUC metric and a loss metric."""
    return MetricsLambda(selection_score, auc, loss)


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
