"""Is this loaded volume a plausible chest CT in Hounsfield units? MONAI transforms that refuse it if not.

Run on the volume as loaded (``LoadImage`` applies the DICOM rescale, so values are HU), before any
intensity scaling or resampling. The thresholds come from the physics and anatomy of CT, not from the test data:

- Padding is masked before any check: voxels at or below ``PADDING_MAX_HU`` (-2000 HU; scanners pad the
  field of view with -2048, -3024 or -32768, or -32768 stored with a -1024 intercept) and voxels equal to the
  rescaled ``PixelPaddingValue`` when the image meta carries it. Nothing in a patient lies below -1024 HU.
- CT numbers are 16-bit signed integers after the rescale (air -1000 HU, water 0 HU, cortical bone
  and metal up to about +3000 HU, extended scales up to about +30000 HU): values above 32767 are not HU.
- Every CT of a living chest contains air (outside the body, the airways and the lungs, about
  -1000 HU) or at least aerated lung (about -850 HU): a volume with no value below ``TISSUE_MIN_HU``
  (-500 HU) is another modality (MR, PET), stored values without the rescale, or already normalised.
- Aerated lung parenchyma lies between ``GAS_MAX_HU`` (-950 HU; pure gas below: airways, bowel, stomach) and
  ``AERATED_MAX_HU`` (-600 HU; ground glass and consolidation above). Its volume in mL (voxel spacing from the
  affine) inside the project's lung mask (:func:`pipeline.transforms.lung.lung_mask`, which leaves out the
  mattress and most bowel gas) is what makes a chest CT: adult lungs hold 3-6 L, lungs 90 % consolidated still
  keep 300-400 mL (the synthetic chest with 90 % of its lung consolidated: 307-414 mL), and so does a 24 mm slab
  of 4 slices through both lungs (306 mL). An abdomen or pelvis CT shows only the lung bases and bowel gas, which
  partial volume lifts into the parenchyma range on coarse voxels (the real abdomen CT: 109 mL at 3 mm, 196-223 mL
  block-averaged to 6-9 mm). ``MIN_AERATED_ML`` (250 mL) lies between. The volume is absolute, so a chest-abdomen
  scan is not diluted by its abdomen as a fraction of the body was.
- A **short scan** of a chest (a slab of a few centimetres) holds less: a 30 mm slab of real COVID-19 lungs keeps
  178 mL (RICORD positive 2). What still tells it from an abdomen is the share of the thoracic cavity inside the
  ribs that aerated lung fills: 0.17-0.66 on the real slabs (positive and negative) and 0.30-0.39 on the real whole
  chests, 0.016-0.033 on the real abdomen at 3-9 mm, where the lower ribs enclose the liver, spleen and bowel. So
  a scan under ``MIN_AERATED_ML`` is still a chest when its aerated lung fills at least
  ``MIN_AERATED_CAVITY_SHARE`` (0.10, about a quarter of a normal lung's share) of that cavity and holds at least
  ``MIN_SHORT_AERATED_ML`` (100 mL, an adult's lung over about a centimetre; a human-sized chest, not the same
  voxels read at 1 mm). A whole chest with lungs almost without air fills far less of its cavity (the synthetic
  chests with 90 % of their lung consolidated: under 0.06) and is refused, with a reason that says so.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, ensure_tuple_rep
from scipy import ndimage

from pipeline.transforms.hounsfield import AIR_HU, EDGE_AIR_HU, TISSUE_MIN_HU, voxel_spacing
from pipeline.transforms.lung import LungSegmentation, segment_lungs
from pipeline.utils.errors import InputError

HU_MAX = 32767.0
AERATED_MAX_HU = -600.0
#: At or below this a voxel inside the body is gas (airways, bowel, stomach), not lung parenchyma.
GAS_MAX_HU = -950.0
#: At or below this a voxel is padding outside the reconstructed field of view, never anatomy.
PADDING_MAX_HU = -2000.0
MIN_AERATED_ML = 250.0
#: A short scan under ``MIN_AERATED_ML`` is a chest when its aerated lung fills this share of the thoracic cavity
#: inside the ribs in view, and holds at least ``MIN_SHORT_AERATED_ML`` mL (module docstring).
MIN_AERATED_CAVITY_SHARE = 0.10
MIN_SHORT_AERATED_ML = 100.0

__all__ = [
    "MIN_AERATED_CAVITY_SHARE",
    "MIN_AERATED_ML",
    "MIN_SHORT_AERATED_ML",
    "CheckChestCT",
    "CheckChestCTd",
    "aerated_fraction",
    "aerated_lung_ml",
    "body_mask",
    "chest_ct_problem",
    "padding_mask",
    "voxel_spacing",
]


def padding_mask(volume: np.ndarray, padding_hu: float | None = None) -> np.ndarray:
    """Voxels of an HU volume that are padding: at or below ``PADDING_MAX_HU``, or equal to ``padding_hu``."""
    padding = volume <= PADDING_MAX_HU
    if padding_hu is not None:
        padding |= volume == padding_hu
    return padding


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


def aerated_lung_ml(volume: np.ndarray, affine: np.ndarray | torch.Tensor | None = None) -> float:
    """Aerated lung (mL) of an (X, Y, Z) HU volume: voxels in (``GAS_MAX_HU``, ``AERATED_MAX_HU``) in its lung mask.

    The volume is turned to RAS with ``affine`` (1 mm voxels, RAS, without one) for
    :func:`pipeline.transforms.lung.lung_mask`; padding (:func:`padding_mask`) counts as air.
    """
    return _aerated_lungs(volume, affine)[0]


def _aerated_lungs(
    volume: np.ndarray, affine: np.ndarray | torch.Tensor | None = None
) -> tuple[float, LungSegmentation]:
    """:func:`aerated_lung_ml` and the lung segmentation (:func:`~pipeline.transforms.lung.segment_lungs`) it
    counted in, on the volume turned RAS with padding as air."""
    matrix = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    ornt = nib.orientations.io_orientation(matrix)
    ras = nib.orientations.apply_orientation(np.where(padding_mask(volume), np.float32(AIR_HU), volume), ornt)
    spacing = np.asarray(voxel_spacing(affine))[ornt[:, 0].argsort()]
    found = segment_lungs(ras, tuple(spacing))
    parenchyma = found.mask & (ras > GAS_MAX_HU) & (ras < AERATED_MAX_HU)
    return float(parenchyma.sum() * np.prod(spacing) / 1000.0), found


def _padding_hu(meta: Mapping | None) -> float | None:
    """The rescaled PixelPaddingValue (HU) from DICOM image meta (``"00280120"``, slope, intercept), if present."""
    if not meta:
        return None
    value = meta.get("00280120", meta.get("PixelPaddingValue"))
    if isinstance(value, Mapping):  # PydicomReader keeps elements as {"vr": ..., "Value": [...]}
        value = (value.get("Value") or [None])[0]
    if value is None:
        return None

    def number(key: str, keyword: str, default: float) -> float:
        v = meta.get(key, meta.get(keyword, default))
        v = (v.get("Value") or [default])[0] if isinstance(v, Mapping) else v
        return float(v)

    return float(value) * number("00281053", "RescaleSlope", 1.0) + number("00281052", "RescaleIntercept", 0.0)


class CheckChestCT(Transform):
    """Refuse a volume that is not a plausible chest CT in HU; return it unchanged otherwise.

    Args:
        min_aerated_ml: the least aerated lung volume of a whole chest, mL (see the module docstring).
        min_cavity_share: a short scan's least share of the thoracic cavity inside the ribs that aerated lung fills.
        min_short_ml: a short scan's least aerated lung volume, mL.

    The input is channel-first ``(1, X, Y, Z)`` or ``(X, Y, Z)``, a MetaTensor, tensor or array. Its file
    name (for the error) comes from ``filename`` or the MetaTensor's ``filename_or_obj``, the orientation and
    voxel spacing from ``affine`` or the MetaTensor's affine (RAS and 1 mm voxels without one),
    the padding value from ``padding_hu`` or the MetaTensor's DICOM PixelPaddingValue.
    Raises :class:`~pipeline.utils.errors.InputError` naming the file and the problem.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        min_aerated_ml: float = MIN_AERATED_ML,
        min_cavity_share: float = MIN_AERATED_CAVITY_SHARE,
        min_short_ml: float = MIN_SHORT_AERATED_ML,
    ) -> None:
        self.min_aerated_ml = min_aerated_ml
        self.min_cavity_share = min_cavity_share
        self.min_short_ml = min_short_ml

    def __call__(
        self,
        img: np.ndarray | torch.Tensor,
        filename: str | None = None,
        affine: np.ndarray | torch.Tensor | None = None,
        padding_hu: float | None = None,
    ) -> np.ndarray | torch.Tensor:
        self.segment(img, filename, affine, padding_hu)
        return img

    def segment(
        self,
        img: np.ndarray | torch.Tensor,
        filename: str | None = None,
        affine: np.ndarray | torch.Tensor | None = None,
        padding_hu: float | None = None,
    ) -> LungSegmentation:
        """Check ``img`` as calling the transform does, and return the lung segmentation the check counted the
        aerated lung in: that of the volume turned RAS, padding as air (what
        :class:`~pipeline.transforms.lung.LungMask` of the RAS volume computes, so it can take this one)."""
        if isinstance(img, MetaTensor):
            filename = filename or img.meta.get("filename_or_obj")
            affine = img.affine if affine is None else affine
            padding_hu = _padding_hu(img.meta) if padding_hu is None else padding_hu
        name = str(filename or "<array>")
        volume = self._spatial(img, name)
        if not np.isfinite(volume).all():
            bad = int((~np.isfinite(volume)).sum())
            raise InputError(name, f"{bad} voxel(s) are NaN or infinite")
        padding = padding_mask(volume, padding_hu)
        values = volume[~padding]
        if values.size == 0:
            raise InputError(name, f"every voxel is padding (at or below {PADDING_MAX_HU:g} HU): no image content")
        low, high = float(values.min()), float(values.max())
        if low == high:
            raise InputError(name, f"the volume is constant ({low:g}): no image content")
        if high > HU_MAX:
            raise InputError(
                name, f"values {low:g}..{high:g} lie outside the 16-bit range of CT numbers: not Hounsfield units"
            )
        if low > TISSUE_MIN_HU:
            raise InputError(
                name,
                f"no air: the lowest value is {low:g}, a CT has air near -1000 HU; this looks like another "
                "modality (MR, PET), stored values without the rescale, or an already normalised image",
            )
        aerated, found = _aerated_lungs(np.where(padding, np.float32(AIR_HU), volume), affine)
        share = aerated / found.cavity_ml if found.cavity_ml > 0 else 0.0
        short_chest = share >= self.min_cavity_share and aerated >= self.min_short_ml
        if aerated < self.min_aerated_ml and not short_chest:
            raise InputError(
                name,
                f"not a chest CT, or lungs almost without air: only {aerated:.0f} mL of aerated lung "
                f"({GAS_MAX_HU:g} to {AERATED_MAX_HU:g} HU), {100 * share:.0f} % of the {found.cavity_ml:.0f} mL "
                f"thoracic cavity inside the ribs; a chest CT has at least {self.min_aerated_ml:g} mL, a short scan "
                f"of one at least {self.min_short_ml:g} mL filling {100 * self.min_cavity_share:g} % of that cavity",
            )
        return found

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


def chest_ct_problem(volume: np.ndarray, affine: np.ndarray | torch.Tensor | None = None) -> str | None:
    """Why an ``(X, Y, Z)`` HU volume is not a plausible chest CT (:class:`CheckChestCT`'s words), ``None`` if it is."""
    try:
        CheckChestCT()(volume, affine=affine)
    except InputError as err:
        return err.problem
    return None


class CheckChestCTd(MapTransform):
    """Dictionary version of :class:`CheckChestCT`: checks ``data[key]`` for each key, returns ``data``.

    The file name, affine and padding value come from the MetaTensor's meta or, for plain arrays,
    ``data[f"{key}_meta_dict"]``. With ``segmentation_key`` (one name per key, or one for all), the lung
    segmentation the check made (:meth:`CheckChestCT.segment`) is put there, for
    :class:`~pipeline.transforms.lung.LungMaskd` (its ``segmentation_key``) to take instead of segmenting again.
    """

    backend = CheckChestCT.backend

    def __init__(
        self,
        keys: KeysCollection,
        min_aerated_ml: float = MIN_AERATED_ML,
        segmentation_key: str | Sequence[str] | None = None,
        allow_missing_keys: bool = False,
        min_cavity_share: float = MIN_AERATED_CAVITY_SHARE,
        min_short_ml: float = MIN_SHORT_AERATED_ML,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckChestCT(min_aerated_ml, min_cavity_share, min_short_ml)
        self.segmentation_keys = ensure_tuple_rep(segmentation_key, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, segmentation_key in self.key_iterator(d, self.segmentation_keys):
            meta = d.get(f"{key}_meta_dict") or {}
            found = self.checker.segment(
                d[key], filename=meta.get("filename_or_obj"), affine=meta.get("affine"), padding_hu=_padding_hu(meta)
            )
            if segmentation_key is not None:
                d[segmentation_key] = found
        return d
