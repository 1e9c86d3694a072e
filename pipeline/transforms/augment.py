"""Training augmentation: what differs between hospitals, or the tutorial's in-plane rotation.

Inputs are the deterministic chain's output: ``(C, H, W, D)`` in [0, 1] window units (1 unit = the HU window's
width, 1400 HU by default), RAS, ``D`` cranio-caudal. Recipes (:data:`RECIPES`):

- ``"hospital"``: left-right flip; small 3D rotations and scaling (``RandAffined``, air outside); Gaussian noise
  (quantum noise, mA), blur and sharpening (reconstruction kernels); HU shift and scale of a few tens of HU
  (calibration); contrast (gamma). Magnitudes are physical and stated per transform below.
- ``"tutorial"``: the Keras tutorial's random in-plane rotation only (about the cranio-caudal axis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.transforms import (
    EnsureTyped,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Transform,
)

__all__ = ["RECIPES", "train_augmentation"]

RECIPES = ("hospital", "tutorial")


def train_augmentation(
    recipe: str = "hospital",
    keys: str = "image",
    max_rotation_deg: float = 20.0,
    hu_width: float = 1400.0,
    mask_keys: Sequence[str] = (),
) -> list[Transform]:
    """The random transforms of ``recipe`` (see the module docstring), in order.

    Args:
        recipe: one of :data:`RECIPES`.
        keys: the image key.
        mask_keys: keys that move with the image (e.g. the lesion mask): flips, rotations and scaling apply to
            them too (bilinear: a 0/1 mask becomes fractional at its edges), intensity transforms do not; absent
            keys are skipped, and the masks end as float32 whichever transforms fired (so a batch collates).
        max_rotation_deg: the largest in-plane rotation (``"tutorial"``; ``"hospital"`` uses a quarter of it
            about the other two axes).
        hu_width: HU per window unit, to express noise and shifts in HU.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    rad = math.radians(max_rotation_deg)
    spatial = [keys, *mask_keys]
    as_float = [EnsureTyped(list(mask_keys), dtype=torch.float32, allow_missing_keys=True)] if mask_keys else []
    if recipe == "tutorial":
        return [RandRotated(spatial, range_z=rad, prob=0.9, padding_mode="zeros", allow_missing_keys=True), *as_float]
    hu = 1.0 / hu_width
    return [
        RandFlipd(spatial, spatial_axis=0, prob=0.5, allow_missing_keys=True),  # left-right
        RandAffined(
            spatial,
            prob=0.8,
            rotate_range=(rad / 4, rad / 4, rad),
            scale_range=(0.1, 0.1, 0.1),
            mode="bilinear",
            padding_mode="zeros",
            allow_missing_keys=True,
        ),
        RandGaussianNoised(keys, prob=0.5, mean=0.0, std=25 * hu),  # up to 25 HU of noise
        RandGaussianSmoothd(keys, prob=0.25, sigma_x=(0.3, 0.8), sigma_y=(0.3, 0.8), sigma_z=(0.2, 0.5)),  # soft kernel
        RandGaussianSharpend(keys, prob=0.15, alpha=(2.0, 8.0)),  # sharp kernel
        RandShiftIntensityd(keys, offsets=30 * hu, prob=0.5),  # +-30 HU calibration offset
        RandScaleIntensityd(keys, factors=0.05, prob=0.5),  # +-5 % contrast scale
        RandAdjustContrastd(keys, prob=0.25, gamma=(0.85, 1.15)),
        *as_float,
    ]
