"""Test-time augmentation for classification: the views and the averaged probabilities."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import save_model
from monai.transforms import Compose, Rotate
from torch import nn

from pipeline.inferers.ensemble import Ensemble
from pipeline.inferers.tta import TTAInferer
from pipeline.transforms.augment import train_augmentation


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 2, 3), nn.AdaptiveMaxPool3d(2), nn.Flatten(), nn.Linear(16, 2)).eval()


def test_views_are_the_volume_its_flips_and_rotations():
    x = torch.rand(2, 1, 6, 7, 5)
    inferer = TTAInferer(flip_axes=(0, 2), angles_deg=(-10.0, 15.0), rotation_axis=0)
    views = inferer.views(x)
    assert len(views) == 5 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[0], x)
    assert torch.equal(views[1], x.flip(2)) and torch.equal(views[2], x.flip(4))
    for view, deg in zip(views[3:], (-10.0, 15.0)):
        rotate = Rotate(angle=(math.radians(deg), 0.0, 0.0), keep_size=True)
        for b in range(2):  # the batched rotation equals MONAI's rotation of each volume
            torch.testing.assert_close(view[b], torch.as_tensor(rotate(x[b])).as_subclass(torch.Tensor))


def test_quarter_turn_about_axis_2_turns_the_axial_plane():
    x = torch.rand(1, 1, 6, 6, 3)
    (_, turned) = TTAInferer(flip_axes=(), angles_deg=(90.0,), rotation_axis=2).views(x)
    assert torch.allclose(turned, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5) or torch.allclose(
        turned, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5
    )


def test_output_is_the_mean_probability_over_views():
    x = torch.rand(3, 1, 8, 8, 8)
    net = tiny_net(0)
    inferer = TTAInferer()
    with torch.no_grad():
        out = inferer(x, net)
        expected = torch.stack([torch.softmax(net(v), dim=1) for v in inferer.views(x)]).mean(0)
    assert out.shape == (3, 2)
    torch.testing.assert_close(torch.softmax(out, dim=1), expected)
    assert not torch.allclose(expected, torch.softmax(net(x), dim=1)), "the views change the prediction"


def test_composes_with_an_ensemble(tmp_path):
    nets = [tiny_net(1), tiny_net(2)]
    for k, net in enumerate(nets):
        save_model(net.state_dict(), tmp_path / f"fold{k}.pt", "tiny")
    ensemble = Ensemble(tiny_net(0), [tmp_path / "fold0.pt", tmp_path / "fold1.pt"]).eval()
    x = torch.rand(2, 1, 8, 8, 8)
    inferer = TTAInferer(flip_axes=(0,), angles_deg=(8.0,))
    with torch.no_grad():
        probs = torch.softmax(inferer(x, ensemble), dim=1)
        expected = torch.stack([torch.softmax(n(v), 1) for n in nets for v in inferer.views(x)]).mean(0)
    torch.testing.assert_close(probs, expected)


def test_flip_invariant_network_is_unchanged_by_flips():
    net = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(1, 2))
    x = torch.rand(2, 1, 5, 6, 7)
    with torch.no_grad():
        out = TTAInferer(flip_axes=(0, 1, 2), angles_deg=())(x, net)
        torch.testing.assert_close(out, torch.log_softmax(net(x), dim=1))


def test_bad_axes_and_shapes():
    with pytest.raises(ValueError, match="spatial axes"):
        TTAInferer(flip_axes=(3,))
    with pytest.raises(ValueError, match="spatial axes"):
        TTAInferer(rotation_axis=-1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W, D\)"):
        TTAInferer().views(torch.rand(1, 8, 8, 8))


@pytest.mark.parametrize(
    ("recipe", "max_rotation_deg", "flips", "angles"),
    [("hospital", 20, (0,), (-10.0, 10.0)), ("tutorial", 20, (), (-10.0, 10.0)), ("tutorial", 5, (), ())],
)
def test_views_are_restricted_to_the_training_recipe(recipe, max_rotation_deg, flips, angles):
    """No view the model never saw: the tutorial recipe never flips, and no rotation exceeds the recipe's range."""
    transforms = train_augmentation(recipe, max_rotation_deg=max_rotation_deg)
    inferer = TTAInferer.for_augmentation(transforms, flip_axes=(0, 1), angles_deg=(-10.0, 10.0))
    assert inferer.flip_axes == flips and len(inferer.rotations) == len(angles)
    assert len(inferer.views(torch.rand(1, 1, 8, 8, 4))) == 1 + len(flips) + len(angles)
    assert TTAInferer.for_augmentation(Compose(transforms)).flip_axes == flips


class VoxelEcho(nn.Module):
    """A multi-task toy: class logits from a pooled value, the lesion logit of each voxel its own intensity."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": torch.stack([-x.mean((1, 2, 3, 4)), x.mean((1, 2, 3, 4))], dim=1), "lesion": x[:, :1]}


def test_lesion_maps_are_brought_back_before_averaging():
    """Each view's map is flipped or rotated back: a map that follows the voxels comes out as the original one."""
    x = torch.zeros(2, 1, 16, 16, 6)
    x[:, :, 3:7, 4:12, 1:5] = 1.0  # off-centre, so an un-inverted flip or rotation would smear it
    inferer = TTAInferer(flip_axes=(0, 1), angles_deg=(-10.0, 10.0))
    out = inferer(x, VoxelEcho())
    assert set(out) == {"pred", "lesion"} and out["lesion"].shape == x.shape
    probs = torch.sigmoid(out["lesion"])
    expected = torch.sigmoid(x)
    inside = x > 0
    torch.testing.assert_close(probs[~inside], expected[~inside], atol=0.05, rtol=0)  # edges blur a little
    assert (probs[inside] - expected[inside]).abs().mean() < 0.02
    plain = TTAInferer(flip_axes=(0, 1), angles_deg=())(x, VoxelEcho())
    torch.testing.assert_close(torch.sigmoid(plain["lesion"]), expected, atol=1e-5, rtol=0)  # flips undo exactly
    torch.testing.assert_close(
        torch.softmax(out["pred"], 1), torch.softmax(VoxelEcho()(x)["pred"], 1), atol=0.01, rtol=0
    )
