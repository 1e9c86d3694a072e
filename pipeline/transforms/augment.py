"""Training augmentation: what differs between hospitals, or the tutorial's in-plane rotation.

Inputs are the deterministic chain's output: ``(C, H, W, D)`` in [0, 1] window units (1 unit = the HU window's
width, 1400 HU by default), RAS, ``D`` cranio-caudal. Recipes (:data:`RECIPES`):

- ``"hospital"``: left-right flip; small 3D rotations and scaling (``RandAffined``, air outside); the density of
  aerated lung (:class:`RandLungDensityd`: inspiration level, dependent density, regional variation); Gaussian
  noise (quantum noise, mA), blur and sharpening (reconstruction kernels); HU shift and scale of a few tens of HU
  (calibration); contrast (gamma). Magnitudes are physical and stated per transform below.
- ``"tutorial"``: the Keras tutorial's random in-plane rotation only (about the cranio-caudal axis).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Transform,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["RECIPES", "RandLungDensity", "RandLungDensityd", "train_augmentation"]

RECIPES = ("hospital", "tutorial")


#: Window values of aerated lung that :class:`RandLungDensity` changes, in HU: from just above air (the chain
#: sets everything outside the lungs to -1000 HU, which stays) to ground glass, fading out to nothing at
#: ``DENSITY_FADE_HU`` so that vessels, consolidation and soft tissue keep their density.
DENSITY_AIR_HU = -990.0
DENSITY_FULL_HU = -500.0
DENSITY_FADE_HU = -300.0


class RandLungDensity(RandomizableTransform):
    """Change the density of aerated lung as it differs between patients and breath holds, lesions unchanged.

    Real normal lungs differ: mean lung attenuation spans about -860 to -700 HU over the phases of respiration in
    people without lung disease (Robinson & Kreel, J Comput Assist Tomogr 1979; 3: 740-8, -430 to -350 EMI units),
    and supine patients' posterior third can be up to about 200 HU denser than the anterior third at neutral
    breathing, less on full inspiration (same study; dependent atelectasis, gravity). Patients with respiratory
    symptoms often hold a shallow breath. The phantom's normal lungs sit at the full-inspiration end (docs/realism.md:
    CT-0 median -838 HU) and vary less, and a lesion head that has not seen denser normal lung marks it as disease
    (on real normals, hundreds of mL of dependent lung). With the bundle's ``max_hu`` 160 the global offset reaches
    -838 + 120 = about -720 HU, the expiratory end of that range, and the dependent gradient 160 HU. This adds to
    voxels of aerated lung (``DENSITY_AIR_HU`` to ``DENSITY_FULL_HU``, fading to 0 at ``DENSITY_FADE_HU``) a smooth
    field of three parts, each drawn uniformly:

    - a global offset in ``[-max_hu / 4, 3 * max_hu / 4]`` HU (inspiration level; mostly denser, towards the
      real lungs);
    - a dependent gradient, ``[0, max_hu]`` HU at the posterior edge, falling quadratically to 0 anteriorly;
    - regional variation, ``[-max_hu / 4, max_hu / 4]`` HU on a coarse 3 x 3 x 3 grid, trilinearly interpolated.

    Args:
        prob: probability of changing a volume.
        max_hu: the amplitude in HU (see above); 0 disables it.
        hu_window: the HU window the image is in: ``(low, high)`` map to 0 and 1 (the chain's ``HUWindowd``).
        posterior_axis: the spatial axis running anterior (RAS: axis 1 runs towards anterior, so the posterior
            edge is index 0).

    Input and output: ``(C, H, W, D)`` window units; the lesion mask is not touched (a transform on the image).
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH]

    def __init__(
        self,
        prob: float = 0.5,
        max_hu: float = 80.0,
        hu_window: Sequence[float] = (-1000.0, 400.0),
        posterior_axis: int = 1,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if max_hu < 0:
            raise ValueError(f"max_hu must be >= 0, got {max_hu}")
        self.max_hu = float(max_hu)
        self.low, self.high = (float(v) for v in hu_window)
        self.posterior_axis = posterior_axis
        self._offset = self._dependent = 0.0
        self._regional = np.zeros((3, 3, 3), np.float32)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._offset = self.R.uniform(-self.max_hu / 4, 3 * self.max_hu / 4)
        self._dependent = self.R.uniform(0.0, self.max_hu)
        self._regional = self.R.uniform(-self.max_hu / 4, self.max_hu / 4, size=(3, 3, 3)).astype(np.float32)

    def field_hu(self, shape: Sequence[int]) -> torch.Tensor:
        """The drawn field in HU on a spatial grid of ``shape`` ``(H, W, D)``."""
        regional = F.interpolate(
            torch.from_numpy(self._regional)[None, None], size=tuple(shape), mode="trilinear", align_corners=True
        )[0, 0]
        n = shape[self.posterior_axis]
        towards_front = torch.linspace(0.0, 1.0, n) if n > 1 else torch.zeros(1)
        view = [1, 1, 1]
        view[self.posterior_axis] = n
        dependent = self._dependent * (1.0 - towards_front).square().reshape(view)
        return self._offset + dependent + regional

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform or self.max_hu == 0:
            return img
        x = convert_to_tensor(img, track_meta=False)
        width = self.high - self.low
        hu = x.float() * width + self.low
        weight = ((DENSITY_FADE_HU - hu) / (DENSITY_FADE_HU - DENSITY_FULL_HU)).clamp(0.0, 1.0) * (hu > DENSITY_AIR_HU)
        out = x.float() + weight * self.field_hu(x.shape[1:]).to(x.device)[None] / width
        return convert_to_dst_type(out.clamp(0.0, 1.0), img, dtype=img.dtype)[0]


class RandLungDensityd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandLungDensity`: one field per call, applied to every key in ``keys``."""

    backend: ClassVar[list[TransformBackends]] = RandLungDensity.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        max_hu: float = 80.0,
        hu_window: Sequence[float] = (-1000.0, 400.0),
        posterior_axis: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.density = RandLungDensity(1.0, max_hu, hu_window, posterior_axis)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.density.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.density.randomize()
        for key in self.key_iterator(d):
            d[key] = self.density(d[key], randomize=False)
        return d


def train_augmentation(
    recipe: str = "hospital",
    keys: str = "image",
    max_rotation_deg: float = 20.0,
    hu_width: float = 1400.0,
    mask_keys: Sequence[str] = (),
    lung_density_hu: float = 0.0,
    hu_low: float = -1000.0,
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
        lung_density_hu: ``max_hu`` of :class:`RandLungDensityd` (``"hospital"``); 0 leaves it out (the recipe
            before it, what records without the key were trained with).
        hu_low: the HU that window value 0 stands for (the window is ``(hu_low, hu_low + hu_width)``).
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
        *(
            [RandLungDensityd(keys, prob=0.5, max_hu=lung_density_hu, hu_window=(hu_low, hu_low + hu_width))]
            if lung_density_hu > 0
            else []
        ),
        RandGaussianNoised(keys, prob=0.5, mean=0.0, std=25 * hu),  # up to 25 HU of noise
        RandGaussianSmoothd(keys, prob=0.25, sigma_x=(0.3, 0.8), sigma_y=(0.3, 0.8), sigma_z=(0.2, 0.5)),  # soft kernel
        RandGaussianSharpend(keys, prob=0.15, alpha=(2.0, 8.0)),  # sharp kernel
        RandShiftIntensityd(keys, offsets=30 * hu, prob=0.5),  # +-30 HU calibration offset
        RandScaleIntensityd(keys, factors=0.05, prob=0.5),  # +-5 % contrast scale
        RandAdjustContrastd(keys, prob=0.25, gamma=(0.85, 1.15)),
        *as_float,
    ]
