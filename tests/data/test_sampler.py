"""EpochSampler: lengths read when an epoch starts, seeded shuffles, class-balanced draws."""

from __future__ import annotations

from collections import Counter

import torch
from monai.utils import set_determinism

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


def test_shuffle_is_a_seeded_permutation():
    dataset = cached_dataset(data=items(5, 5), transform=lambda x: x, cache="none")
    set_determinism(seed=3)
    first = list(EpochSampler(dataset))
    set_determinism(seed=3)
    assert list(EpochSampler(dataset)) == first and sorted(first) == list(range(10))
    assert list(EpochSampler(dataset, shuffle=False)) == list(range(10))
    set_determinism(seed=None)


def test_balanced_draws_give_each_class_half_the_batches():
    dataset = cached_dataset(data=items(20, 80), transform=lambda x: x, cache="none")
    torch.manual_seed(0)
    drawn = Counter(dataset.data[i]["label"] for _ in range(50) for i in EpochSampler(dataset, balance=True))
    assert abs(drawn[0] / (drawn[0] + drawn[1]) - 0.5) < 0.03
    assert torch.allclose(class_weights([0, 1, 1, 1]), torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))
