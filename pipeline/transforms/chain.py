"""The deterministic preprocessing chain: one definition for training, evaluation, inference and TorchScript.

:func:`deterministic_transforms` builds, for a channel-first HU volume loaded from a NIfTI file or DICOM
series folder (shapes for a MosMedData study):

1. ``LoadImaged`` ``(1, 512, 512, 33..54)`` HU, then ``CheckChestCTd`` (refuses what is not a chest CT in HU);
2. ``Orientationd`` RAS;
3. :class:`~pipeline.transforms.lung.LungMaskd`: the lungs, with what lies inside their envelope, on the scan's
   own grid (``lung_grid="scan"``; the segmentation the chest check made, not a second one), where a diseased
   lung keeps the detail that finds it: resampled first, a lung with reticulation and ground glass throughout
   lost three quarters of its mask. It refuses a study whose lungs are implausibly small for the thoracic cavity
   in view, or whose aerated lung stays off the ribs (a white lung);
4. :class:`~pipeline.transforms.spatial.ResampleToSpacingd` of the image and the lung mask to ``pixdim`` mm,
   anti-aliased, so 0.6 mm and 8 mm scans look alike (about ``(180, 180, 90)`` at 2 x 2 x 4 mm); the mask,
   a fraction of each voxel there, is read at 0.5 (``AsDiscreted``). ``lung_grid="pixdim"``, the chain before
   issue 21, computes the mask after the resampling instead;
5. ``CropForegroundd`` to the lungs' bounding box plus ``lung_margin_mm``;
6. :class:`HUWindowd`: HU ``hu_window`` to [0, 1], clipped (``ScaleIntensityRanged``'s floats);
7. outside the lungs: ``"air"`` sets it to 0 (air, -1000 HU; in the same :class:`HUWindowd`, as ``MaskIntensityd``
   would), ``"channel"`` keeps it and adds the lung mask as a second channel, ``"keep"`` keeps it (the tutorial's
   whole-volume input, no crop either);
8. :class:`~pipeline.transforms.spatial.SmoothResized` to ``spatial_size`` (``Resized`` with anti-aliasing,
   minus the Gaussian passes that change nothing), cast to ``dtype`` (float16: what the cache holds; every
   engine casts to float32 on the device, so all routes feed the network the same tensor).

With ``lesion=True`` (networks with a lesion output, :func:`pipeline.networks.nets.has_lesion_output`) the
item's lesion mask ``"mask"`` (a file path, when the study has one) follows the image through steps 2, 4, 5 and 8
(trilinear: a fraction of each voxel), the lung mask ``"lung"`` is kept (resized the same way) for the
involvement, and :class:`LesionMaskd` gives studies without a mask an empty one with ``"has_mask"`` 0 (1 for a
study labelled normal: it has no lesions), so every item has ``"image"``, ``"lung"``, ``"mask"`` of the same
``(1, H, W, D)`` grid and ``"has_mask"``, and :class:`VoxelVolumed` records the voxel volume (mL) as
``"voxel_ml"``. Both masks end as uint8 0/1 (``AsDiscreted`` at 0.5, the cut the involvement reads them at): a
byte a voxel in the cache instead of float16's two.

The parameters are the checkpoint's record (:mod:`pipeline.engine.record`); :data:`RECORDED` names them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader
from monai.transforms import (
    AsDiscreted,
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Transform,
)

from pipeline.transforms.hounsfield import voxel_ml
from pipeline.transforms.lung import LungMaskd
from pipeline.transforms.plausibility import CheckChestCTd
from pipeline.transforms.spatial import ResampleToSpacingd, SmoothResized

__all__ = [
    "HAS_MASK",
    "LUNG",
    "LUNG_GRIDS",
    "MASK",
    "OUTSIDE_LUNG",
    "RECORDED",
    "HUWindowd",
    "LesionMaskd",
    "NiftiReader",
    "VoxelVolumed",
    "deterministic_transforms",
    "in_channels",
    "lung_or_all",
]

#: What happens to everything outside the lung mask.
OUTSIDE_LUNG = ("air", "channel", "keep")
#: Where the lung mask is computed: the scan's own grid (after ``Orientationd``) or the ``pixdim`` grid.
LUNG_GRIDS = ("scan", "pixdim")
#: The parameters of :func:`deterministic_transforms` that change what the network sees (the checkpoint records them).
RECORDED = ("spatial_size", "hu_window", "pixdim", "lung_margin_mm", "outside_lung", "lung_grid")
#: Item keys of the lung mask, the lesion mask and whether the study has a lesion mask.
LUNG, MASK, HAS_MASK = "lung", "mask", "has_mask"
#: Item key of the volume (mL) of one voxel of the network's grid: a number, which a disk cache keeps (it keeps
#: tensors, not their affines), for the lesion evidence in mL.
VOXEL_ML = "voxel_ml"
#: Item key where the chest check leaves its lung segmentation (on the scan's grid) for ``LungMaskd`` to take:
#: the lungs are segmented once a study (gone from the item once the lung mask is made).
SEGMENTATION = "lung_segmentation"


class NiftiReader(NibabelReader):
    """MONAI's ``NibabelReader`` whose voxels come C-ordered in ``dtype``, converted a slab of slices at a time.

    A NIfTI volume is stored first axis fastest; ``LoadImage`` makes it C-ordered and float32 in two passes over
    the whole 512 x 512 x ~45 volume, with its last axis (41 slices) now fastest: about 0.06 s a study. Copying
    it 8 slices at a time into a C-ordered float32 array takes half that, and gives the same values (the
    meta data is ``NibabelReader``'s). Other arrays (4D, or on the GPU) are left to ``LoadImage``.
    """

    SLAB = 8

    def __init__(self, dtype: np.dtype | type = np.float32, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dtype = np.dtype(dtype)

    def _get_array_data(self, img, filename):
        data = super()._get_array_data(img, filename)
        if not isinstance(data, np.ndarray) or data.ndim != 3 or data.flags.c_contiguous:
            return data
        out = np.empty(data.shape, self.dtype)
        for start in range(0, data.shape[2], self.SLAB):
            out[:, :, start : start + self.SLAB] = data[:, :, start : start + self.SLAB]
        return out


class HUWindowd(MapTransform):
    """``ScaleIntensityRanged(a_min, a_max, 0, 1, clip=True)`` and, with ``mask_key``, ``MaskIntensityd`` after it.

    The same floats as those MONAI transforms (they run ``(x - a_min) / (a_max - a_min)``, clip to [0, 1], and
    multiply by ``mask > 0``), computed in NumPy in place: three passes over the crop instead of MONAI's seven
    torch operations, each of which hands work to the other thread and waits for it. On a busy 2-core machine
    (or with two cache workers) that waiting cost about 0.06 s a study, the arithmetic about 0.003 s.
    The output is a float32 MetaTensor with the input's meta data (as MONAI's).
    """

    def __init__(self, keys: KeysCollection, a_min: float, a_max: float, mask_key: str | None = None) -> None:
        super().__init__(keys)
        self.a_min, self.a_max, self.mask_key = a_min, a_max, mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            x = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            if not np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float32)  # never in this chain (float32 by now); no integer wrap-around
            y = (x - self.a_min) / (self.a_max - self.a_min)
            np.clip(y, 0.0, 1.0, out=y)
            if self.mask_key is not None:
                mask = d[self.mask_key]
                mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
                y *= mask > 0
            out = torch.from_numpy(y.astype(np.float32, copy=False))
            d[key] = (
                MetaTensor(out, meta=img.meta, applied_operations=list(img.applied_operations))
                if (isinstance(img, MetaTensor))
                else out
            )
        return d


class LesionMaskd(MapTransform):
    """Make every item carry a lesion mask: an empty one like ``data[like_key]`` where ``data[key]`` is absent.

    Sets ``data[flag_key]`` to a float32 scalar tensor: 1 when the lesions are known (the item came with a mask,
    or it is labelled normal, ``data[label_key] == 0``: a study without findings has none), 0 otherwise, so losses
    and metrics leave out the masks of studies whose lesions were never drawn (MosMedData's CT-1 to CT-4 but 50).
    """

    def __init__(
        self, keys: KeysCollection = MASK, like_key: str = LUNG, flag_key: str = HAS_MASK, label_key: str = "label"
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.like_key, self.flag_key, self.label_key = like_key, flag_key, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        normal = d.get(self.label_key) is not None and int(torch.as_tensor(d[self.label_key]).reshape(-1)[0]) == 0
        for key in self.keys:
            present = d.get(key) is not None
            known = present or normal
            if not present:
                like = d[self.like_key]
                d[key] = (
                    MetaTensor(torch.zeros(like.shape), meta=like.meta)
                    if isinstance(like, MetaTensor)
                    else (torch.zeros(like.shape))
                )
            d[self.flag_key] = torch.tensor(float(known))
        return d


class VoxelVolumed(MapTransform):
    """``data[name]``: the volume (mL) of one voxel of ``data[key]``'s grid, from its affine, a float32 scalar."""

    def __init__(self, keys: KeysCollection = LUNG, name: str = VOXEL_ML) -> None:
        super().__init__(keys)
        self.name = name

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.name] = torch.tensor(voxel_ml(d[key].affine), dtype=torch.float32)
        return d


def lung_or_all(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """``CropForeground``'s selector: the lung mask, or every voxel when it is empty (then nothing is cropped).

    A NumPy array, also for a tensor: MONAI's bounding box then reduces it with ``np.any``, about 20x faster
    than ``torch.any`` on a MetaTensor (the box is the same).
    """
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    selected = array > 0
    return selected if bool(selected.any()) else np.ones_like(selected)


def in_channels(outside_lung: str) -> int:
    """Network input channels for an ``outside_lung`` mode: 2 for ``"channel"`` (image + lung mask), else 1."""
    if outside_lung not in OUTSIDE_LUNG:
        raise ValueError(f"outside_lung must be one of {OUTSIDE_LUNG}, got {outside_lung!r}")
    return 2 if outside_lung == "channel" else 1


def deterministic_transforms(
    spatial_size: Sequence[int] = (128, 128, 64),
    hu_window: Sequence[float] = (-1000.0, 400.0),
    pixdim: Sequence[float] = (2.0, 2.0, 4.0),
    lung_margin_mm: float = 10.0,
    outside_lung: str = "air",
    lung_grid: str = "scan",
    dtype: torch.dtype = torch.float16,
    keys: str = "image",
    load: bool = True,
    check_chest: bool = True,
    lesion: bool = False,
) -> list[Transform]:
    """The chain above, as a list of MONAI dictionary transforms on ``keys``.

    Args:
        spatial_size: network input ``(H, W, D)`` voxels.
        hu_window: HU mapped to 0 and 1 (clipped).
        pixdim: spacing (mm) the scan is resampled to before the lung mask and the crop.
        lung_margin_mm: margin around the lungs' bounding box.
        outside_lung: one of :data:`OUTSIDE_LUNG`.
        lung_grid: one of :data:`LUNG_GRIDS`: the lung mask on the scan's own grid, carried to ``pixdim`` with the
            image (``"scan"``), or computed on the ``pixdim`` grid (``"pixdim"``, the chain before issue 21).
        dtype: output dtype.
        load: start with ``LoadImaged`` (``False`` for in-memory volumes that are already channel-first MetaTensors).
        check_chest: refuse volumes that are not a chest CT in HU.
        lesion: carry the lesion mask and the lung mask to the output (see the module docstring); not with
            ``outside_lung="keep"`` (no lung mask then).
    """
    in_channels(outside_lung)  # validates the mode
    if lung_grid not in LUNG_GRIDS:
        raise ValueError(f"lung_grid must be one of {LUNG_GRIDS}, got {lung_grid!r}")
    if lesion and outside_lung == "keep":
        raise ValueError("lesion=True needs the lung mask: outside_lung 'air' or 'channel', not 'keep'")
    margin = [int(np.ceil(lung_margin_mm / p)) for p in pixdim]
    spatial = [keys, MASK] if lesion else [keys]
    chain: list[Transform] = []
    if load:
        loader = LoadImaged(spatial, image_only=True, ensure_channel_first=True, allow_missing_keys=True)
        loader.register(NiftiReader(np.float32))  # chosen first for .nii/.nii.gz; DICOM series as before
        chain.append(loader)
    native = outside_lung != "keep" and lung_grid == "scan"
    if check_chest:
        chain.append(CheckChestCTd(keys, segmentation_key=SEGMENTATION if native else None))
    chain.append(Orientationd(spatial, axcodes="RAS", allow_missing_keys=True))
    if native:
        chain.append(LungMaskd(keys, mask_key=LUNG, segmentation_key=SEGMENTATION))
    chain.append(ResampleToSpacingd([*spatial, LUNG] if native else spatial, pixdim=pixdim, allow_missing_keys=True))
    if outside_lung == "keep":
        chain.append(HUWindowd(keys, a_min=hu_window[0], a_max=hu_window[1]))
    else:
        chain += [
            AsDiscreted(LUNG, threshold=0.5, dtype=torch.uint8) if native else LungMaskd(keys, mask_key=LUNG),
            CropForegroundd(
                [*spatial, LUNG],
                source_key=LUNG,
                select_fn=lung_or_all,
                margin=margin,
                allow_smaller=True,
                start_coord_key=None,
                end_coord_key=None,
                allow_missing_keys=True,
            ),
        ]
        if outside_lung == "air":
            chain.append(HUWindowd(keys, a_min=hu_window[0], a_max=hu_window[1], mask_key=LUNG))
        else:
            chain += [
                HUWindowd(keys, a_min=hu_window[0], a_max=hu_window[1]),
                EnsureTyped(LUNG, dtype=torch.float32),
                ConcatItemsd([keys, LUNG], name=keys),
            ]
        if not lesion:
            chain.append(DeleteItemsd(LUNG))
    resized = [*spatial, LUNG] if lesion else [keys]
    chain.append(SmoothResized(resized, spatial_size=tuple(spatial_size), mode="trilinear", allow_missing_keys=True))
    if lesion:  # both masks read at 0.5 (the involvement's cut), one byte a voxel in the cache
        chain += [
            LesionMaskd(MASK, like_key=LUNG, flag_key=HAS_MASK),
            VoxelVolumed(LUNG),
            AsDiscreted([MASK, LUNG], threshold=0.5, dtype=torch.uint8),
        ]
    chain.append(EnsureTyped(keys, dtype=dtype))
    return chain
