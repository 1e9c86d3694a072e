"""EpochSampler: lengths read when an epoch starts, seeded shuffles, class-balanced draws, shares of ranks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from ignite.engine import Engine, Events

from pipeline.data.cache import cached_dataset
from pipeline.data.sampler import EpochSampler, class_weights


def items(n_normal: int, n_pneumonia: int) -> list[dict]:
    return [{"label": 0}] * n_normal + [{"label": 1}] * n_pneumonia


def test_empty_dataset_is_filled_when_the_run_starts():
    dataset = cached_dataset(data=[], transform=lambda x: x, cache="none")
    sampler = EpochSampler(dataset, balance=True)
    loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=2)  # RandomSampler would refuse
    assert len(sampler) == 0 and list(sampler) == []
    dataset.set_data(items(2, 6))
    assert len(loader) == 4 and len(list(sampler)) == 8


def test_shuffle_is_seeded_by_seed_and_epoch():
    dataset = cached_dataset(data=items(5, 5), transform=lambda x: x, cache="none")
    first = list(EpochSampler(dataset, seed=3))
    torch.manual_seed(123)  # the global generator plays no part: a resumed run draws the same
    assert list(EpochSampler(dataset, seed=3)) == first and sorted(first) == list(range(10))
    sampler = EpochSampler(dataset, seed=3)
    sampler.set_epoch(2)
    assert list(sampler) != first and sorted(sampler) == list(range(10))
    assert list(EpochSampler(dataset, shuffle=False)) == list(range(10))


def test_balanced_draws_give_each_class_half_the_batches():
    dataset = cached_dataset(data=items(20, 80), transform=lambda x: x, cache="none")
    sampler = EpochSampler(dataset, balance=True)
    drawn = Counter()
    for epoch in range(50):
        sampler.set_epoch(epoch)
        drawn.update(dataset.data[i]["label"] for i in sampler)
    assert abs(drawn[0] / (drawn[0] + drawn[1]) - 0.5) < 0.03
    assert torch.allclose(class_weights([0, 1, 1, 1]), torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))


@pytest.mark.parametrize("balance", [False, True])
def test_ranks_share_each_epoch_and_reshuffle_every_epoch(balance):
    """DistributedSampler semantics: equal shares that together cover the epoch, dealt anew every epoch."""
    dataset = cached_dataset(data=items(4, 7), transform=lambda x: x, cache="none")
    samplers = [EpochSampler(dataset, balance=balance, num_replicas=3, rank=r, seed=5) for r in range(3)]
    whole = EpochSampler(dataset, balance=balance, seed=5)
    trainer = Engine(lambda engine, batch: None)
    for s in [*samplers, whole]:
        s.attach(trainer)
    shares_per_epoch = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: shares_per_epoch.append([list(s) for s in samplers]))
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: shares_per_epoch[-1].append(list(whole)))
    trainer.run([0], max_epochs=3)
    for *shares, epoch in shares_per_epoch:
        assert [len(s) for s in shares] == [4, 4, 4] == [len(s) for s in samplers]
        padded = epoch + epoch[:1]  # 11 indices padded to 12 by repeating the first, as DistributedSampler does
        assert sorted(i for s in shares for i in s) == sorted(padded)
    assert shares_per_epoch[0][0] != shares_per_epoch[1][0] != shares_per_epoch[2][0]  # rank 0 gets other studies
