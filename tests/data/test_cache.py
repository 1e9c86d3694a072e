"""The on-disk preprocessing cache: keyed on the transform parameters and the files, never stale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_nifti
from monai.data import CacheDataset
from monai.transforms import Compose, EnsureTyped, LoadImaged, RandFlipd, Resized, ScaleIntensityRanged

from pipeline.data.cache import cached_dataset, describe, transform_hash


def deterministic(spatial_size=(8, 8, 4), hu_window=(-1000, 400)) -> list:
    """The bundle's kind of deterministic preprocessing, ending in a float16 cast."""
    return [
        LoadImaged(keys="image", image_only=True, ensure_channel_first=True),
        ScaleIntensityRanged(keys="image", a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
        Resized(keys="image", spatial_size=spatial_size, mode="trilinear"),
        EnsureTyped(keys="image", dtype=torch.float16),
    ]


def disk_dataset(items, cache_dir, **params):
    steps = deterministic(**params)
    transform = Compose([*steps, EnsureTyped(keys="image", dtype=torch.float32), RandFlipd(keys="image", prob=0.0)])
    return cached_dataset(items, transform, cache="disk", cache_dir=cache_dir, cache_n_trans=len(steps))


@pytest.fixture
def items(nifti):
    return [{"image": str(nifti(f"study_{i:04d}.nii.gz", shape=(16, 16, 8))), "label": i % 2} for i in range(3)]


def test_transform_hash_keys_on_parameters():
    base = transform_hash(deterministic())
    assert transform_hash(deterministic()) == base  # fresh objects, same parameters
    assert transform_hash(deterministic(spatial_size=(8, 8, 5))) != base
    assert transform_hash(deterministic(hu_window=(-1000, 300))) != base
    assert transform_hash(deterministic()[:-1]) != base


def test_describe_is_plain_json_without_addresses():
    text = repr(describe(deterministic()))
    assert "0x" not in text and "spatial_size" in text and "'a_max': 400" in text


def test_disk_cache_reused_then_rebuilt_when_the_config_changes(items, tmp_path):
    cache = tmp_path / "cache"
    first = disk_dataset(items, cache)
    out = [first[i] for i in range(len(items))]
    files = {p: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
    assert len(files) == 3 and out[0]["image"].shape == (1, 8, 8, 4) and out[0]["image"].dtype == torch.float32
    assert torch.load(next(iter(files)), weights_only=True)["image"].dtype == torch.float16  # stored before the cast

    again = disk_dataset(items, cache)
    for i in range(len(items)):
        assert torch.equal(again[i]["image"], out[i]["image"]) and again[i]["label"] == items[i]["label"]
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.pt")} == files  # read, not rewritten

    resized = disk_dataset(items, cache, spatial_size=(6, 6, 4))
    assert resized[0]["image"].shape == (1, 6, 6, 4)
    windowed = disk_dataset(items, cache, hu_window=(-1000, 0))
    assert not torch.equal(windowed[0]["image"], out[0]["image"])
    assert len(list(cache.glob("*.pt"))) == 3 + 1 + 1


def test_disk_cache_recomputes_a_replaced_image(items, tmp_path):
    cache = tmp_path / "cache"
    before = disk_dataset(items, cache)[0]["image"]
    write_nifti(tmp_path / "study_0000.nii.gz", np.full((16, 16, 8), 400, np.int16))
    after = disk_dataset(items, cache)[0]["image"]
    assert torch.allclose(after, torch.ones_like(after)) and not torch.equal(before, after)


def test_memory_cache_and_bad_choices(items, tmp_path):
    memory = cached_dataset(items, Compose(deterministic()), cache="memory", num_workers=1)
    assert isinstance(memory, CacheDataset) and memory[0]["image"].shape == (1, 8, 8, 4)
    with pytest.raises(ValueError, match="cache must be one of"):
        cached_dataset(items, Compose(deterministic()), cache="lmdb")
    with pytest.raises(ValueError, match="needs cache_dir"):
        cached_dataset(items, Compose(deterministic()), cache="disk")
