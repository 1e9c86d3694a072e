"""Synthetic chest-CT phantom: anatomy, normal findings and COVID-19-like opacities in HU.

One study is a non-contrast chest CT. The scanner profile ``"mosmed"`` (default) gives the
MosMedData geometry: ``matrix x matrix x (33-54)`` voxels, in-plane pixel 0.58-1.15 mm (at a 512
matrix), 8 mm slices, LAS orientation, int16 HU. The profile ``"shifted"`` draws the scanner from
another distribution (2.5-5 mm slices over the same 264-432 mm coverage, RAS orientation, lower
noise, sharper kernels, other padding, a 384 default matrix) while patient and lesions keep theirs.
Voxel arrays are built as ``(x, y, z)`` = (towards patient left, towards anterior, towards superior)
and flipped along x for RAS output.

Anatomy and smooth random fields are built on a working grid of at most 256 pixels a side and
upsampled bilinearly; scanner noise is added at full resolution. Every random draw comes from the
study's seed; nuisance parameters (patient, scanner, breathing) come from a stream that the
category never touches, so they are distributed identically in every category and the only
systematic difference between categories is the opacity burden in the lungs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

#: MosMedData categories and the fraction of lung parenchyma involved (lower, upper bound).
CATEGORY_BANDS: dict[str, tuple[float, float]] = {
    "CT-0": (0.0, 0.0),
    "CT-1": (0.0, 0.25),
    "CT-2": (0.25, 0.50),
    "CT-3": (0.50, 0.75),
    "CT-4": (0.75, 1.0),
}
#: Fractions drawn for the target involvement stay this far inside each band.
BAND_MARGIN = 0.04
SLICE_SPACING_MM = 8.0
#: Slice counts and in-plane pixel spacing (mm, at a 512 matrix) seen in MosMedData.
SLICE_RANGE = (33, 54)
PIXEL_RANGE_512 = (0.58, 1.15)
#: Largest working grid (pixels a side) on which anatomy is built before upsampling.
WORK_MAX = 256
HU_MIN, HU_MAX = -1024, 3071
AIR_HU = -1000.0
#: Reconstruction kernels: (image blur sigma, unsharp-mask sigma, noise correlation sigma) in
#: pixels of a 512 matrix; 0 = none.
KERNELS = {
    "smooth": (1.2, 0.0, 2.0),
    "standard": (0.0, 0.0, 1.4),
    "sharp": (0.0, 1.5, 0.9),
    "lung": (0.0, 1.0, 0.6),
}
#: First branches of each pulmonary vessel tree from the hilum (x towards that lung's side).
ROOT_DIRECTIONS = (
    (0.3, 0.2, 1.0),
    (0.5, -0.4, 0.8),
    (1.0, 0.5, 0.0),
    (1.0, -0.3, -0.2),
    (0.6, 0.6, -0.8),
    (0.4, -0.6, -1.0),
    (0.8, 0.0, -0.9),
)


@dataclass(frozen=True)
class ScannerProfile:
    """The distribution a cohort's scanner settings are drawn from (patient and lesions never depend on it).

    Attributes:
        name: profile name, recorded in the manifest.
        slice_mm: (low, high) slice spacing in mm, drawn uniformly; equal bounds draw nothing.
        kernels: reconstruction kernels (keys of :data:`KERNELS`) to draw from.
        kernel_p: their probabilities; ``None`` = uniform.
        noise_hu: (low, high) standard deviation of the scanner noise in HU.
        padding_hu: values written outside the reconstructed circle, drawn uniformly.
        orientation: ``"LAS"`` or ``"RAS"`` axis codes of the saved arrays.
        matrix: in-plane size used when the caller gives none.
    """

    name: str
    slice_mm: tuple[float, float]
    kernels: tuple[str, ...]
    kernel_p: tuple[float, ...] | None
    noise_hu: tuple[float, float]
    padding_hu: tuple[int, ...]
    orientation: str
    matrix: int


SCANNERS: dict[str, ScannerProfile] = {
    "mosmed": ScannerProfile(
        name="mosmed",
        slice_mm=(SLICE_SPACING_MM, SLICE_SPACING_MM),
        kernels=("smooth", "standard", "sharp"),
        kernel_p=None,
        noise_hu=(10.0, 40.0),
        padding_hu=(-3024, -2048, -2000, -1024),
        orientation="LAS",
        matrix=512,
    ),
    "shifted": ScannerProfile(
        name="shifted",
        slice_mm=(2.5, 5.0),
        kernels=("standard", "sharp", "lung"),
        kernel_p=(0.2, 0.4, 0.4),
        noise_hu=(5.0, 15.0),
        padding_hu=(-1024, -1000),
        orientation="RAS",
        matrix=384,
    ),
}


def get_scanner(scanner: str | ScannerProfile) -> ScannerProfile:
    """The :class:`ScannerProfile` named ``scanner`` (a profile is returned as is); ``ValueError`` if unknown."""
    if isinstance(scanner, ScannerProfile):
        return scanner
    if scanner not in SCANNERS:
        raise ValueError(f"unknown scanner {scanner!r}; choose from {', '.join(SCANNERS)}")
    return SCANNERS[scanner]


@dataclass
class SyntheticStudy:
    """One generated study.

    Attributes:
        image: int16 HU, shape ``(matrix, matrix, slices)`` in (x, y, z) voxel order as saved.
        mask: uint8 lesion mask (1 = opacity), same shape.
        affine: 4x4 voxel-to-world (RAS mm) matrix; axis codes those of the scanner profile,
            ``("L", "A", "S")`` for ``"mosmed"``, ``("R", "A", "S")`` for ``"shifted"``.
        lesion_fraction: lesion voxels / lung voxels, measured on ``mask``.
        params: every drawn parameter (patient, scanner, lesions), JSON-serialisable.
    """

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    lesion_fraction: float
    params: dict[str, Any] = field(default_factory=dict)


def check_matrix(matrix: int) -> int:
    """Return the in-plane upsampling factor for ``matrix``; raise ``ValueError`` if unsupported.

    A matrix is a multiple of 16 in [32, 1024]; it is built at ``matrix // factor <= 256`` pixels.
    """
    if not isinstance(matrix, (int, np.integer)) or matrix < 32 or matrix > 1024 or matrix % 16:
        raise ValueError(f"matrix must be a multiple of 16 between 32 and 1024, got {matrix!r}")
    return next(f for f in (1, 2, 4) if matrix // f <= WORK_MAX)


def upsample(a: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear in-plane upsampling by an integer ``factor`` (pixel-area aligned, edges replicated).

    ``(W, W, Z) -> (W*factor, W*factor, Z)``, float32.
    """
    if factor == 1:
        return a
    for axis in (0, 1):
        prev = np.concatenate([a.take([0], axis), a.take(range(a.shape[axis] - 1), axis)], axis)
        nxt = np.concatenate([a.take(range(1, a.shape[axis]), axis), a.take([-1], axis)], axis)
        parts = []
        for s in range(factor):
            o = (s + 0.5) / factor - 0.5
            other = prev if o < 0 else nxt
            parts.append((1 - abs(o)) * a + abs(o) * other)
        a = np.stack(parts, axis=axis + 1)
        shape = list(a.shape)
        shape[axis : axis + 2] = [shape[axis] * factor]
        a = a.reshape(shape)
    return a.astype(np.float32, copy=False)


def _upsample_variance(factor: int) -> float:
    """Variance kept when white noise is upsampled by :func:`upsample` (both axes)."""
    per_axis = np.mean([(1 - abs(o)) ** 2 + o**2 for o in ((np.arange(factor) + 0.5) / factor - 0.5)])
    return float(per_axis**2)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], sigma_mm: float, spacing) -> np.ndarray:
    """Gaussian random field with unit std and correlation length ``sigma_mm``; float32 ``shape``.

    Drawn on a grid coarse enough for ``sigma_mm``, filtered, and upsampled bilinearly.
    """
    px, pz = spacing[0], spacing[2]
    step = max(1, int(sigma_mm / (2 * px)))
    coarse = (-(-shape[0] // step), -(-shape[1] // step), shape[2])
    noise = rng.standard_normal(coarse, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, (sigma_mm / (step * px),) * 2 + (sigma_mm / pz,), mode="wrap")
    zoomed = ndimage.zoom(noise, (step, step, 1), order=1, grid_mode=True, mode="grid-wrap")
    out = zoomed[: shape[0], : shape[1]]
    return ((out - out.mean()) / (out.std() + 1e-6)).astype(np.float32)


def draw_nuisance(
    rng: np.random.Generator, matrix: int, n_slices: int | None = None, scanner: ScannerProfile = SCANNERS["mosmed"]
) -> dict[str, Any]:
    """Draw patient, breathing and scanner parameters (never depends on the category).

    The craniocaudal coverage is that of 33-54 MosMedData slices of 8 mm in every profile; the
    slice count is the coverage over the profile's slice spacing, or ``n_slices`` when given (then
    the coverage is ``n_slices`` times the spacing). The ``"mosmed"`` profile draws exactly the
    numbers it always drew, so its studies stay byte-identical for a seed.
    """
    u = rng.uniform
    n_ref = int(rng.integers(SLICE_RANGE[0], SLICE_RANGE[1] + 1)) if n_slices is None else None
    pixel_512 = u(*PIXEL_RANGE_512)
    fov = 512 * pixel_512
    # MosMedData coverage: from just above the apices to just below the diaphragm domes
    lung_base = u(0.0, 2 * SLICE_SPACING_MM)
    top_margin = u(-SLICE_SPACING_MM, 2.5 * SLICE_SPACING_MM)
    kernel = str(rng.choice(list(scanner.kernels), p=scanner.kernel_p))
    p = {
        "scanner": scanner.name,
        "pixel_mm": fov / matrix,
        "fov_mm": fov,
        # body: lateral / AP semi-axes (mm), capped so the lungs stay in the field of view
        "body_a": min(u(135.0, 185.0), 0.52 * fov),
        "body_b_ratio": u(0.62, 0.78),
        "fat_mm": u(3.0, 20.0),
        "muscle_mm": u(5.0, 11.0),
        "rotation_deg": u(-6.0, 6.0),
        "shift_x_mm": u(-15.0, 15.0),
        "shift_y_mm": u(-25.0, 10.0),
        "table_gap_mm": u(5.0, 40.0),
        # breathing: base position in the scan, parenchymal density (lung height below)
        "lung_base_mm": lung_base,
        "dome_mm": u(30.0, 55.0),
        "right_dome_extra_mm": u(5.0, 20.0),
        "lung_hu": u(-880.0, -810.0),
        "lung_texture_hu": u(10.0, 25.0),
        "dependent_hu": u(30.0, 160.0),
        "dependent_mm": u(8.0, 22.0),
        "mediastinum_mm": u(16.0, 26.0),
        "heart_scale": u(0.85, 1.15),
        "vessel_root_mm": u(5.0, 7.0),
        "vessel_hu": u(30.0, 50.0),
        "fat_hu": u(-115.0, -85.0),
        "muscle_hu": u(38.0, 55.0),
        "liver_hu": u(50.0, 70.0),
        "bone_hu": u(200.0, 350.0),
        "cortical_hu": u(700.0, 1200.0),
        "rib_pitch_mm": u(22.0, 30.0),
        "rib_phase_mm": u(0.0, 30.0),
        # scanner
        "kernel": kernel,
        "noise_hu": u(*scanner.noise_hu),
        "padding_hu": int(rng.choice(scanner.padding_hu)),
        "origin_z_mm": u(-450.0, -150.0),
    }
    lo, hi = scanner.slice_mm
    dz = lo if lo == hi else u(lo, hi)
    n = int(n_slices) if n_ref is None else max(1, round(n_ref * SLICE_SPACING_MM / dz))
    extent = n_ref * SLICE_SPACING_MM if n_ref is not None else n * dz
    p.update(slice_mm=dz, n_slices=n, coverage_mm=extent, lung_height_mm=extent - top_margin - lung_base)
    return p


def draw_lesions(rng: np.random.Generator, category: str) -> dict[str, Any]:
    """Draw the opacity burden and appearance for ``category`` (own random stream)."""
    lo, hi = CATEGORY_BANDS[category]
    if hi == 0.0:
        return {"target_fraction": 0.0}
    lo, hi = max(lo + BAND_MARGIN, 0.01), hi - BAND_MARGIN
    return {
        "target_fraction": rng.uniform(lo, hi),
        "ggo_hu": rng.uniform(-650.0, -350.0),
        # faint ground glass (still below -600 HU) at the margins of the opacities
        "faint_share": rng.uniform(0.15, 0.3),
        "faint_hu": rng.uniform(90.0, 160.0),
        "consolidation_share": rng.uniform(0.0, 0.35),
        "consolidation_hu": rng.uniform(10.0, 50.0),
        "scale_mm": rng.uniform(18.0, 35.0),
        "peripheral_weight": rng.uniform(0.8, 1.6),
        "posterior_weight": rng.uniform(0.3, 1.0),
        "basal_weight": rng.uniform(0.3, 1.0),
        "left_right_bias": rng.uniform(-0.4, 0.4),
    }


def _vessel_points(rng: np.random.Generator, p: dict[str, Any], hila: list[np.ndarray], step_mm: float):
    """Centerline points (N, 3) in body mm and radii (N,) of two branching, tapering vessel trees."""
    starts, dirs, radii, lengths = [], [], [], []
    for side, hilum in zip((-1.0, 1.0), hila, strict=True):
        for d in ROOT_DIRECTIONS:
            d = (d[0] * side, d[1], d[2])
            starts.append(hilum)
            dirs.append(np.asarray(d) / np.linalg.norm(d))
            radii.append(p["vessel_root_mm"])
            lengths.append(rng.uniform(20.0, 35.0))
    start, direction = np.array(starts), np.array(dirs)
    radius, length = np.array(radii), np.array(lengths)
    points, point_radii = [], []
    while len(start):
        n = np.maximum(1, np.ceil(length / step_mm)).astype(int)
        seg = np.repeat(np.arange(len(start)), n)
        t = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + 0.5) / np.repeat(n, n)
        points.append(start[seg] + direction[seg] * (t * length[seg])[:, None])
        point_radii.append(radius[seg])
        keep = radius * 0.8 >= 0.5
        end = (start + direction * length[:, None])[keep]
        parent = direction[keep]
        perp = np.cross(parent, rng.normal(size=parent.shape))
        perp /= np.linalg.norm(perp, axis=1, keepdims=True) + 1e-9
        angles = rng.uniform(0.3, 0.7, size=(2, len(parent), 1))
        children = [np.cos(a) * parent + s * np.sin(a) * perp for a, s in zip(angles, (1, -1), strict=True)]
        start = np.concatenate([end, end])
        direction = np.concatenate(children)
        radius = np.tile(radius[keep] * 0.8, 2)
        length = np.tile(length[keep] * 0.85, 2) * rng.uniform(0.7, 1.3, size=2 * keep.sum())
    return np.concatenate(points), np.concatenate(point_radii)


def _splat_vessels(points, radii, to_index, shape, pixel: float, dz: float) -> np.ndarray:
    """Vessel volume fraction per voxel (``pixel`` x ``pixel`` x ``dz`` mm): each point deposits its
    share of ``pi r^2 dl`` and is spread in-plane by a Gaussian of the same area (so thin in-plane
    vessels get partial volume)."""
    idx = to_index(points)
    inside = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    idx, radii = idx[inside], radii[inside]
    flat = np.ravel_multi_index(idx.T, shape)
    step = pixel / 2
    fraction = np.zeros(shape, np.float32)
    for lo, hi in ((0.0, 1.2), (1.2, 2.5), (2.5, np.inf)):
        sel = (radii >= lo) & (radii < hi)
        if not sel.any():
            continue
        volume = np.pi * radii[sel] ** 2 * step / (pixel**2 * dz)
        grid = np.bincount(flat[sel], volume, minlength=fraction.size).reshape(shape).astype(np.float32)
        sigma = max(np.median(radii[sel]) / np.sqrt(2) / pixel, 0.5)
        fraction += ndimage.gaussian_filter(grid, (sigma, sigma, 0))
    return np.clip(fraction, 0.0, 1.0)


def generate_study(
    category: str,
    rng_seed: int | np.random.SeedSequence,
    matrix: int | None = None,
    _n_slices: int | None = None,
    scanner: str | ScannerProfile = "mosmed",
) -> SyntheticStudy:
    """Generate one synthetic chest CT of MosMedData ``category`` ("CT-0" ... "CT-4").

    Args:
        category: the MosMedData category; sets only the lesion burden.
        rng_seed: an int or a ``numpy.random.SeedSequence``; equal seeds give equal studies.
        matrix: in-plane size; the field of view is that of a 512 matrix. ``None``: the scanner
            profile's default (512 for ``"mosmed"``, 384 for ``"shifted"``).
        _n_slices: force the slice count (tests use few slices); otherwise 33-54 at 8 mm for
            ``"mosmed"``, the same coverage at the profile's spacing for others.
        scanner: a name in :data:`SCANNERS` or a :class:`ScannerProfile`; sets only scanner settings.

    Returns:
        the :class:`SyntheticStudy`.
    """
    if category not in CATEGORY_BANDS:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORY_BANDS)}")
    profile = get_scanner(scanner)
    matrix = profile.matrix if matrix is None else matrix
    factor = check_matrix(matrix)
    seq = rng_seed if isinstance(rng_seed, np.random.SeedSequence) else np.random.SeedSequence(rng_seed)
    nuisance_seq, lesion_seq, texture_seq = (
        np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, i)) for i in range(3)
    )
    rng = np.random.default_rng(nuisance_seq)
    p = draw_nuisance(rng, matrix, _n_slices, profile)
    lesion = draw_lesions(np.random.default_rng(lesion_seq), category)

    work = matrix // factor
    px = p["fov_mm"] / work
    nz = p["n_slices"]
    dz = p["slice_mm"]
    shape = (work, work, nz)
    spacing = (px, px, dz)

    # grid -> body frame (rotated, shifted patient); x = patient left, y = anterior, z = superior
    g = (np.arange(work, dtype=np.float32) - (work - 1) / 2) * px
    gx, gy = np.meshgrid(g, g, indexing="ij")
    rot = np.deg2rad(p["rotation_deg"])
    cr, sr = np.float32(np.cos(rot)), np.float32(np.sin(rot))
    x = cr * (gx - p["shift_x_mm"]) + sr * (gy - p["shift_y_mm"])
    y = -sr * (gx - p["shift_x_mm"]) + cr * (gy - p["shift_y_mm"])
    z = (np.arange(nz, dtype=np.float32) * dz)[None, None, :]

    def to_index(pts: np.ndarray) -> np.ndarray:
        bx, by = pts[:, 0], pts[:, 1]
        wx = cr * bx - sr * by + p["shift_x_mm"]
        wy = sr * bx + cr * by + p["shift_y_mm"]
        return np.stack([wx / px + (work - 1) / 2, wy / px + (work - 1) / 2, pts[:, 2] / dz], 1).round().astype(int)

    # body wall: an ellipse flatter at the back; depth = first-order distance from the skin (mm)
    a = p["body_a"]
    b = a * p["body_b_ratio"]
    by_ = np.where(y < 0, 0.9 * b, b)
    rho = np.sqrt((x / a) ** 2 + (y / by_) ** 2)
    grad = np.sqrt((x / a**2) ** 2 + (y / by_**2) ** 2) / np.maximum(rho, 1e-3)
    depth = (1 - rho) / np.maximum(grad, 1e-4)
    back = 0.9 * b
    spine_y = -back + 55.0
    paraspinal = 28.0 * np.exp(-((x / 45.0) ** 2)) * (y < 0)
    muscle_end = 2 + p["fat_mm"] + p["muscle_mm"] + paraspinal
    wall = muscle_end + 8.0
    fat_tex = smooth_field(rng, (*shape[:2], 1), 4.0, spacing)[..., 0]

    hu2d = np.full(shape[:2], AIR_HU, np.float32)
    hu2d = np.where(depth > 0, 30.0, hu2d)
    hu2d = np.where(depth > 2, p["fat_hu"] + 8 * fat_tex, hu2d)
    hu2d = np.where(depth > 2 + p["fat_mm"], p["muscle_hu"], hu2d)
    # couch below the patient
    couch = (y < -back - p["table_gap_mm"]) & (y > -back - p["table_gap_mm"] - 8) & (np.abs(x) < 0.8 * a)
    hu2d = np.where(couch, 150.0, hu2d)
    hu = np.repeat(hu2d[..., None], nz, axis=2)

    # ribs: bands in the rib zone, sloping down anteriorly; cortical rim on both faces
    theta_y = np.clip(y / b, -1, 1)[..., None]
    rib_phase = (z + 45.0 * (1 + theta_y) / 2 + p["rib_phase_mm"]) * (2 * np.pi / p["rib_pitch_mm"])
    in_rib_zone = ((depth > muscle_end + 1) & (depth < wall - 1))[..., None]
    rib = in_rib_zone & (np.cos(rib_phase) > 0.35)
    rim = np.minimum(depth - muscle_end - 1, wall - 1 - depth)[..., None]
    rib_hu = np.where(rim < 1.8, p["cortical_hu"], p["bone_hu"])
    cartilage = ((np.abs(x) < 35) & (y > 0))[..., None]
    hu = np.where(rib, np.where(cartilage, 130.0, rib_hu), hu)

    # thoracic cavity, lung apex and diaphragm domes
    cavity_depth = (depth - wall)[..., None]
    base = p["lung_base_mm"]
    apex = base + p["lung_height_mm"]
    lateral = a - 12.0 - p["fat_mm"] - p["muscle_mm"]
    side_x = 0.5 * lateral
    dome = np.zeros(shape, np.float32)
    for sx, extra in ((-side_x, p["right_dome_extra_mm"]), (side_x, 0.0)):
        bump = 1 - ((x - sx) / (0.85 * lateral)) ** 2 - ((y - 0.1 * b) / (0.9 * b)) ** 2
        dome = np.maximum(dome, (base + (p["dome_mm"] + extra) * np.clip(bump, 0, 1))[..., None])
    above = np.clip((z + dz / 2 - dome) / dz, 0, 1)  # partial volume of lung above the dome in the slice
    s_apex = np.clip((z - (apex - 80.0)) / 80.0, 0, 1)
    apex_shrink = 0.7 * lateral * (1 - np.sqrt(1 - s_apex**2))
    cavity = (cavity_depth > 0) & (z < apex + 30)

    med = (p["mediastinum_mm"] * (0.8 + 0.6 * np.exp(-(((y - 0.3 * b) / (0.4 * b)) ** 2))))[..., None]
    heart_c = np.array([18.0, 0.25 * b, base + p["dome_mm"] + 45.0])
    hs = p["heart_scale"] * np.array([60.0, 0.45 * b, 55.0])
    heart = (((x - heart_c[0]) / hs[0]) ** 2 + ((y - heart_c[1]) / hs[1]) ** 2)[..., None] + (
        (z - heart_c[2]) / hs[2]
    ) ** 2 < 1
    heart &= z >= dome
    aorta = (((x - 20.0) ** 2 + (y - spine_y - 30.0) ** 2) < 12.0**2)[..., None] & (z < apex - 20)
    vertebra_r = np.sqrt(x**2 + (y - spine_y) ** 2)
    mediastinum = (np.abs(x)[..., None] < med) | heart | aorta | (vertebra_r < 24)[..., None]
    lung_space = cavity & ~mediastinum & (cavity_depth > apex_shrink) & (z < apex)
    lung_frac = lung_space * above

    med_tex = smooth_field(rng, shape, 6.0, spacing)
    soft = np.where(med_tex > 0.4, p["fat_hu"], p["muscle_hu"] - 5)
    abdomen = np.where(x[..., None] < 25, p["liver_hu"], np.where(med_tex > 0.6, p["fat_hu"], 40.0))
    inside = np.where(z < dome, abdomen, soft)
    inside = np.where(heart, np.where(med_tex > 1.2, p["fat_hu"], 42.0), inside)
    hu = np.where(cavity_depth > 0, inside, hu)

    # spine and sternum
    canal = np.sqrt(x**2 + (y - spine_y + 28) ** 2)
    vertebra = np.where(vertebra_r < 16, p["bone_hu"], np.where(vertebra_r < 18.5, p["cortical_hu"], np.nan))
    vertebra = np.where(
        np.isnan(vertebra) & (canal > 8) & (canal < 13) & (y < spine_y - 14), p["cortical_hu"], vertebra
    )
    vertebra = np.where(canal <= 8, 15.0, vertebra)
    sternum = ((x / 14) ** 2 + ((y - (b - 2 - p["fat_mm"] - p["muscle_mm"] - 6)) / 6) ** 2) < 1
    vertebra = np.where(sternum, p["bone_hu"] + 150, vertebra)
    hu = np.where(np.isnan(vertebra)[..., None], hu, vertebra[..., None])

    # trachea above the carina, main bronchi below it
    carina = apex - 0.4 * p["lung_height_mm"]
    tz = z[0, 0]
    airway_x = np.where(tz > carina, 0.0, np.clip((carina - tz) * 0.8, 0, 40.0))
    airway_ok = (tz > carina - 45) & (tz < apex + 30)
    for sgn in (-1.0, 1.0):
        r = np.sqrt((x[..., None] - sgn * airway_x) ** 2 + (y - spine_y - 38.0)[..., None] ** 2)
        lumen = np.where(tz > carina, 9.0, 6.5)
        hu = np.where(airway_ok & (r < lumen + 2), np.where(r < lumen, AIR_HU, p["muscle_hu"]), hu)

    # lung parenchyma: texture, dependent density at the back and bases, vessel tree
    lung_tex = smooth_field(rng, shape, 3.0, spacing)
    basal = np.clip((base + p["dome_mm"] + 40 - z) / 80.0, 0, 1)
    dependent = (
        p["dependent_hu"]
        * np.exp(-np.maximum(cavity_depth, 0) / p["dependent_mm"])
        * (1 / (1 + np.exp(y / 20.0)))[..., None]
        * (0.4 + 0.6 * basal)
    )
    lung_hu = p["lung_hu"] + p["lung_texture_hu"] * lung_tex + dependent
    hilum_z = carina - 20.0
    hila = [np.array([s * (p["mediastinum_mm"] + 12), spine_y + 45.0, hilum_z]) for s in (-1.0, 1.0)]
    pts, radii = _vessel_points(rng, p, hila, px / 2)
    vessels = _splat_vessels(pts, radii, to_index, shape, px, dz) * lung_space
    lung_hu = lung_hu * (1 - vessels) + p["vessel_hu"] * vessels
    lung_mask = lung_frac > 0.5

    # opacities: thresholded smooth noise plus a peripheral / posterior / basal prior
    lesion_mask = np.zeros(shape, bool)
    if lesion["target_fraction"] > 0:
        lrng = np.random.default_rng(texture_seq)
        noise = 0.8 * smooth_field(lrng, shape, lesion["scale_mm"], spacing)
        noise += 0.35 * smooth_field(lrng, shape, 5.0, spacing)
        prior = (
            lesion["peripheral_weight"] * np.exp(-np.maximum(cavity_depth, 0) / 25.0)
            + lesion["posterior_weight"] * (-y / b)[..., None]
            + lesion["basal_weight"] * basal
            + lesion["left_right_bias"] * np.sign(x)[..., None]
        )
        score = noise + prior
        thr = np.quantile(score[lung_mask], 1 - lesion["target_fraction"])
        faint, core = np.quantile(
            score[lung_mask & (score > thr)], [lesion["faint_share"], 1 - lesion["consolidation_share"]]
        )
        edge = np.clip((score - thr) / 0.25 + 0.5, 0, 1)
        # density rises from faint ground glass (lung + faint_hu) at the margin to ggo_hu inside
        rise = np.clip((score - faint) / 0.2, 0, 1)
        ggo_hu = lesion["faint_hu"] + (lesion["ggo_hu"] - p["lung_hu"] - lesion["faint_hu"]) * rise
        ggo = lung_hu + ggo_hu * (1 - vessels)
        opacity = np.where(score > core, lesion["consolidation_hu"] + 15 * lung_tex, ggo)
        bronchogram = (vessels > 0.3) & (vessels < 0.8) & (score > core)
        opacity = np.where(bronchogram, -900.0, opacity)
        lung_hu = lung_hu + (opacity - lung_hu) * edge
        lesion_mask = lung_mask & (score > thr)

    hu = np.where(lung_frac > 0, lung_frac * lung_hu + (1 - lung_frac) * hu, hu)

    # reconstruction kernel at the working grid, then upsample and add kernel-shaped noise
    # widths in pixels of a 512 matrix, converted to working pixels
    to_work = work / 512
    blur, sharpen, corr = KERNELS[p["kernel"]]
    if blur * to_work > 0.25:
        hu = ndimage.gaussian_filter(hu, (blur * to_work,) * 2 + (0,))
    if sharpen * to_work > 0.25:
        hu = hu + 0.7 * (hu - ndimage.gaussian_filter(hu, (sharpen * to_work,) * 2 + (0,)))
    hu = upsample(hu.astype(np.float32), factor)
    noise = rng.standard_normal(shape, dtype=np.float32)
    if corr * to_work > 0.25:
        noise = ndimage.gaussian_filter(noise, (corr * to_work,) * 2 + (0,))
        noise /= noise.std() + 1e-6
    if factor > 1:
        noise = upsample(noise, factor) / np.float32(np.sqrt(_upsample_variance(factor)))
        white = 0.3 if sharpen > 0 else 0.1
        noise = np.sqrt(1 - white) * noise + np.sqrt(white) * rng.standard_normal(noise.shape, dtype=np.float32)
    hu += np.float32(p["noise_hu"]) * noise

    full = (np.arange(matrix, dtype=np.float32) - (matrix - 1) / 2) * p["pixel_mm"]
    outside = (full[:, None] ** 2 + full[None, :] ** 2) > (p["fov_mm"] / 2) ** 2
    image = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    image[outside] = p["padding_hu"]

    def to_full(m: np.ndarray) -> np.ndarray:
        m = np.repeat(np.repeat(m, factor, 0), factor, 1)
        m[outside] = False
        return m

    lung_full = to_full(lung_mask)
    mask = to_full(lesion_mask).astype(np.uint8)
    fraction = float(mask.sum() / max(lung_full.sum(), 1))

    half = (matrix - 1) / 2 * p["pixel_mm"]
    affine = np.diag([-p["pixel_mm"], p["pixel_mm"], dz, 1.0])
    affine[:3, 3] = [half, -half, p["origin_z_mm"]]
    if profile.orientation == "RAS":
        # same voxels in the world, stored from patient right to left
        image, mask = np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1])
        affine[0, 0], affine[0, 3] = p["pixel_mm"], -half
    params = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in {**p, **lesion}.items()}
    params["lung_voxels"] = int(lung_full.sum())
    return SyntheticStudy(image=image, mask=mask, affine=affine, lesion_fraction=fraction, params=params)
