"""Severity from a lesion map: lung involvement, the MosMedData category, the map in the scan's own geometry.

MosMedData grades a study by the share of lung parenchyma involved (:data:`CATEGORY_BANDS`: CT-1 below 25 %,
CT-2 25-50 %, CT-3 50-75 %, CT-4 above 75 %). Here the share is measured on the network's grid, where the
chain (:mod:`pipeline.transforms.chain`, ``lesion=True``) brings the image, the lung mask and, for studies that
have one, the lesion mask:

``involvement = |{lesion probability >= 0.5} and lung| / |lung|`` (voxels of the same grid, so a fraction of
the lung volume). The true involvement of a study with a lesion mask is the same ratio for its mask (a fraction
of each voxel after resampling, counted at >= 0.5). Postprocessing for the bundle's evaluators:

1. :class:`SplitOutputsd`: a multi-task network's output ``{"pred", "lesion"}`` under ``"pred"`` becomes
   ``"pred"`` (class logits) and ``"lesion"`` (lesion logits); the multi-task target under ``"label"`` becomes
   ``"label"`` again. A classifier's tensor passes unchanged.
2. ``Activationsd("lesion", sigmoid=True)``, then :class:`Involvementd`: the lesion evidence of
   :func:`lesion_evidence` (``"involvement"``, ``"lesion_ml"``, ``"focus_ml"``) and ``"involvement_true"`` (NaN
   without a mask).

The evidence is measured in the lungs on the network's grid: a voxel's volume there comes from the item's affine
after the chain's crop and resize (:func:`voxel_ml`), so millilitres mean the same on every scan whatever its
field of view.

:func:`category` turns P(pneumonia) and the involvement into CT-0..CT-4; :func:`to_scan_geometry` resamples a
lesion map back onto the grid of the file it came from, for viewers.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialResample
from scipy import ndimage

from pipeline.networks.nets import split_output
from pipeline.synth.phantom import CATEGORY_BANDS
from pipeline.transforms.chain import HAS_MASK, LUNG, MASK, VOXEL_ML
from pipeline.transforms.hounsfield import voxel_ml

__all__ = [
    "CATEGORIES",
    "EVIDENCE",
    "LESION",
    "Involvementd",
    "SplitOutputsd",
    "category",
    "involvement",
    "lesion_evidence",
    "to_scan_geometry",
    "voxel_ml",
]

#: The MosMedData categories, least to most involved.
CATEGORIES = tuple(CATEGORY_BANDS)
#: Item key of the lesion map (logits, then probabilities) in the evaluators' postprocessing.
LESION = "lesion"
_CUT = 0.5
#: Item keys (and prediction columns) of the lesion evidence of :func:`lesion_evidence`.
EVIDENCE = ("involvement", "lesion_ml", "focus_ml")


def involvement(lesion: torch.Tensor | np.ndarray, lung: torch.Tensor | np.ndarray, cut: float = _CUT) -> float:
    """Fraction of the lung (``lung >= cut``) where ``lesion >= cut``; 0 for an empty lung mask.

    Args:
        lesion: lesion probability (or mask fraction) per voxel, any shape.
        lung: lung mask (fraction per voxel) of the same shape.
        cut: the level both are read at.
    """
    lesion_v = torch.as_tensor(lesion).float() >= cut
    lung_v = torch.as_tensor(lung).float() >= cut
    n_lung = int(lung_v.sum())
    return float((lesion_v & lung_v).sum()) / n_lung if n_lung else 0.0


def lesion_evidence(
    lesion: torch.Tensor | np.ndarray, lung: torch.Tensor | np.ndarray, ml_per_voxel: float, cut: float = _CUT
) -> dict[str, float]:
    """The lesion evidence of one scan from its lesion map inside the lung mask.

    Args:
        lesion: lesion probability per voxel, ``(1, H, W, D)`` or ``(H, W, D)``.
        lung: lung mask (fraction per voxel) of the same grid.
        ml_per_voxel: one voxel's volume (:func:`voxel_ml` of the grid's affine).
        cut: the level both maps are read at.

    Returns:
        ``involvement`` (:func:`involvement`, a fraction of the lung), ``lesion_ml`` (the lung voxels with
        ``lesion >= cut``, in mL) and ``focus_ml`` (the largest of their 26-connected components, in mL).
    """
    lesion_v = torch.as_tensor(lesion).float().reshape(-1, *np.shape(lesion)[-3:])[0] >= cut
    lung_v = torch.as_tensor(lung).float().reshape(-1, *np.shape(lung)[-3:])[0] >= cut
    found = (lesion_v & lung_v).cpu().numpy()
    n_lung = int(lung_v.sum())
    components, n = ndimage.label(found, structure=np.ones((3, 3, 3), dtype=bool))
    largest = int(np.bincount(components.reshape(-1))[1:].max()) if n else 0
    return {
        "involvement": float(found.sum()) / n_lung if n_lung else 0.0,
        "lesion_ml": float(found.sum()) * ml_per_voxel,
        "focus_ml": largest * ml_per_voxel,
    }


def category(prob_pneumonia: float, involvement_fraction: float, threshold: float) -> str:
    """The MosMedData category: CT-0 below the classification ``threshold``, else CT-1..CT-4 by involvement.

    A study called pneumonia is at least CT-1, however little of the lung the lesion map covers.
    """
    if prob_pneumonia < threshold:
        return CATEGORIES[0]
    for name in CATEGORIES[2:]:
        if involvement_fraction < CATEGORY_BANDS[name][0]:
            return CATEGORIES[CATEGORIES.index(name) - 1]
    return CATEGORIES[-1]


class SplitOutputsd(MapTransform):
    """Flatten a multi-task network's output and target in an engine's postprocessing.

    ``data[pred_key]`` ``{"pred": (K,), "lesion": (1, H, W, D)}`` becomes ``data[pred_key]`` (class logits) and
    ``data[lesion_key]``; a target dict under ``label_key`` (see :func:`pipeline.engine.handlers.prepare_float_batch`)
    becomes its ``"label"``. Tensors pass unchanged, so the same postprocessing serves classifiers.
    """

    def __init__(self, pred_key: str = "pred", label_key: str = "label", lesion_key: str = LESION) -> None:
        super().__init__([pred_key, label_key], allow_missing_keys=True)
        self.pred_key, self.label_key, self.lesion_key = pred_key, label_key, lesion_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.pred_key in d:
            logits, lesion = split_output(d[self.pred_key])
            d[self.pred_key] = logits
            if lesion is not None:
                d[self.lesion_key] = lesion
        if isinstance(d.get(self.label_key), Mapping):
            d[self.label_key] = d[self.label_key]["label"]
        return d


class Involvementd(MapTransform):
    """The lesion evidence (:data:`EVIDENCE`, :func:`lesion_evidence`) from the lesion probabilities and the lung
    mask, whose affine gives the voxel volume; ``data["involvement_true"]`` from the lesion mask when
    ``data[has_mask_key]`` says the study has one (NaN otherwise). Items without a lesion map (classifiers) pass
    unchanged.
    """

    def __init__(
        self,
        keys: KeysCollection = LESION,
        lung_key: str = LUNG,
        mask_key: str = MASK,
        has_mask_key: str = HAS_MASK,
        cut: float = _CUT,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.lung_key, self.mask_key, self.has_mask_key, self.cut = lung_key, mask_key, has_mask_key, cut

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            lung = d[self.lung_key]
            if d.get(VOXEL_ML) is not None:  # the chain's own record of it: it survives a disk cache, affines do not
                ml = float(torch.as_tensor(d[VOXEL_ML]).reshape(-1)[0])
            elif isinstance(lung, MetaTensor):
                ml = voxel_ml(lung.affine)
            else:
                raise ValueError(f"{self.lung_key!r} must be a MetaTensor, or the item carry {VOXEL_ML!r}")
            d.update(lesion_evidence(d[key], lung, ml, self.cut))
            has_mask = bool(torch.as_tensor(d.get(self.has_mask_key, 0.0)).item())
            d["involvement_true"] = involvement(d[self.mask_key], lung, self.cut) if has_mask else math.nan
        return d


def to_scan_geometry(lesion: torch.Tensor, affine: Any, original_affine: Any, spatial_shape: Any) -> np.ndarray:
    """Resample a ``(1, H, W, D)`` lesion map with voxel-to-world ``affine`` onto the original file's grid.

    Args:
        lesion: lesion probabilities on the network's grid.
        affine: their affine (the chain's output image's ``affine``: RAS, cropped, resized).
        original_affine: the affine of the file as loaded (``meta["original_affine"]``).
        spatial_shape: the file's shape (``meta["spatial_shape"]``).

    Returns:
        ``(X, Y, Z)`` float32 probabilities in the file's voxel order (bilinear; 0 outside the network's crop).
    """
    data = lesion.as_tensor() if isinstance(lesion, MetaTensor) else torch.as_tensor(lesion)
    src = MetaTensor(data.float().cpu(), affine=torch.as_tensor(affine, dtype=torch.float64))
    out = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
        src,
        dst_affine=torch.as_tensor(original_affine, dtype=torch.float64),
        spatial_size=tuple(int(s) for s in np.asarray(spatial_shape).reshape(-1)[:3]),
    )
    return torch.as_tensor(out)[0].numpy().astype(np.float32)
