"""Test-time augmentation for classification: class probabilities averaged over flipped and rotated volumes.

MONAI's ``TestTimeAugmentation`` inverts each augmentation on a *segmentation*; a class label needs no
inverse, so :class:`TTAInferer` simply averages. It is an inferer (``"inferer"`` of the bundle's evaluator)
and, like :class:`pipeline.inferers.ensemble.Ensemble`, returns the log of the averaged probabilities so that the
postprocessing softmax yields the averaged probabilities themselves.

Views: the volume itself, one flip along each of ``flip_axes``, and one rotation by each of ``angles_deg``
about spatial axis ``rotation_axis``. After the bundle's ``Orientationd(RAS)``, spatial axis 0 runs left to
right and axis 2 is the slice axis; rotation about axis 2 (the axial plane of axes 0 and 1) is the in-plane
rotation of the training augmentation ``RandRotated(range_z=...)``, so the defaults stay within what the
model saw in training except the left-right flip (the lungs are roughly mirror images; the heart is not).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Rotate
from monai.utils import convert_to_tensor

from pipeline.inferers.ensemble import mean_log_probs

__all__ = ["TTAInferer"]


class TTAInferer(Inferer):
    """Average P(class) over augmented views of each volume.

    Args:
        flip_axes: spatial axes (0, 1, 2 of ``H, W, D``), one flipped view each.
        angles_deg: rotation angles in degrees, one rotated view each (bilinear, zero padding, same size).
        rotation_axis: spatial axis the rotations turn about.
        inferer: applies the network to each view (default :class:`monai.inferers.SimpleInferer`).

    ``__call__(inputs (B, C, H, W, D), network)`` returns ``(B, K)`` log of the mean probabilities over the
    ``1 + len(flip_axes) + len(angles_deg)`` views.
    """

    def __init__(
        self,
        flip_axes: Sequence[int] = (0,),
        angles_deg: Sequence[float] = (-10.0, 10.0),
        rotation_axis: int = 2,
        inferer: Inferer | None = None,
    ) -> None:
        super().__init__()
        bad = [a for a in (*flip_axes, rotation_axis) if a not in (0, 1, 2)]
        if bad:
            raise ValueError(f"spatial axes of a 3D volume are 0, 1 and 2, got {bad}")
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.rotations = [
            Rotate(angle=tuple(math.radians(a) if i == rotation_axis else 0.0 for i in range(3)), keep_size=True)
            for a in angles_deg
        ]
        self.inferer = inferer or SimpleInferer()

    def views(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """The augmented copies of a ``(B, C, H, W, D)`` batch, the unchanged batch first."""
        if inputs.ndim != 5:
            raise ValueError(f"expected a (B, C, H, W, D) batch, got shape {tuple(inputs.shape)}")
        x = convert_to_tensor(inputs, track_meta=False)
        out = [x] + [torch.flip(x, dims=(axis + 2,)) for axis in self.flip_axes]
        flat = x.reshape(-1, *x.shape[2:])  # batch and channels as the channels of one image
        out += [convert_to_tensor(rotate(flat), track_meta=False).reshape(x.shape) for rotate in self.rotations]
        return out

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        return mean_log_probs([self.inferer(view, network, *args, **kwargs) for view in self.views(inputs)])
