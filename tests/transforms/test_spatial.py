"""Anti-aliased resampling to a spacing: same field of view, same noise whatever the input spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.transforms.spatial import ResampleToSpacing, ResampleToSpacingd


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
