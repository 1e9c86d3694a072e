"""Training augmentation: deterministic under a seed, what it changes, the tutorial recipe kept."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandRotated

from pipeline.transforms.augment import RandLungDensity, RandLungDensityd, train_augmentation


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


def chest_slab() -> MetaTensor:
    """``(1, 24, 24, 8)`` window units (-1000..400 HU): outside air 0, aerated lung at -850 HU, soft tissue at 40 HU
    in the first four columns."""
    hu = torch.full((1, 24, 24, 8), -850.0)
    hu[:, :, :, :2] = -1000.0  # outside the lungs: air, as the chain sets it
    hu[:, :4] = 40.0  # soft tissue
    return MetaTensor(((hu + 1000.0) / 1400.0).half())


def test_lung_density_changes_aerated_lung_only_by_a_smooth_field_denser_behind():
    img = chest_slab()
    density = RandLungDensity(prob=1.0, max_hu=80.0)
    posterior_denser = 0
    for seed in range(20):
        density.set_random_state(seed)
        out = density(img)
        assert isinstance(out, MetaTensor) and out.dtype == torch.float16 and out.shape == img.shape
        delta = (out.float() - img.float()) * 1400.0
        assert delta[:, :4].abs().max() == 0  # soft tissue kept
        assert delta[..., :2].abs().max() == 0  # air outside the lungs kept
        lung = delta[:, 4:, :, 2:]
        assert lung.min() >= -40.5 and lung.max() <= 160.5  # -max/4 - max/4 .. 3max/4 + max + max/4, float16
        assert lung.abs().max() > 1.0  # it changed something
        posterior_denser += bool(lung[:, :, :12].mean() > lung[:, :, 12:].mean())  # RAS: axis 1 runs anterior
    assert posterior_denser >= 18  # the dependent gradient dominates the regional part


def test_lung_density_dictionary_version_is_deterministic_and_leaves_masks_alone():
    data = {"image": chest_slab(), "mask": torch.ones(1, 24, 24, 8)}
    outs = []
    for _ in range(2):
        t = RandLungDensityd("image", prob=1.0, max_hu=80.0)
        t.set_random_state(7)
        outs.append(t(data))
    assert torch.equal(outs[0]["image"], outs[1]["image"]) and not torch.equal(outs[0]["image"], data["image"])
    assert outs[0]["mask"] is data["mask"]
    assert RandLungDensity(prob=0.0)(data["image"]) is data["image"]
    with pytest.raises(ValueError, match="max_hu"):
        RandLungDensity(max_hu=-1.0)


def test_the_hospital_recipe_holds_lung_density_only_when_asked():
    def kinds(**kwargs) -> list[type]:
        return [type(t) for t in train_augmentation("hospital", **kwargs)]

    assert RandLungDensityd not in kinds()  # records written before it ran without it
    with_density = [t for t in train_augmentation("hospital", lung_density_hu=80.0) if isinstance(t, RandLungDensityd)]
    assert len(with_density) == 1 and with_density[0].density.max_hu == 80.0
