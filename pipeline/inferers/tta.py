"""Test-time augmentation: class probabilities (and lesion maps) averaged over flipped and rotated volumes.

MONAI's ``TestTimeAugmentation`` inverts each augmentation on a *segmentation*; a class label needs no
inverse, so :class:`TTAInferer` simply averages the class probabilities, and brings each view's lesion map back
before averaging it. It is an inferer (``"inferer"`` of the bundle's evaluator)
and, like :class:`pipeline.inferers.ensemble.Ensemble`, returns the log of the averaged probabilities so that the
postprocessing softmax yields the averaged probabilities themselves.

Views: the volume itself, one flip along each of ``flip_axes``, and one rotation by each of ``angles_deg``
about spatial axis ``rotation_axis``. After the bundle's ``Orientationd(RAS)``, spatial axis 0 runs left to
right and axis 2 is the slice axis; rotation about axis 2 (the axial plane of axes 0 and 1) is the in-plane
rotation of the training augmentations. The bundle builds the inferer with :meth:`TTAInferer.for_augmentation`
from the training recipe (:func:`pipeline.transforms.augment.train_augmentation`), so the model only meets
views it saw in training: the left-right flip only if the recipe flips (``"hospital"`` does, ``"tutorial"``
does not), and rotations only within the recipe's rotation range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Compose, RandAffined, RandFlipd, RandRotated, Rotate
from monai.utils import convert_to_tensor

from pipeline.inferers.ensemble import mean_log_probs
from pipeline.networks.nets import CLASS_KEY, LESION_KEY, split_output

__all__ = ["TTAInferer"]


class TTAInferer(Inferer):
    """Average P(class) over augmented views of each volume.

    Args:
        flip_axes: spatial axes (0, 1, 2 of ``H, W, D``), one flipped view each.
        angles_deg: rotation angles in degrees, one rotated view each (bilinear, zero padding, same size).
        rotation_axis: spatial axis the rotations turn about.
        inferer: applies the network to each view (default :class:`monai.inferers.SimpleInferer`).

    ``__call__(inputs (B, C, H, W, D), network)`` returns ``(B, K)`` log of the mean probabilities over the
    ``1 + len(flip_axes) + len(angles_deg)`` views; for a multi-task network
    ``{"pred": that, "lesion": logit(mean P(lesion))}``, each view's lesion map flipped or rotated back first
    (:meth:`undo`), as MONAI's ``TestTimeAugmentation`` inverts a segmentation.
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
        self.rotations, self.unrotations = (
            [
                Rotate(
                    angle=tuple(sign * math.radians(a) if i == rotation_axis else 0.0 for i in range(3)), keep_size=True
                )
                for a in angles_deg
            ]
            for sign in (1.0, -1.0)
        )
        self.inferer = inferer or SimpleInferer()

    @classmethod
    def for_augmentation(
        cls,
        transforms: Compose | Sequence[Any],
        flip_axes: Sequence[int] = (0,),
        angles_deg: Sequence[float] = (-10.0, 10.0),
        rotation_axis: int = 2,
        inferer: Inferer | None = None,
    ) -> TTAInferer:
        """The views of ``flip_axes`` and ``angles_deg`` that the training augmentation ``transforms`` can produce.

        A flip is kept when a ``RandFlipd`` flips that axis alone; an angle when a ``RandRotated`` or
        ``RandAffined`` rotates about ``rotation_axis`` by at least as much.
        """
        flips: set[int] = set()
        max_rad = 0.0
        stack = list(transforms.transforms if isinstance(transforms, Compose) else transforms)
        while stack:
            t = stack.pop()
            if isinstance(t, Compose):
                stack += t.transforms
            elif getattr(t, "prob", 0) <= 0:
                continue
            elif isinstance(t, RandFlipd) and isinstance(t.flipper.spatial_axis, int):
                flips.add(t.flipper.spatial_axis)
            elif isinstance(t, RandRotated):
                ranges = (t.rand_rotate.range_x, t.rand_rotate.range_y, t.rand_rotate.range_z)[rotation_axis]
                max_rad = max(max_rad, *map(abs, ranges))
            elif isinstance(t, RandAffined) and t.rand_affine.rand_affine_grid.rotate_range:
                ranges = t.rand_affine.rand_affine_grid.rotate_range
                r = ranges[rotation_axis] if rotation_axis < len(ranges) else 0.0
                max_rad = max(max_rad, *map(abs, r if isinstance(r, Sequence) else (r,)))
        return cls(
            flip_axes=[a for a in flip_axes if a in flips],
            angles_deg=[a for a in angles_deg if math.radians(abs(a)) <= max_rad + 1e-9],
            rotation_axis=rotation_axis,
            inferer=inferer,
        )

    def views(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """The augmented copies of a ``(B, C, H, W, D)`` batch, the unchanged batch first."""
        if inputs.ndim != 5:
            raise ValueError(f"expected a (B, C, H, W, D) batch, got shape {tuple(inputs.shape)}")
        return self._transform(convert_to_tensor(inputs, track_meta=False), self.rotations)

    def undo(self, outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Voxel maps ``(B, C, H, W, D)`` computed on :meth:`views`, each brought back to the original volume's grid."""
        flips = (*(None,), *self.flip_axes)
        back = [o if axis is None else torch.flip(o, dims=(axis + 2,)) for o, axis in zip(outputs, flips)]
        return back + [
            self._rotate(o, rotate) for o, rotate in zip(outputs[len(flips) :], self.unrotations, strict=True)
        ]

    def _transform(self, x: torch.Tensor, rotations: Sequence[Rotate]) -> list[torch.Tensor]:
        out = [x] + [torch.flip(x, dims=(axis + 2,)) for axis in self.flip_axes]
        return out + [self._rotate(x, rotate) for rotate in rotations]

    @staticmethod
    def _rotate(x: torch.Tensor, rotate: Rotate) -> torch.Tensor:
        flat = x.reshape(-1, *x.shape[2:])  # batch and channels as the channels of one image
        return convert_to_tensor(rotate(flat), track_meta=False).reshape(x.shape)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        outputs = [split_output(self.inferer(view, network, *args, **kwargs)) for view in self.views(inputs)]
        log_probs = mean_log_probs([logits for logits, _ in outputs])
        if outputs[0][1] is None:
            return log_probs
        lesion = torch.stack(self.undo([torch.sigmoid(lesion.float()) for _, lesion in outputs])).mean(dim=0)
        return {CLASS_KEY: log_probs, LESION_KEY: torch.logit(lesion, eps=1e-6)}
