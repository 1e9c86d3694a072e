"""How real is the phantom? ``python -m pipeline realism COHORT REAL_DIR --out DIR [--docs DOCS]``.

Measures the same figures, with the same lung mask (:func:`pipeline.transforms.lung.lung_mask`), on the
studies of a synthetic cohort (grouped by category, ``CT-0`` ... ``CT-4``) and on real chest CTs found
under ``REAL_DIR`` (NIfTI files and DICOM series folders; grouped by path: ``.../covid_positive/...``
is "RICORD positive", ``.../covid_negative/...`` "RICORD negative", everything else "real normal").
A real scan that the chain's chest check refuses (:func:`pipeline.transforms.plausibility.chest_ct_problem`: an
abdomen) goes to its own group, "real non-chest", and is logged, so that it does not pollute "real normal".

Figures of one scan (volume loaded with MONAI ``LoadImage`` and ``Orientation("RAS")``):

- ``lung_volume_ml``: lung mask volume (:func:`pipeline.transforms.lung.lung_volume_ml`).
- ``lung_hu_median``, ``aerated_pct`` (-950..-700 HU), ``haa_pct`` (high-attenuation area, -700..-100 HU):
  the lung HU histogram (also kept whole, 10 HU bins, for the figure).
- On an in-plane grid of :data:`ANALYSIS_PIXEL_MM` (area-averaged, so every scan is compared at the
  same pixel size) and inside the lung mask with its holes filled and its wall (:data:`WALL_MM`) eroded,
  slice by slice: ``dense_pct``, the share of the lung above -500 HU in structures thicker than
  ``2 * THICK_MM`` (kept by a binary opening with a disk: lesions, consolidation, hilar vessels);
  ``vessel_pct``, the share above -500 HU in thinner structures (the binary white top-hat: vessels);
  ``calibre_median_mm`` and ``calibre_p90_mm``: the vessels' calibre at their centrelines (local maxima of
  the in-plane distance transform, calibre ``(2 d - 1) * pixel``).
- Parenchymal texture at the native pixel size: the radially averaged power spectrum (HU^2 mm^2) of
  ``PATCH_MM`` square axial patches lying wholly inside the lung with at most ``PATCH_MAX_DENSE`` of their
  pixels above -600 HU, clipped to the lung window -1024..-600 HU, Hann-windowed; summarised as the RMS
  HU in octave bands of spatial frequency (``tex_rms_*``, cycles/mm, so different pixel sizes compare)
  and the log-log slope over :data:`SLOPE_BAND` (``psd_slope``; 0 for white noise, about -3 for smooth
  fields).
- Noise: ``noise_hu``, the global noise level (the mode of the 5x5-pixel local SD over soft tissue and
  fat, -200..200 HU, inside the body, at the native pixel size; Christianson et al., Radiology 2015);
  ``noise_hu_1p5mm``, the same on the analysis grid; ``noise_air_hu``, the median local SD in air outside
  the body (constant padding left out; scanners that clip air at -1024 HU read low).
- Shape: ``body_ap_lat`` (anterior-posterior over lateral body extent, median over the middle half of the
  lung slices; not measured where the body touches the edge of the field of view), ``lung_height_mm``
  (first to last slice with >= 5 cm^2 of lung), ``lung_lr_ratio`` (left over right lung volume, split at
  the sagittal plane where the lung mask is thinnest between the two lungs). ``lung_truncated`` marks a
  scan whose lungs run off the top or bottom slice: its volume and height are lower bounds.

Outputs in ``DIR``: ``realism.json`` (settings, per-group summaries and per-scan records with the
histograms and spectra), ``realism.csv`` (one row per group: median, min and max of every figure),
``realism_scans.csv`` (one row per scan), ``realism.md`` (the table, figures by groups) and
``realism.png`` (distributions side by side, the lung HU histograms and the spectra overlaid).

The lesion section (:mod:`pipeline.synth.realism_lesions`, whose docstring defines its figures) measures the
cohort's lesion masks of CT-1..CT-4 (at most ``--lesion-max-per-category`` each) beside the real lesion
references under ``REAL_DIR`` (:data:`REFERENCE_DIRS`, which the section above skips, and the RICORD slabs):
``realism_lesions.json``, ``realism_lesions.md`` and ``realism_lesions.png``.

With ``--docs DOCS`` both tables also go to ``DOCS/realism.md`` (with the command and the data credits) and
the figures to ``DOCS/images/realism.png`` and ``DOCS/images/realism_lesions.png``. Every file is written
atomically.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import logging
import math
import os
import shlex
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.utils.atomic import atomic_write_bytes, atomic_write_text
from pipeline.utils.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "FIGURES",
    "add_arguments",
    "find_real_scans",
    "find_synthetic_scans",
    "group_summary",
    "load_ras",
    "measure",
    "noise_level",
    "power_spectrum",
    "run",
]

#: In-plane pixel (mm) of the grid on which vessels, density and body shape are measured.
ANALYSIS_PIXEL_MM = 1.5
#: In-plane pixel (mm) of the grid on which vessels and dense structures are measured, and how many
#: lung slices (evenly spread) it looks at.
VESSEL_PIXEL_MM = 0.75
VESSEL_SLICES = 24
#: Slices (evenly spread) on which noise is measured.
NOISE_SLICES = 24
#: Lung slices (evenly spread) from which texture patches are drawn.
TEXTURE_SLICES = 32
#: Lung wall eroded before the vessel and density steps (mm).
WALL_MM = 3.0
#: Radius (mm) of the disk whose opening keeps "thick" dense structures; thinner ones are vessels.
THICK_MM = 4.5
DENSE_HU = -500.0
HIST_EDGES = np.arange(-1100.0, 101.0, 10.0)
AERATED = (-950.0, -700.0)
HAA = (-700.0, -100.0)
PATCH_MM = 32.0
PATCH_MAX_DENSE = 0.05
PATCH_WINDOW = (-1024.0, -600.0)
MAX_PATCHES = 400
#: Octave bands of spatial frequency (cycles/mm): wavelengths 12.5-25, 6.25-12.5 and 3.1-6.25 mm.
TEXTURE_BANDS = ((0.04, 0.08), (0.08, 0.16), (0.16, 0.32))
SLOPE_BAND = (0.04, 0.32)
#: Frequencies (cycles/mm) at which each scan's spectrum is kept for the figure.
PSD_FREQS = np.geomspace(0.035, 0.33, 16)
NOISE_WINDOW = 5
NOISE_TISSUE_HU = (-200.0, 200.0)
CALIBRE_EDGES = np.arange(0.0, 12.01, 1.5)
MIN_SLICE_LUNG_MM2 = 500.0
#: Radius (mm) of the opening that parts the body from the table before the body is measured.
TABLE_MM = 6.0

REAL_NORMAL, RICORD_NEG, RICORD_POS, REAL_NONCHEST = (
    "real normal",
    "RICORD negative",
    "RICORD positive",
    "real non-chest",
)
REAL_GROUPS = (REAL_NORMAL, RICORD_NEG, RICORD_POS, REAL_NONCHEST)
#: Folders directly under ``REAL_DIR`` that hold lesion references (masks, single slices), not whole scans:
#: the normal-lung section skips them, the lesion section (:mod:`pipeline.synth.realism_lesions`) reads them.
REFERENCE_DIRS = ("mosmed_ct1_masks", "covid_slices")

#: The figures summarised per group: key -> (label, unit/format hint).
FIGURES: dict[str, str] = {
    "lung_volume_ml": "lung volume (mL)",
    "lung_hu_median": "lung HU median",
    "aerated_pct": "well aerated -950..-700 HU (% lung)",
    "haa_pct": "high attenuation -700..-100 HU (% lung)",
    "dense_pct": "thick dense > -500 HU (% lung)",
    "vessel_pct": "vessels > -500 HU, thin (% lung)",
    "calibre_median_mm": "vessel calibre median (mm)",
    "calibre_p90_mm": "vessel calibre p90 (mm)",
    "tex_rms_12_25mm": "texture RMS, 12.5-25 mm waves (HU)",
    "tex_rms_6_12mm": "texture RMS, 6-12.5 mm waves (HU)",
    "tex_rms_3_6mm": "texture RMS, 3-6 mm waves (HU)",
    "psd_slope": "parenchyma PSD log-log slope",
    "noise_hu": "noise, soft tissue (HU, native pixel)",
    "noise_hu_1p5mm": "noise, soft tissue (HU, 1.5 mm pixel)",
    "noise_air_hu": "noise, air outside body (HU)",
    "body_ap_lat": "body AP / lateral",
    "lung_height_mm": "lung height (mm)",
    "lung_lr_ratio": "left / right lung volume",
}
_BAND_KEYS = ("tex_rms_12_25mm", "tex_rms_6_12mm", "tex_rms_3_6mm")


@dataclass(frozen=True)
class Scan:
    """One volume to measure: its file or DICOM folder, its group, a short name and its lesion mask, if any."""

    path: str
    group: str
    name: str
    synthetic: bool
    mask: str | None = None


# ----------------------------------------------------------------------------------------- discovery


def _real_group(path: Path, root: Path) -> str:
    parts = [p.lower() for p in path.relative_to(root).parts]
    if "covid_positive" in parts:
        return RICORD_POS
    if "covid_negative" in parts:
        return RICORD_NEG
    return REAL_NORMAL


def find_real_scans(real_dir: str | os.PathLike) -> list[Scan]:
    """Every NIfTI file and DICOM series folder under ``real_dir``, grouped by path, sorted; the lesion
    references (:data:`REFERENCE_DIRS`) left out.

    Raises:
        InputError: ``real_dir`` is missing, not a folder, or holds no image.
    """
    from pipeline.data.imagecheck import is_dicom_file, is_nifti

    root = Path(real_dir)
    if not root.is_dir():
        raise InputError(root, "real-scan folder not found" if not root.exists() else "not a folder")
    scans = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here == root and d in REFERENCE_DIRS))
        names = sorted(f for f in files if not f.startswith("."))
        if any(f.lower().endswith(".dcm") or is_dicom_file(here / f) for f in names if not is_nifti(here / f)):
            scans.append(Scan(str(here), _real_group(here, root), here.relative_to(root).as_posix(), False))
        scans.extend(
            Scan(str(here / f), _real_group(here / f, root), (here / f).relative_to(root).as_posix(), False)
            for f in names
            if is_nifti(here / f)
        )
    if not scans:
        raise InputError(root, "no NIfTI files or DICOM series folders found")
    return scans


def find_synthetic_scans(
    cohort: str | os.PathLike,
    max_per_category: int | None = None,
    categories: Sequence[str] | None = None,
    with_mask: bool = False,
) -> list[Scan]:
    """The studies of a cohort (any layout :func:`pipeline.data.cohort.discover` reads), at most
    ``max_per_category`` per category (the first by name); studies without a category form "synthetic".
    ``categories`` keeps only those; ``with_mask`` only studies with a lesion mask."""
    from pipeline.data.cohort import discover

    studies = discover(cohort)
    counts: dict[str, int] = {}
    scans = []
    for s in sorted(studies, key=lambda s: (s.category or "", s.study_id)):
        group = s.category or "synthetic"
        if (categories is not None and group not in categories) or (with_mask and not s.mask):
            continue
        if max_per_category is not None and counts.get(group, 0) >= max_per_category:
            continue
        counts[group] = counts.get(group, 0) + 1
        scans.append(Scan(str(s.image), group, s.study_id, True, s.mask))
    return scans


def load_ras(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """An (X, Y, Z) float32 HU volume in RAS orientation and its voxel spacing in mm.

    Raises:
        InputError: the file or DICOM folder cannot be read as a 3D volume.
    """
    from monai.transforms import LoadImage, Orientation

    path = Path(path)
    if not path.exists():
        raise InputError(path, "image not found")
    try:
        image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
        image = Orientation(axcodes="RAS")(image)
    except Exception as err:
        raise InputError(path, f"cannot be read as a CT volume ({type(err).__name__}: {err})") from err
    if image.ndim != 4 or image.shape[0] != 1 or min(image.shape[1:]) < 2:
        raise InputError(path, f"not a single-channel 3D volume (shape {tuple(image.shape)})")
    spacing = tuple(float(s) for s in np.asarray(image.pixdim, dtype=float)[:3])
    volume = np.asarray(image[0].numpy(), dtype=np.float32)
    if not np.isfinite(volume).all():
        raise InputError(path, "holds NaN or infinite values")
    return volume, spacing  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------- measures


def _lung_module():
    from pipeline.transforms import lung

    return lung


def _inplane_resample(volume: np.ndarray, spacing: Sequence[float], pixel: float) -> tuple[np.ndarray, tuple]:
    """Area-average (or linearly interpolate, when upsampling) every axial slice to ``pixel`` mm."""
    import torch
    import torch.nn.functional as F

    size = [max(2, round(volume.shape[i] * spacing[i] / pixel)) for i in (0, 1)]
    if size == list(volume.shape[:2]):
        return volume.astype(np.float32, copy=False), (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, 2, 0), dtype=np.float32))[:, None]
    down = all(size[i] <= volume.shape[i] for i in (0, 1))
    out = F.interpolate(t, size=size, mode="area") if down else F.interpolate(t, size=size, mode="bilinear")
    new_spacing = (volume.shape[0] * spacing[0] / size[0], volume.shape[1] * spacing[1] / size[1], float(spacing[2]))
    return np.moveaxis(out[:, 0].numpy(), 0, 2), new_spacing


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[2]):
        out[..., k] = ndimage.binary_fill_holes(mask[..., k])
    return out


def _local_sd(volume: np.ndarray, size: int = NOISE_WINDOW) -> np.ndarray:
    v = volume.astype(np.float64, copy=False)
    mean = ndimage.uniform_filter(v, size=(size, size, 1))
    sq = ndimage.uniform_filter(v * v, size=(size, size, 1))
    return np.sqrt(np.clip(sq - mean * mean, 0.0, None) * (size * size) / (size * size - 1))


def _mode(values: np.ndarray, bin_hu: float = 0.5) -> float:
    """Mode of ``values`` from a histogram smoothed over 3 bins."""
    if values.size < 50:
        return float("nan")
    top = float(np.percentile(values, 99)) + bin_hu
    counts, edges = np.histogram(values, bins=np.arange(0.0, top + bin_hu, bin_hu))
    counts = ndimage.uniform_filter1d(counts.astype(float), 3)
    k = int(counts.argmax())
    return float((edges[k] + edges[k + 1]) / 2)


def _spread(n: int, k: int) -> np.ndarray:
    """At most ``k`` indices spread evenly over ``range(n)``."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def noise_level(volume: np.ndarray, body: np.ndarray | None = None, exclude: np.ndarray | None = None) -> float:
    """Global noise level of an (X, Y, Z) HU volume: the mode of the 5x5 in-plane local SD over voxels
    in -200..200 HU (eroded by one pixel), inside ``body`` (default: everywhere) and outside ``exclude``."""
    tissue = (volume >= NOISE_TISSUE_HU[0]) & (volume <= NOISE_TISSUE_HU[1])
    tissue = ndimage.binary_erosion(tissue, np.ones((3, 3, 1), bool))
    if body is not None:
        tissue &= body
    if exclude is not None:
        tissue &= ~exclude
    return _mode(_local_sd(volume)[tissue])


def _air_noise(volume: np.ndarray, body: np.ndarray, pixel_mm: float) -> float:
    """Median 5x5 local SD in air (-1500..-800 HU) at least 10 mm from the body, constant padding left out."""
    v = volume
    near = _edt_2d(~body, pixel_mm) <= 10.0
    air = (v > -1500) & (v < -800) & ~near
    air = ndimage.binary_erosion(air, np.ones((NOISE_WINDOW, NOISE_WINDOW, 1), bool))
    sd = _local_sd(v)[air]
    sd = sd[sd > 0.5]  # constant padding or a clipped, noiseless background
    return float(np.median(sd)) if sd.size >= 50 else float("nan")


def power_spectrum(patches: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectral density (HU^2 mm^2) of square patches (P, N, N).

    Each patch loses its mean and is Hann-windowed; the spectrum is normalised so that white noise of SD
    ``s`` reads ``s^2 * pixel^2`` at every frequency and integrating it over the plane gives the variance.
    Returns (frequencies in cycles/mm, PSD) over radial bins one frequency step wide, zero frequency left out.
    """
    p = np.asarray(patches, dtype=np.float64)
    n = p.shape[-1]
    w = np.outer(np.hanning(n + 2)[1:-1], np.hanning(n + 2)[1:-1])
    p = (p - p.mean(axis=(1, 2), keepdims=True)) * w
    spec = np.abs(np.fft.fft2(p)) ** 2 * pixel_mm**2 / (w**2).sum()
    spec = spec.mean(axis=0)
    f = np.fft.fftfreq(n, d=pixel_mm)
    radius = np.hypot(f[:, None], f[None, :])
    df = 1.0 / (n * pixel_mm)
    ring = np.rint(radius / df).astype(int)
    nbins = n // 2 + 1
    sums = np.bincount(ring.ravel(), spec.ravel(), minlength=nbins)[:nbins]
    counts = np.bincount(ring.ravel(), minlength=nbins)[:nbins]
    freqs = np.arange(nbins) * df
    good = counts > 0
    good[0] = False
    return freqs[good], sums[good] / counts[good]


def band_rms(freqs: np.ndarray, psd: np.ndarray, band: tuple[float, float], pixel_mm: float, n: int) -> float:
    """RMS (HU) of the part of the field within ``band`` (cycles/mm): sqrt of the PSD integrated over the annulus."""
    sel = (freqs >= band[0]) & (freqs < band[1])
    if not sel.any() or band[1] > 0.5 / pixel_mm + 1e-9:
        return float("nan")
    # annulus area of each radial bin: 2 pi f df
    df = 1.0 / (n * pixel_mm)
    return float(math.sqrt(np.sum(psd[sel] * 2 * math.pi * freqs[sel] * df)))


def _psd_slope(freqs: np.ndarray, psd: np.ndarray, fmax: float = np.inf) -> float:
    """Least-squares slope of log10 PSD on log10 frequency over :data:`SLOPE_BAND`, up to ``fmax``."""
    sel = (freqs >= SLOPE_BAND[0]) & (freqs <= min(SLOPE_BAND[1], fmax)) & (psd > 0)
    if sel.sum() < 3:
        return float("nan")
    return float(np.polyfit(np.log10(freqs[sel]), np.log10(psd[sel]), 1)[0])


def lung_patches(volume: np.ndarray, lung: np.ndarray, pixel_mm: float, seed: int = 0) -> np.ndarray:
    """Square axial patches of about :data:`PATCH_MM` wholly inside ``lung`` with few dense pixels,
    clipped to the lung window; at most :data:`MAX_PATCHES`, picked at random but reproducibly."""
    n = max(8, round(PATCH_MM / pixel_mm))
    step = max(1, n // 2)
    nx, ny, nz = volume.shape
    if nx < n or ny < n:
        return np.zeros((0, n, n), np.float32)
    inside = ndimage.uniform_filter(lung.astype(np.float32), size=(n, n, 1), mode="constant")
    dense = ndimage.uniform_filter((volume > PATCH_WINDOW[1]).astype(np.float32), size=(n, n, 1), mode="constant")
    h = n // 2
    cx = np.arange(h, nx - (n - h) + 1, step)
    cy = np.arange(h, ny - (n - h) + 1, step)
    cands = []
    for k in range(nz):
        ok = (inside[np.ix_(cx, cy, [k])][..., 0] > 0.999) & (dense[np.ix_(cx, cy, [k])][..., 0] <= PATCH_MAX_DENSE)
        for i, j in zip(*np.nonzero(ok), strict=True):
            cands.append((cx[i] - h, cy[j] - h, k))
    if not cands:
        return np.zeros((0, n, n), np.float32)
    rng = np.random.default_rng(seed)
    if len(cands) > MAX_PATCHES:
        cands = [cands[i] for i in sorted(rng.choice(len(cands), MAX_PATCHES, replace=False))]
    out = np.stack([volume[x : x + n, y : y + n, z] for x, y, z in cands])
    return np.clip(out, *PATCH_WINDOW).astype(np.float32)


def texture_figures(volume: np.ndarray, lung: np.ndarray, spacing: Sequence[float]) -> dict:
    """Texture bands, spectral slope and the spectrum at :data:`PSD_FREQS` of the lung parenchyma."""
    pixel = float(np.sqrt(spacing[0] * spacing[1]))
    zs = np.nonzero(lung.any(axis=(0, 1)))[0]
    zs = zs[_spread(zs.size, TEXTURE_SLICES)] if zs.size else zs
    patches = lung_patches(volume[..., zs], lung[..., zs], pixel)
    out: dict = {"n_patches": len(patches), "patch_px": int(patches.shape[-1])}
    if len(patches) < 4:
        out.update({k: float("nan") for k in (*_BAND_KEYS, "psd_slope")})
        out["psd"] = [None] * len(PSD_FREQS)
        return out
    freqs, psd = power_spectrum(patches, pixel)
    for key, band in zip(_BAND_KEYS, TEXTURE_BANDS, strict=True):
        out[key] = band_rms(freqs, psd, band, pixel, patches.shape[-1])
    out["psd_slope"] = _psd_slope(freqs, psd, fmax=0.9 * 0.5 / pixel)
    logpsd = np.interp(np.log(PSD_FREQS), np.log(freqs), np.log10(psd), left=np.nan, right=np.nan)
    out["psd"] = [None if not np.isfinite(v) else round(float(v), 4) for v in logpsd]
    return out


def _split_lr(lung: np.ndarray) -> float:
    """Left over right lung volume of a RAS mask (axis 0 runs towards the patient's right)."""
    profile = lung.sum(axis=(1, 2)).astype(float)
    if np.count_nonzero(profile) < 6:
        return float("nan")
    cum = np.cumsum(profile) / profile.sum()
    a, b = int(np.searchsorted(cum, 0.005)), int(np.searchsorted(cum, 0.995))  # stray voxels do not count
    lo, hi = a + (b - a) // 3, a + 2 * (b - a) // 3 + 1
    cut = lo + int(np.argmin(ndimage.uniform_filter1d(profile[lo:hi], 3)))
    left, right = profile[:cut].sum(), profile[cut:].sum()
    return float(left / right) if right > 0 else float("nan")


def _edt_2d(mask: np.ndarray, sampling: float = 1.0) -> np.ndarray:
    """In-plane Euclidean distance transform of every axial slice (distance to the nearest False pixel)."""
    out = np.zeros(mask.shape, np.float32)
    for k in range(mask.shape[2]):
        if mask[..., k].any():
            out[..., k] = ndimage.distance_transform_edt(mask[..., k], sampling=sampling)
    return out


def _opening_2d(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary opening of every axial slice by a disk of ``radius_px``, through distance transforms."""
    core = _edt_2d(mask) > radius_px
    if not core.any():
        return np.zeros_like(mask)
    return (_edt_2d(~core) <= radius_px) & mask


def _torso(body: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The body without the table, sheets and cables: opened by a :data:`TABLE_MM` disk, the largest
    component of each slice."""
    opened = _opening_2d(body, TABLE_MM / pixel_mm)
    out = np.zeros_like(opened)
    for k in range(opened.shape[2]):
        labels, n = ndimage.label(opened[..., k])
        if n:
            out[..., k] = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return out


def _vessel_calibre(vessels: np.ndarray) -> np.ndarray:
    """Calibre (pixels) at every vessel pixel: that of its nearest centreline pixel, where the centreline is
    the local maxima of the in-plane distance transform ``d`` and the calibre there is ``2 d - 1``."""
    out = []
    for k in range(vessels.shape[2]):
        ves = vessels[..., k]
        if not ves.any():
            continue
        edt = ndimage.distance_transform_edt(ves)
        centre = ves & (edt >= ndimage.maximum_filter(edt, size=3))
        _, (ix, iy) = ndimage.distance_transform_edt(~centre, return_indices=True)
        out.append(2.0 * edt[ix[ves], iy[ves]] - 1.0)
    return np.concatenate(out)


def vessel_figures(volume: np.ndarray, lung: np.ndarray, spacing: Sequence[float]) -> dict:
    """``dense_pct``, ``vessel_pct``, calibre median/p90 and histogram on a :data:`VESSEL_PIXEL_MM` grid."""
    nan = float("nan")
    out = {"dense_pct": nan, "vessel_pct": nan, "calibre_median_mm": nan, "calibre_p90_mm": nan, "calibre_hist": None}
    zs = np.nonzero(lung.any(axis=(0, 1)))[0]
    if zs.size == 0:
        return out
    zs = zs[np.unique(np.linspace(0, zs.size - 1, min(VESSEL_SLICES, zs.size)).round().astype(int))]
    xs, ys = np.nonzero(lung.any(axis=(1, 2)))[0], np.nonzero(lung.any(axis=(0, 2)))[0]
    m = 4
    box = (slice(max(0, xs[0] - m), xs[-1] + m + 1), slice(max(0, ys[0] - m), ys[-1] + m + 1), zs)
    px = VESSEL_PIXEL_MM
    v, _ = _inplane_resample(volume[box], spacing, px)
    lg, _ = _inplane_resample(lung[box].astype(np.float32), spacing, px)
    inner = _edt_2d(_fill_slices(lg >= 0.5), px) > WALL_MM
    n_inner = int(inner.sum())
    if n_inner == 0:
        return out
    cand = inner & (v > DENSE_HU)
    thick = _opening_2d(cand, THICK_MM / px)
    vessels = cand & ~thick
    out["dense_pct"] = 100.0 * thick.sum() / n_inner
    out["vessel_pct"] = 100.0 * vessels.sum() / n_inner
    if vessels.any():
        calibre = _vessel_calibre(vessels) * px
        out["calibre_median_mm"] = float(np.median(calibre))
        out["calibre_p90_mm"] = float(np.percentile(calibre, 90))
        hist, _ = np.histogram(np.clip(calibre, 0, CALIBRE_EDGES[-1] - 1e-3), bins=CALIBRE_EDGES)
        out["calibre_hist"] = [round(float(h), 6) for h in hist / hist.sum()]
    return out


def measure(volume: np.ndarray, spacing: Sequence[float], lung: np.ndarray | None = None) -> dict:
    """Every figure of one (X, Y, Z) RAS HU volume with voxel ``spacing`` (mm); see the module docstring.

    ``lung`` defaults to :func:`pipeline.transforms.lung.lung_mask` of the volume. Returns a dict of the
    :data:`FIGURES` (NaN where not measurable) plus ``lung_hist`` (density per 10 HU bin of
    :data:`HIST_EDGES`), ``calibre_hist``, ``psd`` (log10 PSD at :data:`PSD_FREQS`) and bookkeeping.
    """
    from pipeline.transforms.plausibility import AERATED_MAX_HU, body_mask

    spacing = tuple(float(s) for s in spacing)
    lungmod = _lung_module()
    rec: dict = {"shape": list(volume.shape), "spacing": [round(s, 4) for s in spacing]}
    if lung is None:
        try:
            lung = np.asarray(lungmod.lung_mask(volume, spacing), dtype=bool)
        except Exception as err:  # one scan the mask cannot handle leaves its figures NaN
            logger.warning("lung mask failed (%s: %s); lung figures left out", type(err).__name__, err)
            rec["lung_mask_error"] = f"{type(err).__name__}: {err}"
            lung = np.zeros(volume.shape, bool)
    nan = float("nan")
    rec["lung_volume_ml"] = float(lungmod.lung_volume_ml(lung, spacing))
    values = volume[lung]
    if values.size:
        rec["lung_hu_median"] = float(np.median(values))
        rec["aerated_pct"] = 100.0 * float(np.mean((values >= AERATED[0]) & (values < AERATED[1])))
        rec["haa_pct"] = 100.0 * float(np.mean((values >= HAA[0]) & (values < HAA[1])))
        hist, _ = np.histogram(np.maximum(values, HIST_EDGES[0]), bins=HIST_EDGES)  # above +100 HU: left out
        rec["lung_hist"] = [round(float(h), 6) for h in hist / values.size]
    else:
        rec.update(lung_hu_median=nan, aerated_pct=nan, haa_pct=nan, lung_hist=None)

    # native-resolution steps: texture and noise
    rec.update(texture_figures(volume, lung, spacing))
    idx = _spread(volume.shape[2], NOISE_SLICES)
    sub = np.ascontiguousarray(volume[..., idx])
    body_sub = body_mask(sub)
    rec["noise_hu"] = noise_level(sub, body_sub, lung[..., idx])
    rec["noise_air_hu"] = _air_noise(sub, body_sub, float(np.sqrt(spacing[0] * spacing[1])))

    # vessels and density: a finer common grid, on at most VESSEL_SLICES slices, cropped to the lungs
    rec.update(vessel_figures(volume, lung, spacing))

    # body and lung shape, noise at the analysis pixel
    px = ANALYSIS_PIXEL_MM
    small, sp = _inplane_resample(volume, spacing, px)
    lung_s, _ = _inplane_resample(lung.astype(np.float32), spacing, px)
    lung_s = lung_s >= 0.5
    body = body_mask(small)
    rec["aerated_body_fraction"] = float((body & (small < AERATED_MAX_HU)).sum() / max(1, body.sum()))
    idx = _spread(small.shape[2], NOISE_SLICES)
    rec["noise_hu_1p5mm"] = noise_level(small[..., idx], body[..., idx], lung_s[..., idx])

    # shape
    area = lung_s.sum(axis=(0, 1)) * px * px
    zs = np.nonzero(area >= MIN_SLICE_LUNG_MM2)[0]
    rec["lung_truncated"] = bool(zs.size and (area[0] >= MIN_SLICE_LUNG_MM2 or area[-1] >= MIN_SLICE_LUNG_MM2))
    if zs.size:
        rec["lung_height_mm"] = float((zs[-1] - zs[0] + 1) * sp[2])
        mid = zs[0] + (zs[-1] - zs[0]) // 4, zs[-1] - (zs[-1] - zs[0]) // 4
        ratios, cropped = [], False
        torso = _torso(body[..., mid[0] : mid[1] + 1], px)
        for k in range(torso.shape[2]):
            b = torso[..., k]
            if not b.any():
                continue
            if b[0].any() or b[-1].any() or b[:, 0].any() or b[:, -1].any():
                cropped = True
                continue
            xs, ys = np.nonzero(b.any(axis=1))[0], np.nonzero(b.any(axis=0))[0]
            ratios.append((ys[-1] - ys[0] + 1) / (xs[-1] - xs[0] + 1))
        rec["body_cropped"] = cropped
        rec["body_ap_lat"] = float(np.median(ratios)) if ratios and not cropped else nan
        rec["lung_lr_ratio"] = _split_lr(lung_s)
    else:
        rec.update(lung_height_mm=nan, body_ap_lat=nan, lung_lr_ratio=nan, body_cropped=False)
    for k in FIGURES:
        rec[k] = float(rec[k]) if rec.get(k) is not None else nan
    return rec


# ----------------------------------------------------------------------------------------- summary


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]


def group_summary(records: Sequence[dict], groups: Sequence[str]) -> dict:
    """``{group: {"n": count, "figures": {key: {"median", "min", "max", "n"}}}}`` (``None`` where nothing is finite)."""
    out = {}
    for g in groups:
        recs = [r for r in records if r["group"] == g]
        figs = {}
        for key in FIGURES:
            a = _finite([r.get(key) for r in recs])
            figs[key] = {
                "median": float(np.median(a)) if a.size else None,
                "min": float(a.min()) if a.size else None,
                "max": float(a.max()) if a.size else None,
                "n": int(a.size),
            }
        out[g] = {"n": len(recs), "figures": figs}
    return out


def _fmt(v: float | None, key: str) -> str:
    if v is None:
        return "-"
    if key in ("body_ap_lat", "lung_lr_ratio", "psd_slope"):
        return f"{v:.2f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


#: Figures that a partial scan (a slab) does not measure: their reference is "real normal" alone.
WHOLE_SCAN_FIGURES = ("lung_volume_ml", "lung_height_mm", "lung_lr_ratio")


def verdicts(records: Sequence[dict], groups: Sequence[str]) -> tuple[str, dict[str, str]]:
    """Where the median of the normal synthetic group (``CT-0``, else the first synthetic one) falls against the
    range of the real non-COVID scans ("real normal" and "RICORD negative"; "real normal" alone for
    :data:`WHOLE_SCAN_FIGURES`): ``"within"``, ``"above (+x)"`` or ``"below (-x)"``, x the distance to the range,
    followed by the real scans' median (``"; real median y"``): a wide real range can hold a median far from
    the real ones."""
    synth = [g for g in groups if g not in REAL_GROUPS]
    if not synth:
        return "", {}
    target = "CT-0" if "CT-0" in synth else synth[0]
    out = {}
    for key in FIGURES:
        pool = (REAL_NORMAL,) if key in WHOLE_SCAN_FIGURES else (REAL_NORMAL, RICORD_NEG)
        ref = _finite([r[key] for r in records if r["group"] in pool])
        mine = _finite([r[key] for r in records if r["group"] == target])
        if not ref.size or not mine.size:
            out[key] = "-"
            continue
        m = float(np.median(mine))
        if m > ref.max():
            where = f"above (+{_fmt(m - ref.max(), key)})"
        elif m < ref.min():
            where = f"below (-{_fmt(ref.min() - m, key)})"
        else:
            where = "within"
        out[key] = f"{where}; real median {_fmt(float(np.median(ref)), key)}"
    return target, out


def markdown_table(summary: dict, groups: Sequence[str], verdict: tuple[str, dict[str, str]] | None = None) -> str:
    """Figures as rows, groups as columns; each cell ``median (min to max)``; optionally a last column of
    :func:`verdicts`."""
    target, marks = verdict if verdict and verdict[0] else ("", {})
    extra = [f"{target} median vs real range"] if target else []
    head = "| figure | " + " | ".join([*(f"{g} (n={summary[g]['n']})" for g in groups), *extra]) + " |"
    lines = [head, "|---|" + "---|" * (len(groups) + len(extra))]
    for key, label in FIGURES.items():
        cells = []
        for g in groups:
            s = summary[g]["figures"][key]
            if s["median"] is None:
                cells.append("-")
            elif s["n"] == 1 or s["min"] == s["max"]:
                cells.append(_fmt(s["median"], key))
            else:
                cells.append(f"{_fmt(s['median'], key)} ({_fmt(s['min'], key)} to {_fmt(s['max'], key)})")
        if target:
            cells.append(marks.get(key, "-"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary_csv(summary: dict, groups: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "n", *[f"{k}_{s}" for k in FIGURES for s in ("median", "min", "max")]])
    for g in groups:
        f = summary[g]["figures"]
        row = [g, summary[g]["n"]]
        for k in FIGURES:
            row += ["" if f[k][s] is None else f"{f[k][s]:.6g}" for s in ("median", "min", "max")]
        w.writerow(row)
    return buf.getvalue()


_SCAN_COLUMNS = ("group", "name", "path", "shape", "spacing", "lung_truncated", "body_cropped", "n_patches")


def _scans_csv(records: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*_SCAN_COLUMNS, *FIGURES])
    for r in records:
        row = ["x".join(map(str, r[c])) if isinstance(r.get(c), list) else r.get(c, "") for c in _SCAN_COLUMNS]
        row += ["" if not np.isfinite(r[k]) else f"{r[k]:.6g}" for k in FIGURES]
        w.writerow(row)
    return buf.getvalue()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ----------------------------------------------------------------------------------------- figure

_REAL_COLOURS = {REAL_NORMAL: "#1f77b4", RICORD_NEG: "#17becf", RICORD_POS: "#9467bd", REAL_NONCHEST: "#7f7f7f"}
_SYNTH_COLOURS = ["#2ca02c", "#bcbd22", "#ff7f0e", "#d62728", "#8c564b", "#e377c2"]


def _colours(groups: Sequence[str]) -> dict[str, str]:
    out, k = {}, 0
    for g in groups:
        if g in _REAL_COLOURS:
            out[g] = _REAL_COLOURS[g]
        else:
            out[g] = _SYNTH_COLOURS[k % len(_SYNTH_COLOURS)]
            k += 1
    return out


def _mean_curve(recs: Sequence[dict], key: str) -> np.ndarray | None:
    rows = [np.asarray([np.nan if v is None else v for v in r[key]], float) for r in recs if r.get(key) is not None]
    if not rows:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanmedian(np.stack(rows), axis=0)


def plot(records: Sequence[dict], groups: Sequence[str], title: str = "") -> bytes:
    """PNG bytes: a strip plot (dots per scan, bar at the median) per figure and group, real groups left of
    the dotted line; below, per group (median over its scans), the lung HU histograms, the vessel calibre
    distributions and the parenchymal spectra overlaid (real solid, synthetic dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = _colours(groups)
    keys = list(FIGURES)
    ncols = 6
    nrows = math.ceil(len(keys) / ncols)
    fig = plt.figure(figsize=(3.3 * ncols, 2.9 * nrows + 3.6))
    grid = fig.add_gridspec(nrows + 1, ncols, height_ratios=[1] * nrows + [1.3])
    rng = np.random.default_rng(0)
    n_real = sum(g in REAL_GROUPS for g in groups)
    for n, key in enumerate(keys):
        ax = fig.add_subplot(grid[n // ncols, n % ncols])
        for i, g in enumerate(groups):
            vals = _finite([r[key] for r in records if r["group"] == g])
            if vals.size:
                ax.scatter(i + rng.uniform(-0.18, 0.18, vals.size), vals, s=13, color=colours[g], alpha=0.85, lw=0)
                ax.hlines(np.median(vals), i - 0.32, i + 0.32, color="k", lw=1.1)
        if 0 < n_real < len(groups):
            ax.axvline(n_real - 0.5, color="k", ls=":", lw=0.8)
        ax.set_title(FIGURES[key], fontsize=8)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=50, ha="right", fontsize=6.5)
        ax.tick_params(axis="y", labelsize=6.5)
        ax.grid(axis="y", alpha=0.3)
    extra = [fig.add_subplot(grid[nrows, 2 * i : 2 * i + 2]) for i in range(3)]
    centres = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    for g in groups:
        if g == REAL_NONCHEST:  # its histogram is all bowel gas; it has its own row in the table
            continue
        recs = [r for r in records if r["group"] == g]
        style = "-" if g in REAL_GROUPS else "--"
        h = _mean_curve(recs, "lung_hist")
        if h is not None:
            extra[0].plot(centres, h / 10.0 * 100, style, color=colours[g], lw=1.3, label=f"{g} ({len(recs)})")
        c = _mean_curve(recs, "calibre_hist")
        if c is not None:
            extra[1].plot((CALIBRE_EDGES[:-1] + CALIBRE_EDGES[1:]) / 2, c * 100, style, color=colours[g], lw=1.3)
        p = _mean_curve(recs, "psd")
        if p is not None:
            extra[2].plot(PSD_FREQS, p, style, color=colours[g], lw=1.3)
    extra[0].set_title("lung HU histogram (median per group)", fontsize=9)
    extra[0].set_xlabel("HU", fontsize=8)
    extra[0].set_ylabel("% of lung voxels per HU", fontsize=8)
    extra[0].set_xlim(HIST_EDGES[0], HIST_EDGES[-1])
    extra[0].legend(fontsize=7, ncols=2)
    extra[1].set_title("vessel calibre (share of vessel voxels)", fontsize=9)
    extra[1].set_xlabel("calibre (mm)", fontsize=8)
    extra[1].set_ylabel("% of vessel voxels", fontsize=8)
    extra[2].set_title("parenchyma power spectrum (median per group)", fontsize=9)
    extra[2].set_xscale("log")
    extra[2].set_xticks([0.04, 0.08, 0.16, 0.32], ["0.04", "0.08", "0.16", "0.32"])
    extra[2].minorticks_off()
    extra[2].set_xlabel("spatial frequency (cycles/mm)", fontsize=8)
    extra[2].set_ylabel("log10 PSD (HU^2 mm^2)", fontsize=8)
    for ax in extra:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return png_bytes(fig, title, dpi=80)


def png_bytes(fig, title: str = "", dpi: int = 80) -> bytes:
    """A matplotlib figure, titled and laid out, as PNG bytes (no software stamp: same code, same bytes); closed."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- command


def _group_order(records: Sequence[dict]) -> list[str]:
    present = {r["group"] for r in records}
    real = [g for g in REAL_GROUPS if g in present]
    synth = sorted(present - set(REAL_GROUPS))
    return real + synth


def compare(
    scans: Sequence[Scan],
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Measure every scan; a real scan that is not a chest CT moves to "real non-chest" (logged)."""
    from pipeline.transforms.plausibility import chest_ct_problem

    records = []
    for scan in scans:
        t0 = time.perf_counter()
        volume, spacing = load_ras(scan.path)
        rec = measure(volume, spacing)
        group = scan.group
        problem = None if scan.synthetic else chest_ct_problem(volume, np.diag([*spacing, 1.0]))
        if problem is not None:
            logger.warning("%s: %s; reported as %r", scan.path, problem, REAL_NONCHEST)
            group = REAL_NONCHEST
        rec = {"group": group, "name": scan.name, "path": scan.path, "synthetic": scan.synthetic, **rec}
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        records.append(rec)
        if progress:
            progress(
                f"{group:16s} {scan.name}: lung {rec['lung_volume_ml']:.0f} mL, "
                f"median {rec['lung_hu_median']:.0f} HU ({rec['seconds']:.1f} s)"
            )
    return records


CREDITS = """Real references (third-party data, read from `../shared/realct`, never copied into the project):

- `dicom/Lung_Dx-A0001_chest_5mm`, `dicom/Lung_Dx-A0002_thorax_8mm_B40f`: TCIA Lung-PET-CT-Dx (CC BY 4.0);
  Li P. et al., A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis (Lung-PET-CT-Dx), The Cancer
  Imaging Archive, 2020, DOI 10.7937/TCIA.2020.NNC2-0461. Lung adenocarcinoma patients; their parenchyma is
  largely normal, so they stand in for "real normal".
- `nifti/chest_cta_crop.nii.gz` (also "real normal"; contrast CTA, cropped: no body shape) and
  `nifti/abdomen_ct.nii.gz` (not a chest: "real non-chest"): test fixtures of TotalSegmentator (Apache-2.0);
  Wasserthal J. et al., TotalSegmentator, Radiology: Artificial Intelligence 2023.
- `ricord_slabs/covid_positive|covid_negative/patient_N`: 30 mm slabs (10 x 3 mm) from MIDRC-RICORD-1A
  (COVID-19 positive) and MIDRC-RICORD-1B (negative; some with other disease), The Cancer Imaging Archive;
  Tsai E. et al., Radiology 2021, doi:10.1148/radiol.2021203957. Partial scans: their lung volume and
  height are those of the slab, and body shape is left out where the body touches the field of view.
"""


LESION_CREDITS = """- `mosmed_ct1_masks/`: the lesion masks of 50 MosMedData CT-1 studies (CC BY-NC-ND 3.0);
  Morozov S.P. et al., MosMedData: Chest CT Scans With COVID-19 Related Findings Dataset, medRxiv 2020,
  doi:10.1101/2020.05.20.20100362.
- `covid_slices/sbu/`: 14 slices of TCIA's COVID-19-NY-SBU (CC BY 4.0); Saltz J. et al., Stony Brook University
  COVID-19 Positive Cases, The Cancer Imaging Archive, 2021, doi:10.7937/TCIA.BBAG-2923.
- `covid_slices/medseg/`: the COVID-19 CT segmentation dataset of the Italian Society of Medical and
  Interventional Radiology (medicalsegmentation.com/covid19, 2020), as split by Fan D.-P. et al., Inf-Net,
  IEEE TMI 2020.
"""

DOC_GUIDE = """How to read it:

- "real normal" is the two Lung-PET-CT-Dx series and the TotalSegmentator CTA crop; "RICORD negative" and
  "RICORD positive" are 30 mm slabs, so their lung volume and height are those of the slab (the lungs run
  off the slab: `lung_truncated` in `realism_scans.csv`). Body shape is left out wherever the body touches
  the edge of the field of view (the CTA crop, some slabs).
- Vessels, dense structures and body shape are measured on a common in-plane grid (0.75 mm for vessels,
  1.5 mm for the body), texture bands in cycles/mm at each scan's own pixel size: a band above a scan's
  Nyquist frequency (pixels over 1.56 mm for the 3-6 mm band) reads `-`.
- Noise depends on pixel size and kernel: compare "noise, soft tissue (1.5 mm pixel)" across groups;
  scanners that clip air at -1024 HU read low in "noise, air".
- The last column places the CT-0 median against the range (and median) of the real non-COVID scans,
  "real normal" and "RICORD negative" (lung volume, height and left/right against "real normal" only).
  Three real normal scans make a narrow reference: read "within" as "not ruled out".
- The shared mask reaches the rib cage around the lungs, so at the apices and bases it holds some soft
  tissue (heart, liver dome): that part of the lung HU histogram above -100 HU, "thick dense" and the
  left/right ratio of the real scans carry it; a synthetic lung with flat bases carries less of it.
"""


def write_outputs(
    out_dir: Path, records: list[dict], meta: dict, docs: Path | None = None, lesions_md: str | None = None
) -> dict:
    """Write realism.json/.csv/_scans.csv/.md/.png into ``out_dir`` (and the docs pair); return the summary.
    ``lesions_md``, the lesion section (:func:`pipeline.synth.realism_lesions.write_lesion_outputs`), ends the
    docs page."""
    groups = _group_order(records)
    summary = group_summary(records, groups)
    verdict = verdicts(records, groups)
    table = markdown_table(summary, groups, verdict)
    png = plot(records, groups, title=f"realism: {meta.get('cohort', '')} vs {meta.get('real_dir', '')}")
    payload = {
        **meta,
        "figures": FIGURES,
        "groups": groups,
        "summary": summary,
        "synthetic_vs_real": {"group": verdict[0], "figures": verdict[1]},
        "scans": records,
        "hist_edges_hu": HIST_EDGES.tolist(),
        "calibre_edges_mm": CALIBRE_EDGES.tolist(),
        "psd_freqs": [round(float(f), 5) for f in PSD_FREQS],
    }
    atomic_write_text(out_dir / "realism.json", json.dumps(_jsonable(payload), indent=1, allow_nan=False))
    atomic_write_text(out_dir / "realism.csv", _summary_csv(summary, groups))
    atomic_write_text(out_dir / "realism_scans.csv", _scans_csv(records))
    md = f"# Realism: synthetic vs real chest CT\n\n{meta['note']}\n\nMedian (min to max) per group.\n\n{table}"
    atomic_write_text(out_dir / "realism.md", md)
    atomic_write_bytes(out_dir / "realism.png", png)
    if docs is not None:
        made = " && \\\n    ".join(c for c in (meta.get("synth_command"), meta["command"]) if c)
        took = ""
        if "minutes" in meta:
            took = f"The realism step took {meta['minutes']:.0f} min on {os.cpu_count()} CPU cores.\n\n"
        doc = (
            "# How real is the synthetic phantom?\n\n"
            f"Made on {meta['date']} (code at {meta.get('git', 'unknown')}) by one shell command, which also "
            f"regenerates this page and its figures:\n\n    {made}\n\n{took}"
            "`python -m pipeline realism` (`pipeline/synth/realism.py`, whose docstring defines every figure)\n"
            "measures the same figures on every scan, real or synthetic, inside the same lung mask\n"
            "(`pipeline.transforms.lung.lung_mask`). Each cell is the median (min to max) over the group's scans;\n"
            f"`-` where not measurable. {meta['note']}\n\n{DOC_GUIDE}\n{table}\n![realism](images/realism.png)\n\n"
            + (f"## Lesions: synthetic vs real COVID-19\n\n{lesions_md}\n" if lesions_md else "")
            + f"{CREDITS}{LESION_CREDITS if lesions_md else ''}"
        )
        atomic_write_text(docs / "realism.md", doc)
        atomic_write_bytes(docs / "images" / "realism.png", png)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline realism``."""
    parser.add_argument("cohort", help="synthetic cohort folder (MosMedData layout: studies/CT-N/*.nii.gz)")
    parser.add_argument("real_dir", help="folder of real CTs: NIfTI files and DICOM series folders, at any depth")
    parser.add_argument("--out", default="realism", help="output folder (default ./realism)")
    parser.add_argument("--max-per-category", type=int, default=10, help="synthetic studies per category (default 10)")
    parser.add_argument(
        "--lesion-max-per-category",
        type=int,
        default=20,
        help="synthetic studies per category CT-1..CT-4 in the lesion section (default 20)",
    )
    parser.add_argument(
        "--docs", metavar="DOCS_DIR", help="also write DOCS_DIR/realism.md and DOCS_DIR/images/realism.png"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-scan progress lines")


def _synth_command(cohort: Path) -> str | None:
    """The ``python -m pipeline synth`` command that made ``cohort``, from its marker file, if it has one."""
    from pipeline.synth.generate import MARKER

    try:
        settings = json.loads((cohort / MARKER).read_text(encoding="utf-8"))
        parts = [
            "python -m pipeline synth",
            shlex.quote(str(cohort)),
            f"--per-category {int(settings['per_category'])}",
            f"--categories {','.join(settings['categories'])}",
            f"--matrix {int(settings['matrix'])}",
            f"--seed {int(settings['seed'])}",
            f"--scanner {settings.get('scanner', 'mosmed')}",
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return " ".join(parts)


def _git_revision() -> str:
    """``git describe --always --dirty`` of the code, or ``"unknown"``."""
    import subprocess

    try:
        proc = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip() or "unknown"


def run(args: argparse.Namespace) -> int:
    """Run ``realism``: measure, summarise, write."""
    for opt in ("max_per_category", "lesion_max_per_category"):
        if getattr(args, opt) < 1:
            raise InputError(args.cohort, f"--{opt.replace('_', '-')} must be >= 1, got {getattr(args, opt)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    real = find_real_scans(args.real_dir)
    synth = find_synthetic_scans(args.cohort, args.max_per_category)
    say = None if args.quiet else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    records = compare([*real, *synth], progress=say)
    excluded = [r["name"] for r in records if r["group"] == REAL_NONCHEST]
    note = (
        f"{len(synth)} synthetic studies from `{args.cohort}` (at most {args.max_per_category} per category), "
        f"{len(real)} real scans from `{args.real_dir}`."
        + (f" Not chest CTs (own row, not in 'real normal'): {', '.join(excluded)}." if excluded else "")
    )
    command = (  # from the parsed options (not sys.argv, which is a test runner's own under tests)
        f"python -m pipeline realism {shlex.quote(str(args.cohort))} {shlex.quote(str(args.real_dir))} "
        f"--out {shlex.quote(str(args.out))} --max-per-category {args.max_per_category} "
        f"--lesion-max-per-category {args.lesion_max_per_category}"
        + (f" --docs {shlex.quote(str(args.docs))}" if args.docs else "")
        + (" --quiet" if args.quiet else "")
    )
    meta = {
        "date": datetime.date.today().isoformat(),
        "git": _git_revision(),
        "command": command,
        "synth_command": _synth_command(Path(args.cohort)),
        "cohort": str(args.cohort),
        "real_dir": str(args.real_dir),
        "note": note,
        "settings": {
            "analysis_pixel_mm": ANALYSIS_PIXEL_MM,
            "wall_mm": WALL_MM,
            "thick_mm": THICK_MM,
            "dense_hu": DENSE_HU,
            "patch_mm": PATCH_MM,
            "texture_bands": TEXTURE_BANDS,
        },
    }
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output path exists and is not a folder")
    from pipeline.synth import realism_lesions

    docs = Path(args.docs) if args.docs else None
    section = realism_lesions.lesion_section(args.cohort, args.real_dir, args.lesion_max_per_category, progress=say)
    meta["minutes"] = round((time.perf_counter() - t0) / 60.0, 1)
    lesions_md = realism_lesions.write_lesion_outputs(out, section, meta, docs)
    summary = write_outputs(out, records, meta, docs, lesions_md)
    if say:
        groups = _group_order(records)
        print(markdown_table(summary, groups, verdicts(records, groups)))
    if say:
        print(lesions_md)
    print(f"wrote {out / 'realism.json'}, realism.csv, realism_scans.csv, realism.md, realism.png, realism_lesions.*")
    if args.docs:
        print(f"wrote {Path(args.docs) / 'realism.md'} and {Path(args.docs) / 'images'}/realism(_lesions).png")
    return 0
