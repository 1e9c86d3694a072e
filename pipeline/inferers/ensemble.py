"""Ensembles of checkpoints of one network (e.g. the fold models of a cross-validation), for evaluation and inference.

:class:`Ensemble` outputs the *log* of the averaged class probabilities. The bundle's postprocessing applies a
softmax to the network output, and ``softmax(log p) = p`` when ``p`` sums to one, so the postprocessed ``pred``
is exactly the mean of the members' probabilities; a cross-entropy loss on the output is the negative
log-likelihood of that mean. A single network passed through ``log_softmax`` gives the same probabilities as
its logits, so wrappers compose (e.g. :class:`pipeline.inferers.tta.TTAInferer` around an :class:`Ensemble`).

The averaged probabilities are the ensemble's own scores, so its operating threshold is chosen on them, on the
ensemble's validation predictions (:func:`pipeline.engine.threshold.choose_ensemble_threshold`,
``python -m pipeline ensemble-threshold``), never averaged from the members' thresholds.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pipeline.engine.checkpoint import load_weights_only
from pipeline.engine.record import ChainRecord
from pipeline.engine.record import read as read_record
from pipeline.networks.nets import CLASS_KEY, LESION_KEY, split_output
from pipeline.utils.errors import InputError

__all__ = ["Ensemble", "load_model_weights", "mean_log_probs"]


def load_model_weights(network: nn.Module, path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Load the plain state dict ``path`` into ``network`` (weights only), after checking its record.

    Raises:
        InputError: the record beside the file is missing or describes other weights
            (:func:`pipeline.engine.record.read`); the file is missing, unsafe, unreadable, or holds weights of
            another network.
    """
    read_record(path)
    state = load_weights_only(path, map_location=map_location)
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise InputError(path, f"does not fit this network ({str(err).strip().splitlines()[0]})") from err
    return network


def mean_log_probs(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Log of the mean softmax probabilities of several ``(B, K)`` logits (or log-probabilities), computed stably."""
    log_probs = torch.stack([torch.log_softmax(o.float(), dim=1) for o in outputs])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))


class Ensemble(nn.Module):
    """Average the class probabilities of several checkpoints of ``network``.

    Args:
        network: the architecture (e.g. the bundle's ``network``); each member is a deep copy of it, on its device.
        ckpt_files: checkpoints, each read with ``torch.load(weights_only=True)`` after its record
            (:func:`load_model_weights`); every member must have been trained with the first one's network and chain.

    ``forward(x (B, C, H, W, D))`` returns ``(B, K)``: ``log(mean_m softmax(member_m(x)))``; for multi-task
    members ``{"pred": that, "lesion": logit(mean_m sigmoid(lesion_m))}`` (``(B, 1, H, W, D)``).
    """

    def __init__(self, network: nn.Module, ckpt_files: Sequence[str | os.PathLike]) -> None:
        super().__init__()
        if isinstance(ckpt_files, str | os.PathLike) or not ckpt_files:
            raise ValueError(f"ckpt_files must be a non-empty list of checkpoint files, got {ckpt_files!r}")
        device = next(network.parameters()).device
        self.ckpt_files = [os.fspath(f) for f in ckpt_files]
        first = read_record(self.ckpt_files[0])
        chain = ChainRecord(first["network_name"], first["preprocessing"])
        for path in self.ckpt_files[1:]:
            diffs = chain.differences(read_record(path))
            if diffs:
                raise InputError(
                    path,
                    f"an ensemble member trained with another network or chain than the first, {self.ckpt_files[0]} "
                    f"('this run'): {'; '.join(diffs)}",
                )
        self.members = nn.ModuleList(
            load_model_weights(copy.deepcopy(network), f, map_location=device) for f in self.ckpt_files
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """The members' mean class probabilities as logs; with lesion outputs, also their mean P(lesion) as logits."""
        outputs = [split_output(member(x)) for member in self.members]
        log_probs = mean_log_probs([logits for logits, _ in outputs])
        if outputs[0][1] is None:
            return log_probs
        lesion = torch.stack([torch.sigmoid(lesion.float()) for _, lesion in outputs]).mean(dim=0)
        return {CLASS_KEY: log_probs, LESION_KEY: torch.logit(lesion, eps=1e-6)}
