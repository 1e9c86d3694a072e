"""Property tests of the bundle's deterministic preprocessing, built from ``train.json`` so they follow the config.

Random crops, voxel sizes (those that keep a 64-matrix phantom the size of a chest, so its lungs are found),
axis orders, flips and on-disk data types of a synthetic chest CT go through
``deterministic_transforms``; the output always has the configured shape, lies in [0, 1], has the cache
dtype, and does not depend on how the volume was stored (a reoriented copy with the matching affine gives
the same output).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from conftest import BUNDLE, chest
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.bundle import ConfigParser
from monai.transforms import Compose

from pipeline.transforms.chain import deterministic_transforms

SPATIAL_SIZE = [16, 16, 8]
CHEST = functools.cache(chest)


@functools.cache
def configured() -> tuple[Compose, torch.dtype]:
    """train.json's chain (``preprocessing_params``, ``cache_dtype``) at :data:`SPATIAL_SIZE`, without the chest check.

    The properties hold for any crop and spacing drawn here, including ones that shrink the phantom below a real
    chest's aerated lung volume, which the chest check rightly refuses (it has its own tests).
    """
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["spatial_size"] = SPATIAL_SIZE
    dtype = parser.get_parsed_content("cache_dtype")
    params = parser.get_parsed_content("preprocessing_params")
    return Compose(deterministic_transforms(**params, dtype=dtype, check_chest=False)), dtype


def reoriented(data: np.ndarray, affine: np.ndarray, order: tuple[int, ...], flips: tuple[bool, ...]):
    """``data`` with its axes permuted to ``order`` and then flipped, and the affine that keeps every voxel in place."""
    out = np.transpose(data, order)
    index_map = np.zeros((4, 4))  # new voxel index -> old voxel index
    index_map[3, 3] = 1
    for new_axis, old_axis in enumerate(order):
        if flips[new_axis]:
            out = np.flip(out, new_axis)
            index_map[old_axis, new_axis] = -1
            index_map[old_axis, 3] = out.shape[new_axis] - 1
        else:
            index_map[old_axis, new_axis] = 1
    return np.ascontiguousarray(out), affine @ index_map


def save(path: Path, data: np.ndarray, affine: np.ndarray, dtype: str) -> str:
    """Save HU values stored as ``dtype``; nibabel picks scl_slope/scl_inter for the integer types that need it."""
    img = nib.Nifti1Image(data.astype(np.float64), affine)
    img.set_data_dtype(np.dtype(dtype))
    nib.save(img, str(path))
    return str(path)


@settings(max_examples=15, deadline=None)
@given(
    crop=st.tuples(*[st.floats(0.0, 0.12)] * 4, st.floats(0.0, 0.2), st.floats(0.0, 0.2)),
    spacing=st.tuples(st.floats(4.0, 8.0), st.floats(4.0, 8.0), st.floats(2.0, 10.0)),  # a chest's size (64 matrix)
    order=st.permutations([0, 1, 2]),
    flips=st.tuples(*[st.booleans()] * 3),
    dtype=st.sampled_from(["int16", "uint16", "int32", "float32", "float64"]),
)
def test_shape_range_dtype_and_orientation_invariance(crop, spacing, order, flips, dtype):
    volume, _ = CHEST(seed=0)
    n = volume.shape
    lo = [int(crop[2 * i] * n[i]) for i in range(2)] + [int(crop[4] * n[2])]
    hi = [n[i] - int(crop[2 * i + 1] * n[i]) for i in range(2)] + [n[2] - int(crop[5] * n[2])]
    data = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])  # MosMedData-like LAS
    affine[:3, 3] = [100.0, -120.0, -300.0]
    transform, cache_dtype = configured()
    with tempfile.TemporaryDirectory() as tmp:
        plain = transform({"image": save(Path(tmp) / "plain.nii.gz", data, affine, dtype)})["image"]
        moved = transform({"image": save(Path(tmp) / "moved.nii.gz", *reoriented(data, affine, order, flips), dtype)})
    assert tuple(plain.shape) == (1, *SPATIAL_SIZE)
    assert plain.dtype == cache_dtype
    assert torch.isfinite(plain).all() and plain.min() >= 0 and plain.max() <= 1
    assert plain.max() > plain.min(), "content survives"
    torch.testing.assert_close(moved["image"].as_tensor(), plain.as_tensor(), atol=2e-3, rtol=0)
