"""Random fields and splatting on the phantom's working grid (float32 ``(X, Y, Z)`` arrays, spacing in mm)."""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage


def upsample(a: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear in-plane upsampling by an integer ``factor`` (pixel-area aligned, edges replicated).

    ``(W, W, Z) -> (W*factor, W*factor, Z)``, float32.
    """
    if factor == 1:
        return a
    a = np.asarray(a, dtype=np.float32)
    for axis in (0, 1):
        src = np.moveaxis(a, axis, 0)
        out = np.empty((src.shape[0] * factor, *src.shape[1:]), np.float32)
        for s in range(factor):
            o = (s + 0.5) / factor - 0.5
            w_self, w_other = np.float32(1 - abs(o)), np.float32(abs(o))
            dst = out[s::factor]
            # blend with the row before (o < 0) or after; the edge row is its own neighbour
            inner, edge, near = (slice(1, None), 0, slice(None, -1)) if o < 0 else (slice(None, -1), -1, slice(1, None))
            np.multiply(src[inner], w_self, out=dst[inner])
            dst[inner] += w_other * src[near]
            dst[edge] = w_self * src[edge] + w_other * src[edge]
        a = np.moveaxis(out, 0, axis)
    return np.ascontiguousarray(a)


def _upsample_variance(factor: int) -> float:
    """Variance kept when white noise is upsampled by :func:`upsample` (both axes)."""
    per_axis = np.mean([(1 - abs(o)) ** 2 + o**2 for o in ((np.arange(factor) + 0.5) / factor - 0.5)])
    return float(per_axis**2)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], sigma_mm: float, spacing) -> np.ndarray:
    """Gaussian random field with unit std and correlation length ``sigma_mm``; float32 ``shape``.

    Drawn on a grid coarse enough for ``sigma_mm``, filtered, and upsampled bilinearly (:func:`upsample`).
    """
    px, pz = spacing[0], spacing[2]
    step = max(1, int(sigma_mm / (2 * px)))
    coarse = (-(-shape[0] // step), -(-shape[1] // step), shape[2])
    noise = rng.standard_normal(coarse, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, (sigma_mm / (step * px),) * 2 + (sigma_mm / pz,), mode="wrap")
    out = upsample(noise, step)[: shape[0], : shape[1]]
    return ((out - out.mean()) / (out.std() + 1e-6)).astype(np.float32)


def splat(points, radii, to_index, shape, pixel: float, dz: float, classes=(0.8, 1.6, 3.0)) -> np.ndarray:
    """Volume fraction per voxel (``pixel`` x ``pixel`` x ``dz`` mm) of tubes along ``points``: each
    point deposits its share of ``pi r^2 dl`` (``dl`` = half a pixel) and is spread in-plane by a
    Gaussian of the same area (so thin vessels get partial volume); one filter per radius class."""
    if not len(points):
        return np.zeros(shape, np.float32)
    idx = to_index(points)
    inside = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    idx, radii = idx[inside], radii[inside]
    flat = np.ravel_multi_index(idx.T, shape)
    step = pixel / 2
    fraction = np.zeros(shape, np.float32)
    edges = (0.0, *classes, np.inf)
    for lo, hi in itertools.pairwise(edges):
        sel = (radii >= lo) & (radii < hi)
        if not sel.any():
            continue
        volume = np.pi * radii[sel] ** 2 * step / (pixel**2 * dz)
        grid = np.bincount(flat[sel], volume, minlength=fraction.size).reshape(shape).astype(np.float32)
        sigma = max(np.median(radii[sel]) / np.sqrt(2) / pixel, 0.5)
        fraction += ndimage.gaussian_filter(grid, (sigma, sigma, 0), truncate=3.0)
    return np.clip(fraction, 0.0, 1.0)


def blob_field(shape, idx: np.ndarray, weights: np.ndarray, sigma_mm: float, spacing) -> np.ndarray:
    """Sum of Gaussian blobs (peak ``weights``, std ``sigma_mm``) at voxel indices ``idx`` (N, 3),
    built on a grid coarse enough for ``sigma_mm`` and upsampled; float32 ``shape``."""
    px, pz = spacing[0], spacing[2]
    step = max(1, int(sigma_mm / (2 * px)))
    coarse = (-(-shape[0] // step), -(-shape[1] // step), shape[2])
    grid = np.zeros(coarse, np.float32)
    np.add.at(grid, (idx[:, 0] // step, idx[:, 1] // step, idx[:, 2]), weights.astype(np.float32))
    sig = (sigma_mm / (step * px),) * 2 + (sigma_mm / pz,)
    grid = ndimage.gaussian_filter(grid, sig, mode="constant", truncate=3.0)
    grid *= np.float32((2 * np.pi) ** 1.5 * np.prod(sig))
    return upsample(grid, step)[: shape[0], : shape[1]]
