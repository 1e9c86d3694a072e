"""A sampler for datasets whose items are set when a run starts, with optional class balancing.

Bundle configs build their datasets empty and fill them (``set_data``) in ``run``, so a bundle initialises
with no data anywhere. PyTorch's ``RandomSampler`` refuses an empty dataset when it is constructed;
:class:`EpochSampler` reads the dataset's length and labels only when an epoch starts. Random draws come from
torch's global generator, so ``set_determinism`` and a resumed run's restored RNG state reproduce them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler", "class_weights"]


def class_weights(labels: list[int]) -> torch.Tensor:
    """Per-item weights ``1 / count(label)``: every class is drawn equally often on average."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)


class EpochSampler(Sampler[int]):
    """Indices of ``dataset`` for one epoch: in order, shuffled, or drawn class-balanced.

    Args:
        dataset: a sized dataset; with ``balance`` it must expose its items as ``dataset.data``.
        shuffle: a random permutation every epoch (otherwise ``0 .. n-1``).
        balance: draw ``n`` items with replacement, each class with equal probability (for cohorts such as
            MosMedData, whose CT-0 : CT-1..4 is 254 : 856); overrides ``shuffle``.
        label_key: the items' label key.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, balance: bool = False, label_key: str = "label") -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.balance = balance
        self.label_key = label_key

    def __len__(self) -> int:
        return len(self.dataset)

    def _labels(self) -> list[int]:
        items: Any = getattr(self.dataset, "data", None)
        if items is None:
            raise TypeError("balance=True needs a dataset with a .data list of items")
        return [int(item[self.label_key]) for item in items]

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if n == 0:
            return iter(())
        if self.balance:
            return iter(torch.multinomial(class_weights(self._labels()), n, replacement=True).tolist())
        if self.shuffle:
            return iter(torch.randperm(n).tolist())
        return iter(range(n))
