"""Anti-aliased resampling to a physical voxel spacing, and an anti-aliased resize without needless passes.

MONAI's ``Spacing`` interpolates without low-pass filtering, so shrinking a 0.6 mm scan to 2 mm aliases its
noise and fine texture while an 8 mm scan is untouched: the network would see thin- and thick-slice scans
differently. :class:`ResampleToSpacing` computes the output grid from the spacing and resizes in two steps:
the axes that shrink by area averaging (each output voxel is the mean of the input voxels it covers, an exact
box low-pass: what ``Resize(mode="area")``, i.e. adaptive average pooling, computes; about 40x faster here
than ``Resize(anti_aliasing=True)``'s Gaussian on a 512 x 512 scan), then the axes that grow by trilinear
interpolation. Every scan thus reaches the network at the same resolution; the MetaTensor's affine follows
(as ``Resize`` sets it).

Speed without changing the result: :func:`area_resize` pools a 512 x 512 x 41 study about 4x faster than
``adaptive_avg_pool3d`` and gives the same floats for integer-valued volumes (CT numbers); a slice axis that
only grows is interpolated in 1D (the same floats as trilinear). :class:`SmoothResize` is MONAI's
``Resize(anti_aliasing=True)`` without the Gaussian passes that change nothing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import MapTransform, Resize, Transform
from monai.transforms.utils import scale_affine

__all__ = ["ResampleToSpacing", "ResampleToSpacingd", "SmoothResize", "SmoothResized", "area_resize", "spacing_of"]


def spacing_of(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """Voxel spacing (mm per spatial axis) of a channel-first image: the MetaTensor's ``pixdim``, else ones."""
    if isinstance(img, MetaTensor):
        return np.asarray(img.pixdim, dtype=float)
    return np.ones(img.ndim - 1)


def _window_sizes(n: int, m: int) -> np.ndarray:
    """Sizes of adaptive average pooling's windows from ``n`` to ``m`` cells: ``ceil((i+1)n/m) - floor(in/m)``."""
    i = np.arange(m)
    return (-(-(i + 1) * n // m) - i * n // m).astype(np.float32)


def _exact_sums(mean: np.ndarray, sizes: Sequence[np.ndarray]) -> np.ndarray | None:
    """The window sums behind the float32 window means ``mean``, when they are integers; otherwise ``None``.

    ``sizes`` are the window sizes along each pooled axis, shaped to broadcast against ``mean``. A fast kernel
    may divide a sum by the window's volume at once or axis by axis; either way an integer sum below 2**22 is
    recovered exactly by rounding ``mean * volume``. ``None`` when a recovered sum does not reproduce its mean
    either way (the volume is not integer-valued) or when the sums are too large to recover. (NumPy: these
    few passes over a small array cost more in thread hand-offs than in arithmetic with torch.)
    """
    volume = sizes[0]
    for k in sizes[1:]:
        volume = volume * k
    total = np.rint(mean * volume)
    if total.size == 0 or max(-float(total.min()), float(total.max())) >= 2.0**22:
        return None
    stepwise = total / sizes[0]
    for k in sizes[1:]:
        stepwise /= k
    same = stepwise == mean
    if not same.all():
        same |= total / volume == mean
        if not same.all():
            return None
    return total


def area_resize(data: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Area-average (adaptive average pooling) a float32 ``(C, X, Y, Z)`` tensor to ``size`` (every axis <=).

    Equal to ``F.interpolate(data[None], size, mode="area")[0]`` (``adaptive_avg_pool3d``, which MONAI's
    ``Resize(mode="area")`` runs), bit for bit for an integer-valued volume such as CT numbers, in about a
    quarter of the time: the in-plane windows are summed by ``adaptive_avg_pool2d`` on a channels-last view
    (``Z`` as the channels: no copy), the slice windows by ``adaptive_avg_pool1d``. Those kernels may round
    their means differently from the 3D one, so the integer window sums are recovered from them
    (:func:`_exact_sums`) and divided as the 3D kernel divides (``sum / kx / ky / kz``). A volume whose sums
    are not integers takes ``adaptive_avg_pool3d`` itself.
    """
    shape = tuple(int(s) for s in data.shape[1:])
    size = tuple(int(s) for s in size)
    if size == shape:
        return data
    if len(shape) != 3 or data.dtype != torch.float32 or data.device.type != "cpu":
        return F.interpolate(data[None], size=size, mode="area")[0]
    data = data.contiguous()
    kx, ky, kz = (_window_sizes(n, m) for n, m in zip(shape, size, strict=True))
    kx, ky = kx[:, None, None], ky[None, :, None]
    sums: np.ndarray | None = data.numpy()
    if size[:2] != shape[:2]:
        # (C, Z, X, Y) with Z fastest is a channels-last batch of C images with Z channels: no copy in or out
        mean = F.adaptive_avg_pool2d(data.permute(0, 3, 1, 2), size[:2]).permute(0, 2, 3, 1)
        sums = _exact_sums(mean.contiguous().numpy(), [kx, ky])
    if sums is not None and size[2] != shape[2]:
        flat = torch.from_numpy(np.ascontiguousarray(sums)).reshape(1, -1, shape[2])
        sums = _exact_sums(F.adaptive_avg_pool1d(flat, size[2]).reshape(-1, *size).numpy(), [kz])
    if sums is None:
        return F.interpolate(data[None], size=size, mode="area")[0]
    out = sums / kx  # a new array: the input is never written to
    out /= ky
    out /= kz
    return torch.from_numpy(out)


def _grow(data: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    """``data`` (C, *spatial) interpolated to ``size`` (every axis >=), as ``Resize(size, mode)`` computes it."""
    shape = tuple(data.shape[1:])
    if mode == "trilinear" and len(shape) == 3 and shape[:2] == size[:2]:
        # only the last axis grows: trilinear weights on the other axes are exactly 1 and 0
        c, x, y, z = data.shape
        flat = F.interpolate(data.reshape(1, c * x * y, z), size=size[2], mode="linear", align_corners=False)
        return flat.reshape(c, x, y, size[2])
    return F.interpolate(data[None], size=size, mode=mode)[0]


def _like(img: Any, data: torch.Tensor, shape: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``data``, resized from ``img`` (``shape`` to ``size``), with ``img``'s meta data and ``Resize``'s affine."""
    if not isinstance(img, MetaTensor):
        return data
    out = MetaTensor(data, meta=img.meta, applied_operations=list(img.applied_operations))
    affine = torch.as_tensor(img.affine, dtype=torch.float64)
    out.affine = affine @ torch.as_tensor(scale_affine(tuple(shape), tuple(size)), dtype=torch.float64)
    return out


class ResampleToSpacing(Transform):
    """Resample a channel-first ``(C, H, W, D)`` image to ``pixdim`` mm, low-pass filtered where it shrinks.

    Args:
        pixdim: output spacing in mm per spatial axis.
        mode: interpolation (``"trilinear"`` for images, ``"nearest"`` for masks: no anti-aliasing then).

    The output keeps the field of view (size ``round(shape * spacing / pixdim)``); a MetaTensor's affine is updated.
    The output is float32 when a resize happens, the input unchanged when the grid already matches.
    """

    def __init__(self, pixdim: Sequence[float], mode: str = "trilinear") -> None:
        self.pixdim = np.asarray(pixdim, dtype=float)
        self.mode = mode

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, MetaTensor) and get_track_meta():
            img = MetaTensor(torch.as_tensor(img))  # as MONAI's Resize returns it
        shape = tuple(int(s) for s in img.shape[1:])
        size = tuple(int(s) for s in np.maximum(1, np.round(np.asarray(shape) * spacing_of(img) / self.pixdim)))
        if size == shape:
            return img
        if self.mode == "nearest":
            return Resize(size, mode="nearest")(img)
        data = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        data = data.to(torch.float32)
        shrunk = tuple(min(s, n) for s, n in zip(shape, size, strict=True))
        if shrunk != shape:
            data = area_resize(data, shrunk)
        if size != shrunk:
            data = _grow(data, size, self.mode)
        return _like(img, data, shape, size)


class ResampleToSpacingd(MapTransform):
    """Dictionary version of :class:`ResampleToSpacing`; ``mode`` may be one per key."""

    def __init__(
        self,
        keys: KeysCollection,
        pixdim: Sequence[float],
        mode: str | Sequence[str] = "trilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        self.resamplers = {key: ResampleToSpacing(pixdim, m) for key, m in zip(self.keys, modes, strict=True)}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resamplers[key](d[key])
        return d


def _is_identity(kernel: torch.Tensor) -> bool:
    """Whether a 1D filter kernel returns its input: ``[1]`` or ``[0, ..., 0, 1, 0, ..., 0]``."""
    centre = kernel.numel() // 2
    return bool(kernel[centre] == 1) and int(torch.count_nonzero(kernel)) == 1


class SmoothResize(Transform):
    """MONAI's ``Resize(spatial_size, mode, anti_aliasing=True)``, without the Gaussian passes that change nothing.

    ``Resize`` low-passes every axis with a Gaussian of sigma ``max(0, (in / out - 1) / 2)`` (a zero-padded
    separable convolution) before it interpolates; along an axis that does not shrink the kernel is
    ``[0, 1, 0]``, whose padding and convolution return the input exactly. Here such axes are left out, so the
    axes that shrink get the same convolutions of the same tensors, and the output (float32, affine and meta
    data as ``Resize`` sets them) equals ``Resize``'s: on a crop of 120 x 80 x 76 to 128 x 128 x 64 it skips
    two of the three convolutions.

    Args:
        spatial_size: output spatial size.
        mode: interpolation mode of ``torch.nn.functional.interpolate``.
    """

    def __init__(self, spatial_size: Sequence[int], mode: str = "trilinear") -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.mode = mode

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, MetaTensor) and get_track_meta():
            img = MetaTensor(torch.as_tensor(img))
        data = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        data = data.to(torch.float32)
        shape, size = tuple(int(s) for s in data.shape[1:]), self.spatial_size
        if shape == size:
            return _like(img, data.clone(), shape, size)
        if any(n < s for n, s in zip(size, shape, strict=True)):
            factors = torch.div(torch.Tensor(list(shape)), torch.Tensor(list(size)))
            sigmas = torch.maximum(torch.zeros(factors.shape), (factors - 1) / 2).tolist()
            kernels = [gaussian_1d(torch.as_tensor(s, dtype=torch.float), truncated=4.0, approx="erf") for s in sigmas]
            kernels = [torch.ones(1) if _is_identity(k) else k for k in kernels]
            data = separable_filtering(data[None], kernels)[0]
        data = F.interpolate(data[None], size=size, mode=self.mode)[0]
        return _like(img, data, shape, size)


class SmoothResized(MapTransform):
    """Dictionary version of :class:`SmoothResize`."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: str = "trilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = SmoothResize(spatial_size, mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key])
        return d
