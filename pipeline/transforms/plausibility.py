"""Is this loaded volume a plausible chest CT in Hounsfield units? MONAI transforms that refuse it if not.

Run on the volume as loaded (``LoadImage`` applies the DICOM rescale, so values are HU), before any
intensity scaling or resampling. The thresholds come from the physics of CT, not from the test data:

- CT numbers are 16-bit signed integers after the rescale (air -1000 HU, water 0 HU, cortical bone
  and metal up to about +3000 HU, extended scales up to about +30000 HU): values outside
  [-32768, 32767] are not HU.
- Every CT of a living chest contains air (outside the body, the airways and the lungs, about
  -1000 HU) or at least aerated lung (about -850 HU): a volume with no value below ``TISSUE_MIN_HU``
  (-500 HU) is another modality (MR, PET), stored values without the rescale, or already normalised.
- The body is the largest connected region above ``TISSUE_MIN_HU`` (soft tissue, bone), filled slice by
  slice. Inside it, aerated lung, airways and emphysema lie below ``AERATED_MAX_HU`` (-600 HU; ground
  glass and consolidation lie above). In a chest CT covering the lungs they fill roughly 15-45% of the
  body voxels; in an abdomen or pelvis CT only bowel gas and perhaps the lung bases do, about 1-2%.
  ``MIN_AERATED_FRACTION`` (3%) sits between the two, low enough for chests whose lungs are largely
  consolidated or that extend far beyond the lungs. Foam mattresses and blankets (about -900 HU) lie
  outside the body mask and do not count.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from scipy import ndimage

from pipeline.utils.errors import InputError

HU_LIMITS = (-32768.0, 32767.0)
TISSUE_MIN_HU = -500.0
AERATED_MAX_HU = -600.0
#: Below this a voxel at the edge of the field of view is air or padding, above it anatomy cut by the edge.
EDGE_AIR_HU = -950.0
MIN_AERATED_FRACTION = 0.03

__all__ = ["CheckChestCT", "CheckChestCTd", "aerated_fraction", "body_mask", "slice_axis"]


def slice_axis(affine: np.ndarray | torch.Tensor | None) -> int:
    """The voxel axis closest to the patient's head-feet axis (the axial slice axis); 2 without an affine."""
    if affine is None:
        return 2
    return int(np.abs(np.asarray(affine, dtype=float)[2, :3]).argmax())


def body_mask(volume: np.ndarray, axis: int = 2) -> np.ndarray:
    """Voxels inside the body of an (X, Y, Z) HU volume: the largest soft-tissue/bone component, filled per slice.

    Holes are filled slice by slice along ``axis``; where non-air (> -950 HU) touches the edge of the field
    of view (a crop through the lungs), the anatomy is taken to continue beyond it, so cut lungs still fill.
    Returns a boolean array of the shape of ``volume``.
    """
    tissue = volume > TISSUE_MIN_HU
    labels, count = ndimage.label(tissue)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        tissue = labels == sizes.argmax()
    not_air = volume > EDGE_AIR_HU
    body = np.empty_like(tissue)
    for i in range(volume.shape[axis]):
        framed = np.pad(np.take(tissue, i, axis=axis), 1)
        edge = np.take(not_air, i, axis=axis)
        framed[0, 1:-1], framed[-1, 1:-1] = edge[0], edge[-1]
        framed[1:-1, 0], framed[1:-1, -1] = edge[:, 0], edge[:, -1]
        index = [slice(None)] * 3
        index[axis] = i
        body[tuple(index)] = ndimage.binary_fill_holes(framed)[1:-1, 1:-1]
    return body


def aerated_fraction(volume: np.ndarray, axis: int = 2) -> float:
    """Fraction of the body voxels of an (X, Y, Z) HU volume below ``AERATED_MAX_HU`` (0 without a body)."""
    body = body_mask(volume, axis)
    return float((body & (volume < AERATED_MAX_HU)).sum() / body.sum()) if body.any() else 0.0


class CheckChestCT(Transform):
    """Refuse a volume that is not a plausible chest CT in HU; return it unchanged otherwise.

    Args:
        min_aerated_fraction: the least fraction of body voxels below ``AERATED_MAX_HU`` (see the module docstring).
        max_inplane: the aerated fraction is measured on every k-th voxel in-plane, k chosen so that slices are
            at most this wide (a 512 x 512 CT is measured at 128 x 128: 16 times less work, the same fraction).

    The input is channel-first ``(1, X, Y, Z)`` or ``(X, Y, Z)``, a MetaTensor, tensor or array. Its file
    name (for the error) comes from ``filename`` or the MetaTensor's ``filename_or_obj``, the slice axis
    from ``affine`` or the MetaTensor's affine (the last axis without one).
    Raises :class:`~pipeline.utils.errors.InputError` naming the file and the problem.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, min_aerated_fraction: float = MIN_AERATED_FRACTION, max_inplane: int = 128) -> None:
        self.min_aerated_fraction = min_aerated_fraction
        self.max_inplane = max_inplane

    def _subsample(self, volume: np.ndarray, axis: int) -> np.ndarray:
        """Every k-th voxel in-plane so that slices are at most ``max_inplane`` wide (a fraction needs no more)."""
        inplane = [n for ax, n in enumerate(volume.shape) if ax != axis]
        step = max(1, min(inplane) // self.max_inplane)
        return volume[tuple(slice(None) if ax == axis else slice(None, None, step) for ax in range(3))]

    def __call__(
        self,
        img: np.ndarray | torch.Tensor,
        filename: str | None = None,
        affine: np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray | torch.Tensor:
        if isinstance(img, MetaTensor):
            filename = filename or img.meta.get("filename_or_obj")
            affine = img.affine if affine is None else affine
        name = str(filename or "<array>")
        volume = self._spatial(img, name)
        if not np.isfinite(volume).all():
            bad = int((~np.isfinite(volume)).sum())
            raise InputError(name, f"{bad} voxel(s) are NaN or infinite")
        low, high = float(volume.min()), float(volume.max())
        if low == high:
            raise InputError(name, f"the volume is constant ({low:g}): no image content")
        if low < HU_LIMITS[0] or high > HU_LIMITS[1]:
            raise InputError(
                name, f"values {low:g}..{high:g} lie outside the 16-bit range of CT numbers: not Hounsfield units"
            )
        if low > TISSUE_MIN_HU:
            raise InputError(
                name,
                f"no air: the lowest value is {low:g}, a CT has air near -1000 HU; this looks like another "
                "modality (MR, PET), stored values without the rescale, or an already normalised image",
            )
        axis = slice_axis(affine)
        fraction = aerated_fraction(self._subsample(volume, axis), axis)
        if fraction < self.min_aerated_fraction:
            raise InputError(
                name,
                f"not a chest CT: only {fraction:.1%} of the body is aerated lung or airway (below "
                f"{AERATED_MAX_HU:g} HU); a chest CT has at least {self.min_aerated_fraction:.0%}",
            )
        return img

    @staticmethod
    def _spatial(img: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
        """The (X, Y, Z) float array of a (1, X, Y, Z) or (X, Y, Z) input; InputError for other shapes."""
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        shape = tuple(array.shape)
        if array.ndim == 4 and shape[0] == 1:
            array = array[0]
        if array.ndim != 3:
            raise InputError(name, f"shape {shape}: expected a 3D volume (X, Y, Z) or (1, X, Y, Z)")
        if min(array.shape) < 2:
            raise InputError(name, f"shape {shape}: a single slice, not a 3D volume")
        return array.astype(np.float32, copy=False)


class CheckChestCTd(MapTransform):
    """Dictionary version of :class:`CheckChestCT`: checks ``data[key]`` for each key, returns ``data``.

    The file name comes from the MetaTensor's meta or, for plain arrays, ``data[f"{key}_meta_dict"]``.
    """

    backend = CheckChestCT.backend

    def __init__(
        self, keys: KeysCollection, min_aerated_fraction: float = MIN_AERATED_FRACTION, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckChestCT(min_aerated_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = d.get(f"{key}_meta_dict") or {}
            self.checker(d[key], filename=meta.get("filename_or_obj"), affine=meta.get("affine"))
        return d
