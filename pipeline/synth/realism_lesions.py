"""The lesion section of ``python -m pipeline realism``: synthetic lesions per category beside real COVID-19.

Real references, read in place under the realism command's ``REAL_DIR`` (``../shared/realct``, see its
SOURCES.md); each part is left out, and said so, where its folder is absent:

- ``mosmed_ct1_masks/``: the radiologists' lesion masks of 50 MosMedData CT-1 studies ("real CT-1"): the
  mask figures below, exactly as on the synthetic masks.
- ``covid_slices/medseg/``: 98 slices with ground-glass (1) and consolidation (2) masks ("MedSeg"): the
  consolidation share of the lesion area only (8-bit images, never HU; their pixel size is unknown, so
  no sizes).
- ``covid_slices/sbu/`` (single HU slices, "SBU") and ``ricord_slabs/covid_positive/`` (30 mm HU slabs,
  "RICORD positive"): lesion HU and texture inside the region that :func:`outline_lesions` draws; the same
  rule on the normal-lung section's "real normal" and "RICORD negative" scans ("control") shows what it
  outlines in lungs without COVID-19 (partial volume, dependent density, other disease).

Mask figures (:func:`mask_figures`; a mask in RAS, every volume in mL from the affine):

- ``total_ml``; ``n_pieces``, its :data:`CONNECTIVITY`-connected 3D pieces (6: face neighbours; this
  reproduces the issue's real CT-1 figures, 60 pieces (IQR 30-122); 26-connectivity gives 44 (18-73));
  ``largest_ml``, ``median_piece_ml`` and ``small_pieces_pct`` (pieces under 1 mL, % of pieces); every
  piece's volume is kept for the size distribution.
- Position, from the mask alone (the real masks come without their scans): ``outer_third_pct``, the
  share of lesion voxels in the outer third of the *lesion envelope*: each side of the field of view's
  sagittal mid-plane, the in-plane convex hull of that side's lesion voxels projected over all slices;
  a voxel's depth is its in-plane distance to the hull's edge over the hull's largest such distance, and
  the outer third is depth < 1/3 (lesions spread evenly over a disk give 5/9 = 56 %; peripheral foci more,
  central disease less). A proxy for "distance to the lung boundary": on the synthetic studies it is also
  measured with the envelope of the lung mask (:func:`pipeline.transforms.lung.lung_mask` of the image)
  instead (``outer_third_lung_pct``), so the reader sees how far the proxy is from the lung's own
  periphery. ``lower_pct``: share below the middle slice of the scan (z relative to the scan's range);
  ``posterior_pct``: share behind the field of view's coronal mid-plane.

HU figures (:func:`hu_figures`) of a lesion region: ``hu_p10``, ``hu_p50``, ``hu_p90``; ``local_sd_hu``,
the median 3x3-pixel local SD on a :data:`LESION_PIXEL_MM` grid over the windows wholly inside the region
(texture, at a pixel size common to every scan); ``consolidation_pct``, the share above
:data:`CONSOLIDATION_HU`; and the HU histogram. On synthetic studies they are measured in the exact
lesion mask and in the region the same outline rule draws on the synthetic image (``outlined``), which is
the one to compare with SBU and RICORD.

The outline rule (:func:`outline_lesions`), the same on every scan, no per-scan setting: inside
:func:`pipeline.transforms.lung.lung_mask` with its holes filled and its wall (:data:`realism.WALL_MM`)
eroded, slice by slice, the pixels in :data:`OUTLINE_HU` (ground glass; vessels, fat and consolidation
lie above) more than :data:`OUTLINE_SOLID_MARGIN_MM` from any pixel above that range (the partial-volume
rims of vessels and of the chest wall), opened by a disk of :data:`OUTLINE_OPEN_MM` (small vessels and
fissures are thinner) and kept as 2D pieces of at least :data:`OUTLINE_MIN_MM2`. The figure draws it on
every real slice.

:func:`ct1_check` says whether the synthetic CT-1 medians of :data:`CT1_FIGURES` fall inside the real CT-1
interquartile ranges (the issue's calibration target).
"""

from __future__ import annotations

import json
import logging
import math
import os
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.synth.realism import (
    REAL_NORMAL,
    RICORD_NEG,
    RICORD_POS,
    WALL_MM,
    Scan,
    _edt_2d,
    _fill_slices,
    _inplane_resample,
    _local_sd,
    _opening_2d,
    find_real_scans,
    find_synthetic_scans,
    load_ras,
    png_bytes,
)
from pipeline.transforms.plausibility import chest_ct_problem
from pipeline.utils.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "CT1_FIGURES",
    "ct1_check",
    "hu_figures",
    "lesion_section",
    "mask_figures",
    "medseg_shares",
    "outline_lesions",
    "read_hu_slice",
    "to_ras",
]

#: Connectivity of the 3D lesion pieces (6: faces only).
CONNECTIVITY = 6
_STRUCTURE = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[CONNECTIVITY])
#: The lesion envelope's outer part (depth below this fraction of its largest depth).
OUTER_DEPTH = 1.0 / 3.0
#: Piece volume bins (mL) of the size distribution.
PIECE_EDGES_ML = (0.0, 0.1, 1.0, 10.0, 100.0, math.inf)
#: Above this, a lesion voxel counts as consolidation (HU).
CONSOLIDATION_HU = -300.0
#: The outline rule: HU range, margin (mm) kept from anything denser (vessels, their partial-volume rims, fat,
#: the chest wall, consolidation), opening radius (mm), least 2D piece (mm^2).
OUTLINE_HU = (-750.0, -200.0)
OUTLINE_SOLID_MARGIN_MM = 1.5
OUTLINE_OPEN_MM = 2.0
OUTLINE_MIN_MM2 = 20.0
#: In-plane pixel (mm) of the grid on which the lesion texture (local SD) is measured.
LESION_PIXEL_MM = 1.5
HU_EDGES = np.arange(-1000.0, 201.0, 20.0)
#: Figures whose synthetic CT-1 median must fall inside the real CT-1 interquartile range.
CT1_FIGURES = ("total_ml", "n_pieces", "largest_ml")
MASK_FIGURES: dict[str, str] = {
    "total_ml": "total lesion volume (mL)",
    "n_pieces": f"3D pieces ({CONNECTIVITY}-connected)",
    "largest_ml": "largest piece (mL)",
    "median_piece_ml": "median piece (mL)",
    "small_pieces_pct": "pieces under 1 mL (% of pieces)",
    "outer_third_pct": "in outer third of lesion envelope (% vol)",
    "outer_third_lung_pct": "in outer third of lung envelope (% vol; synthetic only)",
    "lower_pct": "below mid-scan (% vol)",
    "posterior_pct": "posterior half (% vol)",
}
HU_FIGURES: dict[str, str] = {
    "hu_p10": "lesion HU p10",
    "hu_p50": "lesion HU median",
    "hu_p90": "lesion HU p90",
    "local_sd_hu": f"local SD, 3x3 px at {LESION_PIXEL_MM} mm (HU)",
    "consolidation_pct": f"consolidation > {CONSOLIDATION_HU:.0f} HU (% lesion)",
    "region_cm2_per_slice": "region area per slice (cm^2)",
    "region_lung_pct": "region (% of lung mask)",
}
REAL_CT1, MEDSEG, SBU = "real CT-1 (MosMedData)", "MedSeg", "SBU"
SYNTH_CATEGORIES = ("CT-1", "CT-2", "CT-3", "CT-4")
MOSMED_MASKS = "mosmed_ct1_masks"
MEDSEG_DIR = Path("covid_slices") / "medseg"
SBU_DIR = Path("covid_slices") / "sbu"


# ----------------------------------------------------------------------------------------- reading


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` (X, Y, Z) reoriented to RAS (``nibabel``'s canonical axis codes R, A, S, as MONAI's
    ``Orientation("RAS")``) and its voxel spacing (mm), from its ``affine``."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)
    spacing = nib.affines.voxel_sizes(affine)[np.asarray(ornt[:, 0], int).argsort()]
    return out, (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI lesion mask as a boolean RAS array (any value > 0) and its spacing (mm).

    Raises:
        InputError: not readable as a 3D NIfTI volume.
    """
    import nibabel as nib

    try:
        img = nib.load(os.fspath(path))
        data = np.asarray(img.dataobj)
    except Exception as err:
        raise InputError(path, f"cannot be read as a NIfTI mask ({type(err).__name__}: {err})") from err
    if data.ndim != 3:
        raise InputError(path, f"not a 3D mask (shape {data.shape})")
    return to_ras(data > 0, img.affine)


def read_hu_slice(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """One axial DICOM slice as an (X, Y, 1) float32 RAS HU volume and its spacing (mm).

    Raises:
        InputError: unreadable, no pixel data, or not an axial slice.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(os.fspath(path))
        pixels = ds.pixel_array.astype(np.float32)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        row, col = (float(v) for v in ds.PixelSpacing)
        hu = pixels * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
    except Exception as err:
        raise InputError(path, f"cannot be read as a CT slice ({type(err).__name__}: {err})") from err
    if pixels.ndim != 2 or not np.allclose(iop, [1, 0, 0, 0, 1, 0], atol=0.05):
        raise InputError(path, f"not an axial slice (orientation {iop.tolist()}, shape {pixels.shape})")
    # DICOM rows run posterior and columns to the patient's left: flip both for R, A
    volume = np.ascontiguousarray(hu.T[::-1, ::-1, None])
    return volume, (col, row, float(getattr(ds, "SliceThickness", 1.0) or 1.0))


# ----------------------------------------------------------------------------------------- mask figures


def pieces(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the :data:`CONNECTIVITY`-connected 3D pieces of a boolean ``mask``: ``(labels, count)``."""
    labels, n = ndimage.label(mask, structure=_STRUCTURE)
    return labels, int(n)


def _hull_depth(points_mm: np.ndarray, grid_mm: np.ndarray) -> np.ndarray | None:
    """Distance (mm) from each of ``grid_mm`` (N, 2) to the edge of the convex hull of ``points_mm`` (M, 2),
    negative outside; ``None`` where the hull is flat (fewer than 3 points not on one line)."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        hull = ConvexHull(points_mm)
    except (QhullError, ValueError):
        return None
    # qhull's facets are unit normals n and offsets c with n.p + c <= 0 inside: the distance to the edge of a
    # convex polygon from a point inside is the least distance to the lines of its edges
    return -(grid_mm @ hull.equations[:, :2].T + hull.equations[:, 2]).max(axis=1)


def envelope_depth(footprint: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Relative depth (0 at the edge, 1 at the deepest point) inside the lesion envelope of a 2D footprint.

    The envelope is, on each side of the field of view's sagittal mid-plane (the middle column of axis 0),
    the convex hull of the footprint's pixel centres there; depth is the in-plane distance (mm, ``spacing``
    of the two axes) to the hull's edge over its largest value in that hull. Outside the envelopes: NaN; a
    flat envelope (a line of pixels) is all edge, depth 0.
    """
    out = np.full(footprint.shape, np.nan, np.float32)
    mid = footprint.shape[0] // 2
    scale = np.asarray(spacing[:2], float)
    for lo, hi in ((0, mid), (mid, footprint.shape[0])):
        pts = np.argwhere(footprint[lo:hi]) + np.array([lo, 0])
        if not len(pts):
            continue
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        grid = np.stack(np.mgrid[x0 : x1 + 1, y0 : y1 + 1], axis=-1).reshape(-1, 2)
        depth = _hull_depth(pts * scale, grid * scale)
        if depth is None or depth.max() <= 0:
            out[pts[:, 0], pts[:, 1]] = 0.0
            continue
        inside = depth >= -1e-6
        out[grid[inside, 0], grid[inside, 1]] = np.clip(depth[inside], 0.0, None) / depth.max()
    return out


def _outer_share(mask: np.ndarray, footprint: np.ndarray, spacing: Sequence[float]) -> float:
    """Share (%) of ``mask`` voxels whose in-plane position is in the outer third of ``footprint``'s envelope."""
    depth = envelope_depth(footprint, spacing)
    per_pixel = mask.sum(axis=2)
    total = per_pixel.sum()
    outer = np.nan_to_num(depth, nan=0.0) < OUTER_DEPTH  # pixels outside the envelope hold no lesion
    return float(100.0 * per_pixel[outer].sum() / total) if total else float("nan")


def mask_figures(mask: np.ndarray, spacing: Sequence[float], lung: np.ndarray | None = None) -> dict:
    """The mask figures (module docstring) of a boolean (X, Y, Z) RAS lesion ``mask`` with voxel ``spacing``
    (mm); ``lung`` (same shape) adds ``outer_third_lung_pct``. Also returns ``piece_ml``, every piece's volume
    (mL, largest first)."""
    mask = np.asarray(mask, bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels, n = pieces(mask)
    piece_ml = np.sort(np.bincount(labels.ravel())[1:] * voxel_ml)[::-1]
    nan = float("nan")
    rec: dict = {"total_ml": float(mask.sum() * voxel_ml), "n_pieces": n, "piece_ml": piece_ml.round(4).tolist()}
    if n == 0:
        rec.update({k: nan for k in MASK_FIGURES if k not in rec})
        return rec
    rec["largest_ml"] = float(piece_ml[0])
    rec["median_piece_ml"] = float(np.median(piece_ml))
    rec["small_pieces_pct"] = float(100.0 * np.mean(piece_ml < 1.0))
    rec["outer_third_pct"] = _outer_share(mask, mask.any(axis=2), spacing)
    rec["outer_third_lung_pct"] = _outer_share(mask, lung.any(axis=2), spacing) if lung is not None else nan
    nz, ny = mask.shape[2], mask.shape[1]
    per_z, per_y = mask.sum(axis=(0, 1)).astype(float), mask.sum(axis=(0, 2)).astype(float)
    z_centre = (np.arange(nz) + 0.5) / nz
    rec["lower_pct"] = float(100.0 * per_z[z_centre < 0.5].sum() / per_z.sum())
    y_centre = (np.arange(ny) + 0.5) / ny  # axis 1 runs anterior
    rec["posterior_pct"] = float(100.0 * per_y[y_centre < 0.5].sum() / per_y.sum())
    return rec


# ----------------------------------------------------------------------------------------- HU figures


def outline_lesions(volume: np.ndarray, lung: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The outline rule (module docstring) on an (X, Y, Z) RAS HU ``volume`` and its lung mask: a boolean mask."""
    lung = np.asarray(lung, bool)
    out = np.zeros(lung.shape, bool)
    if not lung.any():
        return out
    xs, ys = np.nonzero(lung.any(axis=(1, 2)))[0], np.nonzero(lung.any(axis=(0, 2)))[0]
    box = (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1))  # the lung's bounding box: nothing lies outside
    pixel = float(np.sqrt(spacing[0] * spacing[1]))
    inner = _edt_2d(np.pad(_fill_slices(lung[box]), ((1, 1), (1, 1), (0, 0))), pixel)[1:-1, 1:-1] > WALL_MM
    values = volume[box]
    off_solid = _edt_2d(values <= OUTLINE_HU[1], pixel) > OUTLINE_SOLID_MARGIN_MM
    cand = inner & off_solid & (values >= OUTLINE_HU[0])
    region = _opening_2d(cand, OUTLINE_OPEN_MM / pixel)
    min_px = OUTLINE_MIN_MM2 / (spacing[0] * spacing[1])
    for k in range(region.shape[2]):
        labels, n = ndimage.label(region[..., k])
        if n:
            small = np.bincount(labels.ravel()) < min_px
            small[0] = False
            region[..., k][small[labels]] = False
    out[box] = region
    return out


def hu_figures(
    volume: np.ndarray, region: np.ndarray, spacing: Sequence[float], lung: np.ndarray | None = None
) -> dict:
    """The HU figures (module docstring) of ``region`` (boolean, same shape as the HU ``volume``), with
    ``hu_hist`` (share per 20 HU bin of :data:`HU_EDGES`, values clipped into its range); ``lung`` adds
    ``region_lung_pct``, the region's share of it."""
    values = volume[region]
    nan = float("nan")
    out: dict = {k: nan for k in HU_FIGURES}
    out["hu_hist"] = None
    if lung is not None and lung.any():
        out["region_lung_pct"] = float(100.0 * region.sum() / lung.sum())
    if values.size < 20:
        return out
    out["hu_p10"], out["hu_p50"], out["hu_p90"] = (float(v) for v in np.percentile(values, [10, 50, 90]))
    out["consolidation_pct"] = float(100.0 * np.mean(values > CONSOLIDATION_HU))
    out["region_cm2_per_slice"] = float(region.sum() * spacing[0] * spacing[1] / 100.0 / region.shape[2])
    hist, _ = np.histogram(np.clip(values, HU_EDGES[0], HU_EDGES[-1] - 1e-3), bins=HU_EDGES)
    out["hu_hist"] = [round(float(h), 6) for h in hist / values.size]
    small, _ = _inplane_resample(volume, spacing, LESION_PIXEL_MM)
    reg, _ = _inplane_resample(region.astype(np.float32), spacing, LESION_PIXEL_MM)
    core = ndimage.binary_erosion(reg > 0.999, np.ones((3, 3, 1), bool))  # 3x3 windows wholly in the region
    if core.sum() >= 10:
        out["local_sd_hu"] = float(np.median(_local_sd(small, 3)[core]))
    return out


# ----------------------------------------------------------------------------------------- MedSeg


def medseg_shares(root: str | os.PathLike) -> list[dict]:
    """Per MedSeg slice: ground-glass and consolidation pixels and ``consolidation_pct`` of their sum.

    Reads ``train/GT/*.png`` (1 = ground glass, 2 = consolidation) and ``test/GT-1``, ``test/GT-2`` (one mask
    each); slices without lesion are kept with NaN share.

    Raises:
        InputError: a mask cannot be read.
    """
    from PIL import Image

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                return np.asarray(im)
        except Exception as err:
            raise InputError(path, f"cannot be read as a mask image ({type(err).__name__}: {err})") from err

    root = Path(root)
    out = []
    for path in sorted((root / "train" / "GT").glob("*.png"), key=lambda p: p.name):
        gt = read(path)
        out.append({"name": f"train/{path.name}", "ggo_px": int((gt == 1).sum()), "cons_px": int((gt == 2).sum())})
    for path in sorted((root / "test" / "GT-1").glob("*.png"), key=lambda p: p.name):
        cons = root / "test" / "GT-2" / path.name
        cons_px = int((read(cons) > 0).sum()) if cons.is_file() else 0
        out.append({"name": f"test/{path.name}", "ggo_px": int((read(path) > 0).sum()), "cons_px": cons_px})
    for rec in out:
        total = rec["ggo_px"] + rec["cons_px"]
        rec["consolidation_pct"] = 100.0 * rec["cons_px"] / total if total else float("nan")
    return out


# ----------------------------------------------------------------------------------------- the section


def _lung(volume: np.ndarray, spacing: Sequence[float], name: str) -> np.ndarray:
    from pipeline.transforms.lung import lung_mask

    try:
        return np.asarray(lung_mask(volume, spacing), bool)
    except Exception as err:  # one scan the mask cannot handle gets no outline
        logger.warning("%s: lung mask failed (%s: %s); no lesion outline", name, type(err).__name__, err)
        return np.zeros(volume.shape, bool)


#: Margin (mm) around the lungs of a slice drawn in the figure.
VIEW_MARGIN_MM = 15.0


def _view(name: str, volume, region, lung, spacing, exact: np.ndarray | None = None) -> dict | None:
    """The slice of the figure, cropped to its lungs: the one with the most ``exact`` (else ``region``) voxels,
    and its outlines; ``None`` where the lung mask is empty (nothing to show)."""
    if not lung.any():
        return None
    ref = region if exact is None else exact
    k = int(np.argmax(ref.sum(axis=(0, 1)))) if ref.any() else int(np.argmax(lung.sum(axis=(0, 1))))
    box = []
    for axis in (0, 1):
        idx = np.nonzero(lung.any(axis=(1 - axis, 2)))[0]
        m = round(VIEW_MARGIN_MM / spacing[axis])
        box.append(slice(max(0, idx[0] - m), idx[-1] + m + 1))
    box = tuple(box)
    view = {"name": name, "hu": volume[box][..., k], "region": region[box][..., k], "spacing": tuple(spacing[:2])}
    view["exact"] = None if exact is None else exact[box][..., k]
    return view


def _outlined(group: str, name: str, volume: np.ndarray, spacing: Sequence[float]) -> tuple[dict, dict]:
    """HU figures in the outlined region of one real scan, and the slice drawn in the figure."""
    lung = _lung(volume, spacing, name)
    region = outline_lesions(volume, lung, spacing)
    rec = {"group": group, "hu_group": f"{group}, outlined", "name": name, **hu_figures(volume, region, spacing, lung)}
    rec["lung_empty"] = not lung.any()
    return rec, _view(f"{group}: {name}", volume, region, lung, spacing)


def measure_synthetic(study: Scan) -> tuple[dict, list[dict], dict]:
    """Mask figures and HU figures (exact mask, outline rule) of one synthetic study of a cohort.

    Returns ``(mask record, [exact-mask HU record, outlined HU record], figure slice)``.

    Raises:
        InputError: image and mask differ in shape.
    """
    volume, spacing = load_ras(study.path)
    mask, _ = read_mask(study.mask)
    if mask.shape != volume.shape:
        raise InputError(study.mask, f"shape {mask.shape} differs from its image's {volume.shape}")
    lung = _lung(volume, spacing, study.name)
    base = {"group": study.group, "name": study.name, "synthetic": True}
    rec = {**base, **mask_figures(mask, spacing, lung)}
    region = outline_lesions(volume, lung, spacing)
    hu = [
        {**base, "hu_group": f"{study.group}, exact mask", **hu_figures(volume, mask, spacing, lung)},
        {**base, "hu_group": f"{study.group}, outlined", **hu_figures(volume, region, spacing, lung)},
    ]
    return rec, hu, _view(f"{study.group}: {study.name}", volume, region, lung, spacing, mask)


def lesion_section(
    cohort: str | os.PathLike,
    real_dir: str | os.PathLike,
    per_category: int = 20,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Measure the lesion section: synthetic CT-1..CT-4 of ``cohort`` (at most ``per_category`` each) and
    the references found under ``real_dir``. Returns ``{"masks", "hu", "medseg", "views", "sources"}``:
    mask records, HU records (real outlined, synthetic exact and outlined), MedSeg slices, the slices drawn
    in the figure and the reference folders used (absent ones logged)."""
    real = Path(real_dir)
    say = progress or (lambda s: None)
    masks, hu, views, sources = [], [], [], {}
    t0 = time.perf_counter()
    mosmed = real / MOSMED_MASKS
    paths = sorted(mosmed.glob("*_mask.nii.gz")) if mosmed.is_dir() else []
    for path in paths:
        mask, spacing = read_mask(path)
        masks.append({"group": REAL_CT1, "name": path.name.removesuffix("_mask.nii.gz"), **mask_figures(mask, spacing)})
    sources[REAL_CT1] = str(mosmed) if paths else None
    say(f"{REAL_CT1}: {len(paths)} masks ({time.perf_counter() - t0:.0f} s)")
    sbu = sorted((real / SBU_DIR).glob("*.dcm")) if (real / SBU_DIR).is_dir() else []
    for path in sbu:
        volume, spacing = read_hu_slice(path)
        rec, view = _outlined(SBU, path.stem, volume, spacing)
        hu.append(rec)
        views.append(view)  # None where the lung mask is empty: left out of the figure
    sources[SBU] = str(real / SBU_DIR) if sbu else None
    # RICORD positive slabs, and controls: what the rule outlines in lungs without COVID-19 (the normal-lung
    # section's real scans)
    n_pos = 0
    for scan in find_real_scans(real):
        if scan.group not in (RICORD_POS, REAL_NORMAL, RICORD_NEG):
            continue
        volume, spacing = load_ras(scan.path)
        if scan.group == REAL_NORMAL and chest_ct_problem(volume, np.diag([*spacing, 1.0])) is not None:
            continue  # not a chest CT (the normal-lung section's "real non-chest")
        group = scan.group if scan.group == RICORD_POS else f"{scan.group} (control)"
        rec, view = _outlined(group, scan.name, volume, spacing)
        hu.append(rec)
        n_pos += scan.group == RICORD_POS
        if scan.group != RICORD_NEG:
            views.append(view)
    sources[RICORD_POS] = str(real) if n_pos else None
    medseg = medseg_shares(real / MEDSEG_DIR) if (real / MEDSEG_DIR).is_dir() else []
    sources[MEDSEG] = str(real / MEDSEG_DIR) if medseg else None
    for name, src in sources.items():
        if src is None:
            logger.warning("lesion reference %r not found under %s; left out", name, real)
    shown = set()
    for study in find_synthetic_scans(cohort, per_category, SYNTH_CATEGORIES, with_mask=True):
        t = time.perf_counter()
        rec, hu_recs, view = measure_synthetic(study)
        masks.append(rec)
        hu.extend(hu_recs)
        if study.group not in shown:  # the first study of each category goes into the figure
            shown.add(study.group)
            views.append(view)
        say(
            f"{study.group:5s} {study.name}: {rec['total_ml']:.0f} mL in {rec['n_pieces']} pieces, "
            f"largest {rec['largest_ml']:.0f} mL ({time.perf_counter() - t:.1f} s)"
        )
    views = [v for v in views if v is not None]
    return {"masks": masks, "hu": hu, "medseg": medseg, "views": views, "sources": sources}


# ----------------------------------------------------------------------------------------- summary


def _finite(values) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]


def quartiles(values) -> dict:
    """``{"median", "q25", "q75", "n"}`` of the finite ``values`` (``None`` where there are none)."""
    a = _finite(values)
    if not a.size:
        return {"median": None, "q25": None, "q75": None, "n": 0}
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "n": int(a.size)}


def summarise(records: Sequence[dict], figures: Sequence[str], key: str = "group") -> dict:
    """``{group: {figure: quartiles}}`` over ``records`` grouped by ``key`` (groups in first-seen order)."""
    groups = list(dict.fromkeys(r[key] for r in records))
    return {g: {f: quartiles([r.get(f) for r in records if r[key] == g]) for f in figures} for g in groups}


def ct1_check(synthetic: Sequence[dict], real: Sequence[dict]) -> dict:
    """Whether the median of each :data:`CT1_FIGURES` over the ``synthetic`` CT-1 mask records falls inside
    the interquartile range (inclusive) of the ``real`` CT-1 mask records.

    Returns ``{figure: {"synthetic_median", "real_median", "real_q25", "real_q75", "inside"}, "all_inside": bool}``.

    Raises:
        ValueError: either side is empty.
    """
    if not synthetic or not real:
        raise ValueError(f"ct1_check needs both sides: {len(synthetic)} synthetic, {len(real)} real records")
    out: dict = {}
    for f in CT1_FIGURES:
        s, r = quartiles([x[f] for x in synthetic]), quartiles([x[f] for x in real])
        inside = s["median"] is not None and r["q25"] is not None and r["q25"] <= s["median"] <= r["q75"]
        out[f] = {
            "synthetic_median": s["median"],
            "real_median": r["median"],
            "real_q25": r["q25"],
            "real_q75": r["q75"],
            "inside": bool(inside),
        }
    out["all_inside"] = all(out[f]["inside"] for f in CT1_FIGURES)
    return out


def size_distribution(records: Sequence[dict]) -> dict:
    """Per group: share (%) of pieces and of lesion volume in each :data:`PIECE_EDGES_ML` bin, pooled."""
    out = {}
    for g in dict.fromkeys(r["group"] for r in records):
        ml = np.concatenate([np.asarray(r["piece_ml"], float) for r in records if r["group"] == g] or [np.zeros(0)])
        counts = np.histogram(ml, bins=PIECE_EDGES_ML)[0]
        vols = np.histogram(ml, bins=PIECE_EDGES_ML, weights=ml)[0]
        out[g] = {
            "pieces_pct": (100.0 * counts / max(1, counts.sum())).round(2).tolist(),
            "volume_pct": (100.0 * vols / max(1e-9, vols.sum())).round(2).tolist(),
            "n_pieces": int(ml.size),
        }
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 10:
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.2g}"


def _cell(q: dict) -> str:
    if q["median"] is None:
        return "-"
    if q["n"] < 4:
        return f"{_fmt(q['median'])} (n={q['n']})"
    return f"{_fmt(q['median'])} ({_fmt(q['q25'])} to {_fmt(q['q75'])})"


def _table(summary: dict, figures: dict[str, str], counts: dict[str, int]) -> str:
    groups = list(summary)
    lines = ["| figure | " + " | ".join(f"{g} (n={counts[g]})" for g in groups) + " |", "|---|" + "---|" * len(groups)]
    for key, label in figures.items():
        lines.append(f"| {label} | " + " | ".join(_cell(summary[g][key]) for g in groups) + " |")
    return "\n".join(lines) + "\n"


def _bin_label(i: int) -> str:
    lo, hi = PIECE_EDGES_ML[i], PIECE_EDGES_ML[i + 1]
    return f"> {lo:g} mL" if math.isinf(hi) else f"{lo:g}-{hi:g} mL"


def summary_payload(section: dict) -> dict:
    """The JSON-able summary of a measured :func:`lesion_section`: tables, size distribution, CT-1 check."""
    masks, hu = section["masks"], section["hu"]
    real_ct1 = [r for r in masks if r["group"] == REAL_CT1]
    synth_ct1 = [r for r in masks if r["group"] == "CT-1"]
    medseg = section["medseg"]
    cons = [r["consolidation_pct"] for r in medseg]
    pooled = sum(r["cons_px"] for r in medseg) / max(1, sum(r["ggo_px"] + r["cons_px"] for r in medseg))
    return {
        "mask_summary": summarise(masks, list(MASK_FIGURES)),
        "mask_counts": {g: sum(r["group"] == g for r in masks) for g in dict.fromkeys(r["group"] for r in masks)},
        "size_distribution": size_distribution(masks),
        "hu_summary": summarise(hu, list(HU_FIGURES), key="hu_group"),
        "hu_counts": {  # scans with an outline (a real slice whose lung mask fails has none)
            g: sum(r["hu_group"] == g and r["hu_p50"] is not None and np.isfinite(r["hu_p50"]) for r in hu)
            for g in dict.fromkeys(r["hu_group"] for r in hu)
        },
        "hu_no_region": [r["name"] for r in hu if r["hu_p50"] is None or not np.isfinite(r["hu_p50"])],
        "medseg": {
            "slices_with_lesion": len(_finite(cons)),
            "consolidation_pct": quartiles(cons),
            "consolidation_pct_pooled": 100.0 * pooled if medseg else None,
        },
        "ct1_check": ct1_check(synth_ct1, real_ct1) if synth_ct1 and real_ct1 else None,
        "sources": section["sources"],
    }


def markdown(summary: dict) -> str:
    """The lesion section of the realism page: tables of mask figures, size distribution, HU figures, check."""
    parts = ["Median (interquartile range) over each group's studies (slices for SBU, slabs for RICORD).\n\n"]
    parts.append(_table(summary["mask_summary"], MASK_FIGURES, summary["mask_counts"]))
    sd = summary["size_distribution"]
    head = "| pieces by volume | " + " | ".join(f"{g} ({sd[g]['n_pieces']} pieces)" for g in sd) + " |"
    rows = [head, "|---|" + "---|" * len(sd)]
    for i in range(len(PIECE_EDGES_ML) - 1):
        cells = [f"{sd[g]['pieces_pct'][i]:.0f} % of pieces, {sd[g]['volume_pct'][i]:.0f} % of volume" for g in sd]
        rows.append(f"| {_bin_label(i)} | " + " | ".join(cells) + " |")
    parts.append("\nSize distribution (pooled over each group's pieces):\n\n" + "\n".join(rows) + "\n")
    ms = summary["medseg"]
    if ms["consolidation_pct"]["n"]:
        parts.append(
            f"\nGround glass vs consolidation: MedSeg, {ms['slices_with_lesion']} slices with lesion: consolidation "
            f"{_cell(ms['consolidation_pct'])} % of the lesion area per slice, {ms['consolidation_pct_pooled']:.0f} % "
            "pooled (radiologists' labels). Synthetic: the share above "
            f"{CONSOLIDATION_HU:.0f} HU in the exact mask (row 'consolidation' below).\n"
        )
    parts.append("\nLesion HU and texture:\n\n" + _table(summary["hu_summary"], HU_FIGURES, summary["hu_counts"]))
    if summary["hu_no_region"]:
        parts.append(f"\nNo region (lung mask empty, or nothing outlined): {', '.join(summary['hu_no_region'])}.\n")
    check = summary["ct1_check"]
    if check:
        lines = [
            f"- {MASK_FIGURES[f]}: synthetic median {_fmt(check[f]['synthetic_median'])}, real IQR "
            f"{_fmt(check[f]['real_q25'])} to {_fmt(check[f]['real_q75'])}: "
            + ("**inside**" if check[f]["inside"] else "**outside**")
            for f in CT1_FIGURES
        ]
        verdict = "inside" if check["all_inside"] else "not all inside"
        parts.append(f"\nCalibration check (synthetic CT-1 medians in the real CT-1 IQR): {verdict}.\n\n")
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


# ----------------------------------------------------------------------------------------- figure

_GROUP_COLOURS = {
    REAL_CT1: "#1f77b4",
    SBU: "#9467bd",
    RICORD_POS: "#17becf",
    MEDSEG: "#7f7f7f",
    f"{REAL_NORMAL} (control)": "#7f7f7f",
    f"{RICORD_NEG} (control)": "#c7c7c7",
}
_SYNTH_COLOURS = {"CT-1": "#2ca02c", "CT-2": "#bcbd22", "CT-3": "#ff7f0e", "CT-4": "#d62728"}


def _colour(group: str) -> str:
    """The colour of a group or of an HU group (``"<group>, <region>"``)."""
    base = group.split(",")[0]
    return _GROUP_COLOURS.get(base) or _SYNTH_COLOURS.get(base, "#8c564b")


def plot(section: dict, summary: dict, title: str = "") -> bytes:
    """PNG bytes: strip plots of the mask figures per group (real CT-1 IQR shaded), the pooled piece-size
    distribution, the lesion HU histograms, and every real slice (and one synthetic) with its outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masks, hu, views = section["masks"], section["hu"], section["views"]
    groups = list(summary["mask_summary"])
    keys = list(MASK_FIGURES)
    n_views = len(views)
    view_cols = 6
    view_rows = math.ceil(n_views / view_cols)
    fig = plt.figure(figsize=(20, 7.0 + 3.3 * view_rows))
    grid = fig.add_gridspec(2 + view_rows, view_cols, height_ratios=[1.0, 1.2] + [1.1] * view_rows)
    strip = grid[0, :].subgridspec(1, len(keys))
    rng = np.random.default_rng(0)
    for n, key in enumerate(keys):
        ax = fig.add_subplot(strip[0, n])
        for i, g in enumerate(groups):
            vals = _finite([r.get(key) for r in masks if r["group"] == g])
            if vals.size:
                ax.scatter(i + rng.uniform(-0.2, 0.2, vals.size), vals, s=9, color=_colour(g), alpha=0.8, lw=0)
                ax.hlines(np.median(vals), i - 0.35, i + 0.35, color="k", lw=1.1)
        real = summary["mask_summary"].get(REAL_CT1, {}).get(key)
        if real and real["q25"] is not None:
            ax.axhspan(real["q25"], real["q75"], color=_GROUP_COLOURS[REAL_CT1], alpha=0.12, lw=0)
        if key in ("total_ml", "n_pieces", "largest_ml", "median_piece_ml"):
            ax.set_yscale("log")
        ax.set_title(textwrap.fill(MASK_FIGURES[key], 26), fontsize=7.5)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g.split(" (")[0] for g in groups], rotation=50, ha="right", fontsize=6.5)
        ax.tick_params(axis="y", labelsize=6.5)
        ax.grid(axis="y", alpha=0.3)
    row = grid[1, :].subgridspec(1, 3)
    ax = fig.add_subplot(row[0, 0])
    for g in groups:
        ml = np.sort(np.concatenate([np.asarray(r["piece_ml"], float) for r in masks if r["group"] == g]))
        if ml.size:
            ax.plot(ml, 1.0 - np.arange(ml.size) / ml.size, color=_colour(g), lw=1.4, label=f"{g} ({ml.size})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("piece volume (mL)", fontsize=8)
    ax.set_ylabel("share of pieces at least this large", fontsize=8)
    ax.set_title(f"piece sizes ({CONNECTIVITY}-connected), pooled per group", fontsize=9)
    ax.legend(fontsize=7)
    centres = (HU_EDGES[:-1] + HU_EDGES[1:]) / 2
    for col, region in ((1, "outlined"), (2, "exact mask")):
        ax = fig.add_subplot(row[0, col])
        for g in dict.fromkeys(r["hu_group"] for r in hu):
            if not g.endswith(region):
                continue
            rows = [r["hu_hist"] for r in hu if r["hu_group"] == g and r.get("hu_hist")]
            if rows:
                style = ":" if g.startswith("CT-") else "--" if "(control)" in g else "-"
                h = np.median(np.asarray(rows, float), axis=0)
                ax.plot(centres, h * 100 / 20.0, style, color=_colour(g), lw=1.4, label=f"{g} ({len(rows)})")
        ax.set_xlabel("HU", fontsize=8)
        ax.set_ylabel("% of region per HU (median over scans)", fontsize=8)
        what = "outline rule" if region == "outlined" else "exact synthetic masks"
        ax.set_title(f"lesion HU histogram, {what}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in fig.axes[len(keys) :]:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for i, view in enumerate(views):
        ax = fig.add_subplot(grid[2 + i // view_cols, i % view_cols])
        # RAS (X, Y) shown as radiologists do: patient's right on the left, anterior up
        aspect = view["spacing"][1] / view["spacing"][0]
        ax.imshow(view["hu"].T[::-1, ::-1], cmap="gray", vmin=-1200, vmax=200, aspect=aspect)
        ax.contour(view["region"].T[::-1, ::-1].astype(float), levels=[0.5], colors="#ff3030", linewidths=0.6)
        if view.get("exact") is not None:
            ax.contour(view["exact"].T[::-1, ::-1].astype(float), levels=[0.5], colors="#30c0ff", linewidths=0.6)
        ax.set_title(view["name"], fontsize=7)
        ax.axis("off")
    return png_bytes(fig, title, dpi=60)


# ----------------------------------------------------------------------------------------- outputs

LESION_GUIDE = f"""How to read it:

- "real CT-1" is the 50 radiologist masks of MosMedData's CT-1 studies (8 mm slices); the synthetic groups are
  the cohort's exact lesion masks. Pieces are {CONNECTIVITY}-connected (faces only; 26-connectivity merges
  diagonal neighbours and gives fewer pieces), volumes come from each mask's affine. Real CT-1 pieces are
  mostly specks: their median piece is a few voxels.
- Position is measured from the mask alone, as the real masks come without their scans: "outer third of
  lesion envelope" is a proxy for subpleural (an even spread over a disk gives 56 %); on the synthetic studies
  the same share with the envelope of the lung mask shows how far the proxy is from the lung's own periphery.
  "below mid-scan" and "posterior half" are relative to the scan's slice range and field of view (a field of
  view holding more of the couch below the patient than above moves the body, so its lesions, forward).
- Lesion HU and texture of the real scans are measured in the region the outline rule draws (red in the
  figure): inside the lung mask, {OUTLINE_HU[0]:.0f} to {OUTLINE_HU[1]:.0f} HU, more than \
{OUTLINE_SOLID_MARGIN_MM:g} mm from
  anything denser, opened by a {OUTLINE_OPEN_MM:g} mm disk, 2D pieces of at least {OUTLINE_MIN_MM2:g} mm^2. It \
catches ground glass, not
  consolidation (above its range) nor foci under about {2 * OUTLINE_OPEN_MM:g} mm, and also some dependent \
density and partial
  volume of normal lung: the "control" rows show how much on real scans without COVID-19. Compare the real rows
  with the synthetic "outlined" rows, drawn by the same rule; the "exact mask" rows are the phantom's truth
  (its exact mask in blue in the figure). SBU slices are 1-5 mm thick, RICORD 3 mm, the synthetic studies
  8 mm: thicker slices average texture away, and the local SD of real scans is mostly their noise (the
  controls read the same).
- MedSeg images are 8-bit lung-window crops of unknown pixel size: only their ground-glass/consolidation
  share is used.
"""


def write_lesion_outputs(out_dir: Path, section: dict, meta: dict, docs: Path | None = None) -> str:
    """Write ``realism_lesions.json``, ``.md`` and ``.png`` into ``out_dir`` (the figure also into
    ``docs/images``); return the markdown section for the realism page."""
    from pipeline.synth.realism import _jsonable
    from pipeline.utils.atomic import atomic_write_bytes, atomic_write_text

    summary = summary_payload(section)
    payload = {
        **meta,
        "settings": {
            "connectivity": CONNECTIVITY,
            "outer_depth": OUTER_DEPTH,
            "consolidation_hu": CONSOLIDATION_HU,
            "outline_hu": OUTLINE_HU,
            "outline_solid_margin_mm": OUTLINE_SOLID_MARGIN_MM,
            "outline_open_mm": OUTLINE_OPEN_MM,
            "outline_min_mm2": OUTLINE_MIN_MM2,
            "lesion_pixel_mm": LESION_PIXEL_MM,
            "piece_edges_ml": [e if math.isfinite(e) else "inf" for e in PIECE_EDGES_ML],
        },
        "figures": {**MASK_FIGURES, **HU_FIGURES},
        **summary,
        "masks": section["masks"],
        "hu": section["hu"],
        "medseg_slices": section["medseg"],
        "hu_edges": HU_EDGES.tolist(),
    }
    text = f"{LESION_GUIDE}\n{markdown(summary)}\n![lesions](images/realism_lesions.png)\n"
    png = plot(section, summary)
    atomic_write_text(out_dir / "realism_lesions.json", json.dumps(_jsonable(payload), indent=1, allow_nan=False))
    atomic_write_text(out_dir / "realism_lesions.md", f"# Lesions: synthetic vs real COVID-19\n\n{text}")
    atomic_write_bytes(out_dir / "realism_lesions.png", png)
    if docs is not None:
        atomic_write_bytes(docs / "images" / "realism_lesions.png", png)
    return text
