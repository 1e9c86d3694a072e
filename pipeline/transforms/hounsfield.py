"""CT numbers and voxel sizes shared by the lung mask (:mod:`pipeline.transforms.lung`) and the plausibility
checks (:mod:`pipeline.transforms.plausibility`), which build on it: defined here, below both, once.

The values come from the physics of CT (air -1000 HU, water 0 HU), not from any data set; the modules that use
them say why each cut lies where it does.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["AIR_HU", "EDGE_AIR_HU", "TISSUE_MIN_HU", "voxel_ml", "voxel_spacing"]

#: Air.
AIR_HU = -1000.0
#: Above this: soft tissue, fat, bone (the body); aerated lung and air lie below.
TISSUE_MIN_HU = -500.0
#: Below this a voxel at the edge of the field of view is air or padding, above it anatomy cut by the edge.
EDGE_AIR_HU = -950.0


def voxel_spacing(affine: np.ndarray | torch.Tensor | None) -> tuple[float, float, float]:
    """Voxel size (mm) of the first three axes of a 4x4 affine; 1 mm isotropic without one."""
    if affine is None:
        return (1.0, 1.0, 1.0)
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0))  # type: ignore[return-value]


def voxel_ml(affine: np.ndarray | torch.Tensor) -> float:
    """The volume of one voxel of a grid with voxel-to-world ``affine`` (mm, 4x4 or 3x3), in millilitres."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    return float(abs(np.linalg.det(matrix))) / 1000.0
