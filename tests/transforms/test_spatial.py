"""Anti-aliased resampling to a spacing: same field of view, same noise whatever the input spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Resize

from pipeline.transforms.spatial import ResampleToSpacing, ResampleToSpacingd, SmoothResized, area_resize


def noisy(spacing: tuple[float, float, float], fov=(256.0, 256.0, 256.0), sd=100.0) -> MetaTensor:
    shape = [round(f / s) for f, s in zip(fov, spacing, strict=True)]
    rng = np.random.default_rng(0)
    affine = np.diag([*spacing, 1.0])
    return MetaTensor(torch.as_tensor(rng.normal(0, sd, (1, *shape)), dtype=torch.float32), affine=affine)


def test_output_grid_follows_the_spacing_and_keeps_the_field_of_view():
    out = ResampleToSpacing((2.0, 2.0, 4.0))(noisy((0.5, 0.5, 8.0)))
    assert out.shape == (1, 128, 128, 64)
    np.testing.assert_allclose(np.asarray(out.pixdim), [2.0, 2.0, 4.0], rtol=1e-5)


def test_shrinking_low_passes_the_noise():
    thin = ResampleToSpacing((2.0, 2.0, 8.0))(noisy((0.5, 0.5, 8.0)))
    native = noisy((2.0, 2.0, 8.0))
    # white noise averaged over 4 x 4 voxels: SD / 4; nearest-neighbour or plain interpolation would keep ~SD
    assert float(thin.std()) == pytest.approx(float(native.std()) / 4, rel=0.1)


def test_dictionary_version_and_masks():
    image = noisy((1.0, 1.0, 4.0), fov=(64.0, 64.0, 64.0))
    mask = MetaTensor((image > 0).to(torch.uint8), affine=image.affine)
    out = ResampleToSpacingd(["image", "mask"], (2.0, 2.0, 2.0), mode=["trilinear", "nearest"])(
        {"image": image, "mask": mask}
    )
    assert out["image"].shape == out["mask"].shape == (1, 32, 32, 32)
    assert set(torch.unique(out["mask"]).tolist()) <= {0, 1}


@pytest.mark.parametrize(
    ("shape", "size"),
    [((1, 200, 180, 23), (69, 61, 23)), ((2, 60, 50, 40), (60, 17, 9)), ((1, 30, 30, 30), (30, 30, 7))],
)
def test_area_resize_equals_adaptive_average_pooling(shape, size):
    rng = np.random.default_rng(1)
    integers = torch.as_tensor(rng.integers(-1024, 3072, shape), dtype=torch.float32)  # CT numbers: the same floats
    pooled = torch.nn.functional.interpolate(integers[None], size=size, mode="area")[0]
    assert torch.equal(area_resize(integers, size), pooled)
    floats = torch.as_tensor(rng.normal(0, 300, shape), dtype=torch.float32)  # other volumes: the 3D kernel itself
    pooled = torch.nn.functional.interpolate(floats[None], size=size, mode="area")[0]
    assert torch.equal(area_resize(floats, size), pooled)


@pytest.mark.parametrize("size", [(128, 128, 64), (20, 50, 70), (40, 30, 20)])
def test_smooth_resize_equals_monai_resize(size):
    image = noisy((1.0, 1.0, 4.0), fov=(60.0, 50.0, 120.0))[:, 2:, 1:-3]  # a non-contiguous crop, as in the chain
    expected = Resize(size, mode="trilinear", anti_aliasing=True)(image)
    out = SmoothResized("image", size)({"image": image})["image"]
    assert torch.equal(out.as_tensor(), expected.as_tensor()) and out.dtype == expected.dtype
    assert torch.equal(torch.as_tensor(out.affine), torch.as_tensor(expected.affine))
