"""The multi-task loss: cross-entropy on the class always, Dice + cross-entropy on the lesion map where known.

Used with :func:`pipeline.engine.handlers.prepare_float_batch`, whose target for a batch that carries lesion masks
is ``{"label": (B,), "mask": (B, 1, H, W, D), "has_mask": (B,)}``; a plain ``(B,)`` label tensor (classifier
batches) gets the cross-entropy alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.losses import DiceCELoss
from torch import nn

from pipeline.networks.nets import split_output
from pipeline.transforms.chain import HAS_MASK, MASK

__all__ = ["MultiTaskLoss"]


class MultiTaskLoss(nn.Module):
    """``CE(class logits, label) + lesion_weight * DiceCE(lesion logits, mask)`` over the studies with a mask.

    The lesion term is MONAI's ``DiceCELoss(sigmoid=True, batch=True)``: Dice over the masked studies of the
    batch together (a normal study's empty mask then does not make its own Dice undefined) plus binary
    cross-entropy per voxel; the mask may be fractional (resampled). Studies without a mask
    (``has_mask`` 0) and batches without a lesion output train the classifier only.

    Args:
        lesion_weight: weight of the lesion term.
        class_loss: the classification loss (default ``nn.CrossEntropyLoss()``).
        lesion_loss: the segmentation loss on ``(N, 1, H, W, D)`` logits and masks.
    """

    def __init__(
        self, lesion_weight: float = 1.0, class_loss: nn.Module | None = None, lesion_loss: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.lesion_weight = float(lesion_weight)
        self.class_loss = class_loss or nn.CrossEntropyLoss()
        self.lesion_loss = lesion_loss or DiceCELoss(sigmoid=True, batch=True)

    def forward(self, pred: torch.Tensor | Mapping[str, torch.Tensor], target: torch.Tensor | Mapping) -> torch.Tensor:
        """The loss of a batch: network output ``pred`` (tensor or multi-task dict) against ``target``."""
        logits, lesion = split_output(pred)
        label = target["label"] if isinstance(target, Mapping) else target
        loss = self.class_loss(logits, label.reshape(-1).long())
        if lesion is None or not isinstance(target, Mapping) or self.lesion_weight == 0:
            return loss
        known = torch.as_tensor(target[HAS_MASK]).reshape(-1) > 0
        if not bool(known.any()):
            return loss
        mask = target[MASK].to(lesion.dtype)
        return loss + self.lesion_weight * self.lesion_loss(lesion[known], mask[known])
