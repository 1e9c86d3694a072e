"""Training augmentation: deterministic under a seed, what it changes, the tutorial recipe kept."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandRotated

from pipeline.transforms.augment import train_augmentation


def volume() -> dict:
    torch.manual_seed(0)
    image = torch.zeros(1, 32, 32, 16)
    image[:, 4:14, 8:24, 2:14] = 0.2  # a "right lung"
    image[:, 18:28, 8:24, 2:14] = 0.15 + 0.05 * torch.rand(1, 10, 16, 12)
    return {"image": MetaTensor(image, affine=torch.diag(torch.tensor([2.0, 2.0, 4.0, 1.0])))}


@pytest.mark.parametrize("recipe", ["hospital", "tutorial"])
def test_same_seed_same_augmentation(recipe):
    outputs = []
    for _ in range(2):
        chain = Compose(train_augmentation(recipe))
        chain.set_random_state(seed=42)
        outputs.append(chain(volume())["image"])
    assert torch.equal(outputs[0], outputs[1])
    other = Compose(train_augmentation(recipe))
    other.set_random_state(seed=43)
    assert not torch.equal(other(volume())["image"], outputs[0])


def test_hospital_recipe_changes_geometry_and_intensity_within_bounds():
    chain = Compose(train_augmentation("hospital"))
    means, flipped = [], 0
    for seed in range(20):
        chain.set_random_state(seed=seed)
        out = chain(volume())["image"]
        assert out.shape == (1, 32, 32, 16)
        means.append(float(out.mean()))
        left, right = float(out[:, :16].mean()), float(out[:, 16:].mean())
        flipped += left > right
    base = float(volume()["image"].mean())
    assert max(abs(m - base) for m in means) < 0.05  # a few tens of HU, not a new image
    assert 0 < flipped < 20  # left-right flips happen, not always


def test_tutorial_recipe_is_in_plane_rotation_only():
    (rotate,) = train_augmentation("tutorial", max_rotation_deg=20)
    assert isinstance(rotate, RandRotated) and rotate.rand_rotate.range_z[1] == pytest.approx(0.349, abs=1e-3)
    assert rotate.rand_rotate.range_x == (0.0, 0.0) and rotate.rand_rotate.range_y == (0.0, 0.0)
    with pytest.raises(ValueError, match="hospital"):
        train_augmentation("mixup")
