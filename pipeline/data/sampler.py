"""A sampler for datasets whose items are set when a run starts, with optional class balancing and sharding.

Bundle configs build their datasets empty and fill them (``set_data``) in ``run``, so a bundle initialises
with no data anywhere. PyTorch's ``RandomSampler`` and ``DistributedSampler`` read the dataset's length when
they are constructed; :class:`EpochSampler` reads the dataset's length and labels only when an epoch starts,
and then deals the epoch's indices out to the ranks with ``DistributedSampler`` itself. As with
``DistributedSampler``, the order is seeded by ``seed + epoch`` (:meth:`EpochSampler.set_epoch`, called by
:meth:`EpochSampler.attach` when each epoch starts): the same on every rank, different every epoch, and a
resumed run draws what an uninterrupted run draws.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sized
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["EpochSampler", "class_weights"]


def class_weights(labels: list[int]) -> torch.Tensor:
    """Per-item weights ``1 / count(label)``: every class is drawn equally often on average."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)


class EpochSampler(Sampler[int]):
    """This rank's indices of ``dataset`` for one epoch: in order, shuffled, or drawn class-balanced.

    Args:
        dataset: a sized dataset; with ``balance`` it must expose its items as ``dataset.data``.
        shuffle: a random permutation every epoch (otherwise ``0 .. n-1``).
        balance: draw ``n`` items with replacement, each class with equal probability (for cohorts such as
            MosMedData, whose CT-0 : CT-1..4 is 254 : 856); overrides ``shuffle``.
        label_key: the items' label key.
        num_replicas: processes sharing the epoch (``torchrun``'s world size); each gets every
            ``num_replicas``-th index of the epoch's order, padded by repetition to equal shares.
        rank: this process's rank.
        seed: seed of the epoch's order (with the epoch number added).
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        balance: bool = False,
        label_key: str = "label",
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.balance = balance
        self.label_key = label_key
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Seed the next epoch's order with ``seed + epoch`` (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def attach(self, engine: Engine) -> None:
        """Call :meth:`set_epoch` with ``engine``'s epoch number whenever one of its epochs starts."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.set_epoch(e.state.epoch))

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.num_replicas)

    def _labels(self) -> list[int]:
        items: Any = getattr(self.dataset, "data", None)
        if items is None:
            raise TypeError("balance=True needs a dataset with a .data list of items")
        return [int(item[self.label_key]) for item in items]

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if n == 0:
            return iter(())
        order = list(range(n))
        if self.balance:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.multinomial(class_weights(self._labels()), n, replacement=True, generator=generator).tolist()
        share = DistributedSampler(
            order, self.num_replicas, self.rank, shuffle=self.shuffle and not self.balance, seed=self.seed
        )
        share.set_epoch(self.epoch)
        return iter([order[i] for i in share])
