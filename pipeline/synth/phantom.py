"""Synthetic chest-CT phantom: anatomy, normal findings and COVID-19-like opacities in HU.

One study is a non-contrast chest CT. The scanner profile ``"mosmed"`` (default) gives the
MosMedData geometry: ``matrix x matrix x (33-54)`` voxels, in-plane pixel 0.58-1.15 mm (at a 512
matrix), 8 mm slices, LAS orientation, int16 HU. The profile ``"shifted"`` draws the scanner from
another distribution (2.5-5 mm slices over the same 264-432 mm coverage, RAS orientation, lower
noise, sharper kernels, other padding, a 384 default matrix) while patient and lesions keep theirs. The
profile ``"foreign"`` changes everything: 5 mm LPS slices, low-dose sharp reconstructions, other patients
(anatomy, lung texture) and another mix of lesion patterns (:data:`SCANNERS`).
Voxel arrays are built as ``(x, y, z)`` = (towards patient left, towards anterior, towards superior)
and flipped along x for R and along y for P output orientations. Lesions are drawn and painted by
:mod:`pipeline.synth.lesions`.

Anatomy and smooth random fields are built on a working grid of at most 256 pixels a side and
upsampled bilinearly; scanner noise is added at full resolution. Every random draw comes from the
study's seed; nuisance parameters (patient, scanner, breathing) come from a stream that the
category never touches, so they are distributed identically in every category and the only
systematic difference between categories is the opacity burden in the lungs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.synth.fields import _upsample_variance, blob_field, smooth_field, splat, upsample
from pipeline.synth.lesions import CATEGORY_BANDS, draw_lesions, paint_lesions

SLICE_SPACING_MM = 8.0
#: Slice counts and in-plane pixel spacing (mm, at a 512 matrix) seen in MosMedData.
SLICE_RANGE = (33, 54)
PIXEL_RANGE_512 = (0.58, 1.15)
#: Lung height in mm from the costophrenic recesses to the apices (adults, CT at inspiration).
LUNG_HEIGHT_MM = (215.0, 295.0)
#: Scan margins in mm below the costophrenic recesses (domes and upper abdomen) and above the apices.
BELOW_LUNG_MM = (5.0, 35.0)
ABOVE_LUNG_MM = (5.0, 30.0)
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
        orientation: ``"LAS"``, ``"RAS"`` or ``"LPS"`` axis codes of the saved arrays.
        matrix: in-plane size used when the caller gives none.
        anatomy: (low, high) ranges that replace the default uniform draws of the patient's anatomy and
            lung texture, by name (keys of :data:`ANATOMY_RANGES`); empty = the MosMedData-like patients.
        lesion_rates: primary lesion-pattern rates per category instead of
            :data:`pipeline.synth.lesions.PRIMARY_RATES`; ``None`` = those.
        lesion_hu_shift: (low, high) of a uniform shift of every lesion HU level, drawn per study.

    Only a profile with ``anatomy``, ``lesion_rates`` or ``lesion_hu_shift`` changes the patients and lesions
    (``"foreign"``); ``"mosmed"`` and ``"shifted"`` differ in scanner settings alone.
    """

    name: str
    slice_mm: tuple[float, float]
    kernels: tuple[str, ...]
    kernel_p: tuple[float, ...] | None
    noise_hu: tuple[float, float]
    padding_hu: tuple[int, ...]
    orientation: str
    matrix: int
    anatomy: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    lesion_rates: Mapping[str, Mapping[str, float]] | None = None
    lesion_hu_shift: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        unknown = set(self.anatomy) - set(ANATOMY_RANGES)
        if unknown or self.orientation not in ORIENTATIONS:
            raise ValueError(
                f"profile {self.name!r}: unknown anatomy {sorted(unknown)} or orientation {self.orientation!r}"
            )


#: The patient's anatomy and lung texture, drawn uniformly in these (low, high) ranges unless a profile's
#: ``anatomy`` replaces them (lung heights in mm, HU levels and amplitudes, scales as factors).
ANATOMY_RANGES: dict[str, tuple[float, float]] = {
    "lung_height_mm": LUNG_HEIGHT_MM,
    "body_a": (145.0, 185.0),
    "body_b_ratio": (0.62, 0.78),
    "fat_mm": (3.0, 16.0),
    "muscle_mm": (5.0, 11.0),
    "lung_hu_offset": (-10.0, 10.0),
    "lung_texture_hu": (6.0, 12.0),
    "lung_lobular_hu": (12.0, 24.0),
    "lung_regional_hu": (4.0, 12.0),
    "dependent_hu": (15.0, 75.0),
    "ap_gradient_hu": (0.0, 60.0),
    "mediastinum_mm": (18.0, 28.0),
    "heart_scale": (0.9, 1.15),
    "vessel_root_mm": (4.5, 6.0),
    "vessel_hu": (30.0, 50.0),
}
#: Axis codes a profile may save in; arrays are built LAS and mirrored along x (R) or y (P).
ORIENTATIONS = ("LAS", "RAS", "LPS")


SCANNERS: dict[str, ScannerProfile] = {
    "mosmed": ScannerProfile(
        name="mosmed",
        slice_mm=(SLICE_SPACING_MM, SLICE_SPACING_MM),
        kernels=("smooth", "standard", "sharp"),
        kernel_p=None,
        noise_hu=(5.0, 18.0),
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
    # deliberately unlike the training generator: 5 mm LPS slices, sharp low-dose reconstructions, other
    # patients (sizes, heart, denser and coarser lungs) and another mix of lesion patterns and densities
    "foreign": ScannerProfile(
        name="foreign",
        slice_mm=(5.0, 5.0),
        kernels=("sharp", "lung", "smooth"),
        kernel_p=(0.45, 0.45, 0.1),
        noise_hu=(15.0, 35.0),
        padding_hu=(-1000, -2000),
        orientation="LPS",
        matrix=512,
        anatomy={
            "lung_height_mm": (190.0, 300.0),
            "body_a": (130.0, 200.0),
            "body_b_ratio": (0.55, 0.85),
            "fat_mm": (2.0, 28.0),
            "lung_hu_offset": (0.0, 40.0),
            "lung_texture_hu": (10.0, 20.0),
            "lung_lobular_hu": (20.0, 36.0),
            "lung_regional_hu": (8.0, 20.0),
            "dependent_hu": (40.0, 130.0),
            "mediastinum_mm": (22.0, 34.0),
            "heart_scale": (1.05, 1.35),
            "vessel_root_mm": (5.5, 7.0),
        },
        lesion_rates={
            "CT-1": {
                "round_ggo": 0.2,
                "subpleural": 0.15,
                "patchy_ggo": 0.2,
                "crazy_paving": 0.05,
                "organizing": 0.05,
                "lobar": 0.15,
                "bronchopneumonia": 0.2,
            },
            "CT-2": {
                "patchy_ggo": 0.2,
                "round_ggo": 0.05,
                "subpleural": 0.05,
                "crazy_paving": 0.1,
                "organizing": 0.1,
                "diffuse_reticular": 0.2,
                "lobar": 0.15,
                "bronchopneumonia": 0.15,
            },
            "CT-3": {
                "patchy_ggo": 0.2,
                "crazy_paving": 0.1,
                "organizing": 0.05,
                "diffuse_reticular": 0.35,
                "lobar": 0.15,
                "bronchopneumonia": 0.15,
            },
            "CT-4": {
                "patchy_ggo": 0.25,
                "crazy_paving": 0.1,
                "diffuse_reticular": 0.5,
                "lobar": 0.1,
                "bronchopneumonia": 0.05,
            },
        },
        lesion_hu_shift=(-60.0, 40.0),
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
            ``("L", "A", "S")`` for ``"mosmed"``, ``("R", "A", "S")`` for ``"shifted"``, ``("L", "P", "S")`` for
            ``"foreign"``.
        lesion_fraction: lesion voxels / lung voxels, measured on ``mask``.
        params: every drawn parameter (patient, scanner, mimics, lesions), JSON-serialisable.
        mimic_mask: bool, same shape: the solid mimics (nodules, mass, scars, plate atelectasis),
            never part of ``mask``; not written to disk.
        lung: bool, same shape: the true lung region (aerated and diseased lung alike, everything the lesions
            may occupy), the reference a lung mask is tested against; not written to disk.
    """

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    lesion_fraction: float
    params: dict[str, Any] = field(default_factory=dict)
    mimic_mask: np.ndarray | None = None
    lung: np.ndarray | None = None


def check_matrix(matrix: int) -> int:
    """Return the in-plane upsampling factor for ``matrix``; raise ``ValueError`` if unsupported.

    A matrix is a multiple of 16 in [32, 1024]; it is built at ``matrix // factor <= 256`` pixels.
    """
    if not isinstance(matrix, (int, np.integer)) or matrix < 32 or matrix > 1024 or matrix % 16:
        raise ValueError(f"matrix must be a multiple of 16 between 32 and 1024, got {matrix!r}")
    return next(f for f in (1, 2, 4) if matrix // f <= WORK_MAX)


#: Findings that mimic disease, drawn in EVERY category at these rates from the nuisance stream (so
#: they carry no label) and never part of the lesion mask: name -> probability per study.
MIMIC_RATES: dict[str, float] = {
    "nodule": 0.30,  # 1-3 solid nodules, 5-30 mm, 0-50 HU
    "mass": 0.05,  # one lobulated mass, 30-60 mm
    "scar": 0.20,  # 1-3 linear scars
    "atelectasis": 0.20,  # plate (discoid) atelectasis at the bases
    "emphysema": 0.15,  # centrilobular low attenuation (-950..-1000 HU), upper zones
    "dependent_band": 0.30,  # posterior subpleural band of dependent density (-700..-500 HU)
    "motion": 0.20,  # cardiac / diaphragm motion: doubling and blur near the heart
    "streaks": 0.30,  # streaks from shoulders / arms, or (1 in 3) from a metal object
}
#: Rates of the other nuisance findings outside the lungs.
ARMS_DOWN_P = 0.30
#: Gas under the diaphragm: a stomach bubble under the left dome, colon flexures under both domes.
STOMACH_GAS_P = 0.80
COLON_GAS_P = 0.70
BREASTS_P = 0.35
CONTRAST_P = 0.30
COUCHES = ("flat", "curved", "double")
#: Keys of :func:`pipeline.synth.lesions.draw_lesions`: the only parameters that depend on the category.
LESION_KEYS = (
    "target_fraction",
    "patterns",
    "peripheral_weight",
    "posterior_weight",
    "basal_weight",
    "left_right_bias",
    "lesions",
)


def draw_nuisance(
    rng: np.random.Generator, matrix: int, n_slices: int | None = None, scanner: ScannerProfile = SCANNERS["mosmed"]
) -> dict[str, Any]:
    """Draw patient, breathing, scanner and mimic parameters (never depends on the category).

    The craniocaudal coverage is that of 33-54 MosMedData slices of 8 mm in every profile; the
    slice count is the coverage over the profile's slice spacing, or ``n_slices`` when given (then
    the coverage is ``n_slices`` times the spacing).
    """
    u = rng.uniform

    def r(name: str) -> float:
        return u(*scanner.anatomy.get(name, ANATOMY_RANGES[name]))

    pixel_512 = u(*PIXEL_RANGE_512)
    fov = 512 * pixel_512
    # lung height (costophrenic recess to apex) drawn on its own, then the scan planned around it as
    # in MosMedData: from above the apices (lower neck) to below the costophrenic recesses (upper abdomen)
    lung_height = r("lung_height_mm")
    below_mm = u(*BELOW_LUNG_MM)
    above_mm = u(*ABOVE_LUNG_MM)
    kernel = str(rng.choice(list(scanner.kernels), p=scanner.kernel_p))
    # inspiration level: deeper breath = lower domes and darker lungs (real normals: median -850..-790 HU)
    inspiration = u(0.0, 1.0)
    p = {
        "scanner": scanner.name,
        "pixel_mm": fov / matrix,
        "fov_mm": fov,
        # body: lateral / AP semi-axes (mm), capped so the lungs stay in the field of view
        "body_a": min(r("body_a"), 0.52 * fov),
        "body_b_ratio": r("body_b_ratio"),
        "fat_mm": r("fat_mm"),
        "muscle_mm": r("muscle_mm"),
        "rotation_deg": u(-6.0, 6.0),
        "shift_x_mm": u(-15.0, 15.0),
        "shift_y_mm": u(-25.0, 10.0),
        "table_gap_mm": u(5.0, 40.0),
        # breathing: base position in the scan, parenchymal density (lung height below)
        "inspiration": inspiration,
        "dome_mm": 50.0 - 20.0 * inspiration + u(-6.0, 6.0),
        "right_dome_extra_mm": u(5.0, 20.0),
        # full inspiration reaches -920 HU parenchyma (a lung median near -880 HU with vessels), shallow -800
        "lung_hu": -815.0 - 125.0 * inspiration + r("lung_hu_offset"),
        "lung_texture_hu": r("lung_texture_hu"),
        # secondary-lobule-scale heterogeneity (5-15 mm): lobules, small vessels below the resolution
        "lung_lobular_hu": r("lung_lobular_hu"),
        "lung_regional_hu": r("lung_regional_hu"),
        "dependent_hu": r("dependent_hu"),
        "dependent_mm": u(6.0, 16.0),
        "mediastinum_mm": r("mediastinum_mm"),
        "heart_scale": r("heart_scale"),
        "vessel_root_mm": r("vessel_root_mm"),
        "vessel_hu": r("vessel_hu"),
        "fissure_tilt": u(0.8, 1.3),
        "fat_hu": u(-115.0, -85.0),
        "muscle_hu": u(38.0, 55.0),
        "liver_hu": u(50.0, 70.0),
        "bone_hu": u(200.0, 350.0),
        "cortical_hu": u(700.0, 1200.0),
        "rib_pitch_mm": u(22.0, 30.0),
        "rib_phase_mm": u(0.0, 30.0),
        # outside the lungs
        "arms_down": bool(rng.random() < ARMS_DOWN_P),
        "breasts": bool(rng.random() < BREASTS_P),
        "couch": str(rng.choice(COUCHES)),
        "contrast": bool(rng.random() < CONTRAST_P),
        "contrast_hu": u(150.0, 300.0),
        "scapula_mm": u(80.0, 140.0),
        # scanner
        "kernel": kernel,
        "noise_hu": u(*scanner.noise_hu),
        "padding_hu": int(rng.choice(scanner.padding_hu)),
        "origin_z_mm": u(-450.0, -150.0),
    }
    for name, rate in MIMIC_RATES.items():
        p[f"mimic_{name}"] = bool(rng.random() < rate)
    lo, hi = scanner.slice_mm
    dz = lo if lo == hi else u(lo, hi)
    if n_slices is None:
        # MosMedData slice count (8 mm) covering lungs and margins; a short plan is extended both ways
        need = lung_height + below_mm + above_mm
        n_ref = int(np.clip(np.ceil(need / SLICE_SPACING_MM) + 1, *SLICE_RANGE))
        extent = n_ref * SLICE_SPACING_MM
        below_mm += 0.5 * max(extent - SLICE_SPACING_MM - need, 0.0)
        n = max(1, round(extent / dz))
    else:
        # forced slice count (tests): the lungs fill what the coverage leaves after the margins
        n = int(n_slices)
        extent = n * dz
        spare = max((n - 1) * dz, 1.0)
        lung_height = min(lung_height, max(spare - below_mm - above_mm, 0.6 * spare))
        below_mm = min(below_mm, max(spare - lung_height, 0.0) * 0.6)
    # slice centres run from 0 to (n - 1) * dz
    top_margin = (n - 1) * dz - below_mm - lung_height
    p.update(slice_mm=dz, n_slices=n, coverage_mm=extent, lung_base_mm=below_mm, lung_height_mm=lung_height)
    p["top_margin_mm"] = top_margin
    # drawn last, so that every earlier draw of a seed is what it was before they came
    p.update(
        # supine gravity gradient across the whole lung, front to back
        ap_gradient_hu=r("ap_gradient_hu"),
        # slice sensitivity profile (effective thickness / spacing): partial volume at the domes
        slice_profile=u(1.0, 1.5),
        stomach_gas=bool(rng.random() < STOMACH_GAS_P),
        colon_gas=bool(rng.random() < COLON_GAS_P),
    )
    return p


def mimics_of(params: dict[str, Any]) -> str:
    """The mimics present in a study, ``"+"``-joined (``"none"`` if none), from its params."""
    names = [name for name in MIMIC_RATES if params.get(f"mimic_{name}")]
    return "+".join(names) or "none"


def _vessel_tree(rng: np.random.Generator, root_mm: float, hila: list[np.ndarray], step_mm: float, min_mm=0.5):
    """Centerline points (N, 3) in body mm, radii (N,) and unit directions (N, 3) of two vessel trees.

    Monopodial branching: each segment (5-12 mm) tapers exponentially with path length (radius
    falls e-fold every 35-55 mm, so 5 mm hilar arteries reach the pleura at about 0.5 mm); at its
    end the trunk goes on almost straight and a side branch of 0.5-0.85 of its radius leaves at
    0.5-1.0 rad. Branches lean outwards from the hilum; they stop below ``min_mm``.
    """
    starts, dirs, origins = [], [], []
    for side, hilum in zip((-1.0, 1.0), hila, strict=True):
        for d in ROOT_DIRECTIONS * 2:  # each direction twice (jittered): arteries and veins
            d = np.array((d[0] * side, d[1], d[2])) + rng.normal(0.0, 0.25, 3)
            starts.append(hilum)
            dirs.append(d / np.linalg.norm(d))
            origins.append(hilum)
    start, direction, origin = np.array(starts), np.array(dirs), np.array(origins)
    radius = root_mm * rng.uniform(0.8, 1.1, len(start))
    taper = rng.uniform(60.0, 80.0)
    points, point_radii, point_dirs = [], [], []
    while len(start):
        length = rng.uniform(5.0, 12.0, len(start))
        n = np.maximum(1, np.ceil(length / step_mm)).astype(int)
        seg = np.repeat(np.arange(len(start)), n)
        t = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + 0.5) / np.repeat(n, n)
        s = t * length[seg]
        points.append(start[seg] + direction[seg] * s[:, None])
        point_radii.append(radius[seg] * np.exp(-s / taper))
        point_dirs.append(direction[seg])
        end = start + direction * length[:, None]
        r_end = radius * np.exp(-length / taper)
        perp = np.cross(direction, rng.normal(size=direction.shape))
        perp /= np.linalg.norm(perp, axis=1, keepdims=True) + 1e-9
        out = end - origin
        out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-9
        new_s, new_d, new_r, new_o = [], [], [], []
        for r_child, (alo, ahi), sgn in (
            (r_end, (0.0, 0.2), 1.0),
            (r_end * rng.uniform(0.5, 0.85, len(start)), (0.5, 1.0), -1.0),
        ):
            keep = r_child >= min_mm
            a = rng.uniform(alo, ahi, size=(len(start), 1))
            child = np.cos(a) * direction + sgn * np.sin(a) * perp + 0.15 * out
            child /= np.linalg.norm(child, axis=1, keepdims=True)
            new_s.append(end[keep])
            new_d.append(child[keep])
            new_r.append(r_child[keep])
            new_o.append(origin[keep])
        start, direction = np.concatenate(new_s), np.concatenate(new_d)
        radius, origin = np.concatenate(new_r), np.concatenate(new_o)
    return np.concatenate(points), np.concatenate(point_radii), np.concatenate(point_dirs)


def _lines(gx, gy, x0: float, y0: float, angles, amps, width: float, decay: float) -> np.ndarray:
    """Streaks: lines through (x0, y0) (mm) at ``angles`` with amplitudes ``amps`` (HU), Gaussian
    cross-section ``width`` mm, fading with distance from the source over ``decay`` mm; 2D float32."""
    dx, dy = gx - np.float32(x0), gy - np.float32(y0)
    out = np.zeros(gx.shape, np.float32)
    for t, amp in zip(angles, amps, strict=True):
        d = dx * np.float32(np.sin(t)) - dy * np.float32(np.cos(t))
        out += np.float32(amp) * np.exp(-((d / np.float32(width)) ** 2))
    return out * np.exp(-np.sqrt(dx**2 + dy**2) / np.float32(decay))


def _abdominal_gas(rng, p, hu, x, y, zz, cavity, dome, side_x: float, lateral: float, b: float, spacing) -> None:
    """Paint gas (in place, slices below the domes only, 5 mm under the diaphragm): a stomach with an
    air-fluid level under the left dome and gas-filled colon loops (splenic and hepatic flexures) with
    mottled stool; never lung, never lesion."""
    ks = np.flatnonzero(zz < dome.max())
    if not len(ks) or not (p["stomach_gas"] or p["colon_gas"]):
        return
    sub = np.s_[:, :, ks[0] : ks[-1] + 1]
    z = zz[sub[2]][None, None, :]
    under = cavity[sub] & (z < dome[sub] - 5.0)
    gas = np.zeros(under.shape, bool)
    fluid = np.zeros(under.shape, bool)
    base = p["lung_base_mm"]
    if p["stomach_gas"]:
        axes = rng.uniform(0.6, 1.0) * np.array([45.0, 0.3 * b, 30.0])
        top = base + p["dome_mm"] - 8.0
        centre = (side_x + rng.uniform(-10.0, 10.0), 0.15 * b, top - axes[2])
        e = ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2
        stomach = e[..., None] + ((z - centre[2]) / axes[2]) ** 2 < 1
        level = centre[2] + axes[2] * rng.uniform(-0.2, 0.5)
        gas |= stomach & (z > level)
        fluid |= stomach & (z <= level)
    if p["colon_gas"]:
        mottle = smooth_field(rng, under.shape, 3.0, spacing) > -0.3
        for sx, sy in ((0.8, 0.3), (-0.75, 0.45)):
            r = rng.uniform(8.0, 16.0)
            loop = ((x - sx * lateral) ** 2 + (y - sy * b) ** 2 < r**2)[..., None]
            gas |= loop & mottle
            fluid |= loop & ~mottle
    hu[sub] = np.where(under & gas, AIR_HU, np.where(under & fluid, 15.0, hu[sub]))


def generate_study(
    category: str,
    rng_seed: int | np.random.SeedSequence,
    matrix: int | None = None,
    _n_slices: int | None = None,
    scanner: str | ScannerProfile = "mosmed",
    patterns: Sequence[str] | None = None,
) -> SyntheticStudy:
    """Generate one synthetic chest CT of MosMedData ``category`` ("CT-0" ... "CT-4").

    Args:
        category: the MosMedData category; sets only the lesion burden and appearance.
        rng_seed: an int or a ``numpy.random.SeedSequence``; equal seeds give equal studies.
        matrix: in-plane size; the field of view is that of a 512 matrix. ``None``: the scanner
            profile's default (512 for ``"mosmed"``, 384 for ``"shifted"``).
        _n_slices: force the slice count (tests use few slices); otherwise 33-54 at 8 mm for
            ``"mosmed"``, the same coverage at the profile's spacing for others.
        scanner: a name in :data:`SCANNERS` or a :class:`ScannerProfile`; sets only scanner settings.
        patterns: force these lesion patterns (names in :data:`pipeline.synth.lesions.PATTERNS`, the first
            the primary) instead of drawing them; the involvement stays that of ``category``.

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
    lesion = draw_lesions(
        np.random.default_rng(lesion_seq), category, patterns, profile.lesion_rates, profile.lesion_hu_shift
    )

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
    zz = z[0, 0]

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
    fat2d = p["fat_hu"] + 8 * fat_tex

    hu2d = np.full(shape[:2], AIR_HU, np.float32)
    hu2d = np.where(depth > 0, 30.0, hu2d)
    hu2d = np.where(depth > 2, fat2d, hu2d)
    hu2d = np.where(depth > 2 + p["fat_mm"], p["muscle_hu"], hu2d)
    # arms beside the body (skin, fat, muscle, humerus) in some scans; raised out of the field in the others
    arm_y = -0.05 * b + rng.uniform(-15.0, 15.0)
    arm_r = rng.uniform(35.0, 50.0, 2)
    arm_gap = rng.uniform(3.0, 25.0)
    arm_x = a + arm_gap + arm_r[0]
    if p["arms_down"]:
        for sgn in (-1.0, 1.0):
            ar = np.sqrt(((x - sgn * arm_x) / arm_r[0]) ** 2 + ((y - arm_y) / arm_r[1]) ** 2)
            ad = (1 - ar) * arm_r[0]
            bone = np.sqrt((x - sgn * arm_x) ** 2 + (y - arm_y) ** 2)
            hu2d = np.where(ad > 0, 30.0, hu2d)
            hu2d = np.where(ad > 2, fat2d, hu2d)
            hu2d = np.where(ad > 2 + 0.5 * p["fat_mm"], p["muscle_hu"], hu2d)
            hu2d = np.where(bone < 12.0, np.where(bone < 8.5, p["bone_hu"] - 50, p["cortical_hu"]), hu2d)
    # couch below the patient: flat board, curved shell, or a mattress on a board
    couch_top = -back - p["table_gap_mm"]
    if p["couch"] == "curved":
        couch_top = couch_top + 0.35 * (x / a) ** 2 * 40.0
    couch_th = rng.uniform(5.0, 10.0)
    couch = (y < couch_top) & (y > couch_top - couch_th) & (np.abs(x) < rng.uniform(0.7, 0.95) * a)
    hu2d = np.where(couch & (hu2d == AIR_HU), rng.uniform(100.0, 250.0), hu2d)
    if p["couch"] == "double":
        pad = (y < -back) & (y > -back - 0.7 * p["table_gap_mm"]) & (np.abs(x) < 0.9 * a) & (hu2d == AIR_HU)
        hu2d = np.where(pad, rng.uniform(-750.0, -600.0), hu2d)
    hu = np.repeat(hu2d[..., None], nz, axis=2)

    # breasts in some scans: anterior fat with glandular tissue over the mid and lower chest
    if p["breasts"]:
        br = rng.uniform(45.0, 70.0)
        bh = rng.uniform(20.0, 60.0)
        zb = (zz > p["lung_base_mm"] + rng.uniform(10, 40)) & (zz < p["lung_base_mm"] + rng.uniform(110, 170))
        for sgn in (-1.0, 1.0):
            e = ((x - sgn * 0.42 * a) / br) ** 2 + ((y - 0.6 * b) / (0.4 * b + bh)) ** 2
            breast = (e < 1) & (depth <= 0) & (y > 0.3 * b)
            tissue = np.where((fat_tex > 0.4) & (e < 0.6), 35.0, fat2d)
            hu[breast[..., None] & zb] = np.broadcast_to(tissue[..., None], hu.shape)[breast[..., None] & zb]

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
    # scapulae: curved bony plates behind the upper ribs
    scap = (
        (depth > 2 + p["fat_mm"] + 1)
        & (depth < 2 + p["fat_mm"] + 6)
        & (np.abs(x) > 0.3 * a)
        & (np.abs(x) < 0.85 * a)
        & (y < -0.2 * b)
    )[..., None] & (z > apex - p["scapula_mm"])
    hu = np.where(scap, p["bone_hu"] + 100.0, hu)
    lateral = a - 12.0 - p["fat_mm"] - p["muscle_mm"]
    side_x = 0.5 * lateral
    dome = np.zeros(shape, np.float32)
    for sx, extra in ((-side_x, p["right_dome_extra_mm"]), (side_x, 0.0)):
        bump = 1 - ((x - sx) / (0.85 * lateral)) ** 2 - ((y - 0.1 * b) / (0.9 * b)) ** 2
        dome = np.maximum(dome, (base + (p["dome_mm"] + extra) * np.clip(bump, 0, 1))[..., None])
    # partial volume of lung above the dome in the slice (its sensitivity profile a little wider than the
    # spacing): the dome tops show as round hazy areas in the basal slices
    thick = p["slice_profile"] * dz
    above = np.clip((z + thick / 2 - dome) / thick, 0, 1)
    s_apex = np.clip((z - (apex - 80.0)) / 80.0, 0, 1)
    apex_shrink = 0.7 * lateral * (1 - np.sqrt(1 - s_apex**2))
    cavity = (cavity_depth > 0) & (z < apex + 30)

    med = (p["mediastinum_mm"] * (0.8 + 0.6 * np.exp(-(((y - 0.3 * b) / (0.4 * b)) ** 2))))[..., None]
    heart_c = np.array([18.0, 0.25 * b, base + p["dome_mm"] + 45.0])
    hs = p["heart_scale"] * np.array([62.0, 0.45 * b, 55.0])
    heart_e = (((x - heart_c[0]) / hs[0]) ** 2 + ((y - heart_c[1]) / hs[1]) ** 2)[..., None] + (
        (z - heart_c[2]) / hs[2]
    ) ** 2
    heart = (heart_e < 1) & (z >= dome)
    aorta = (((x - 20.0) ** 2 + (y - spine_y - 30.0) ** 2) < 12.0**2)[..., None] & (z < apex - 20)
    vertebra_r = np.sqrt(x**2 + (y - spine_y) ** 2)
    mediastinum = (np.abs(x)[..., None] < med) | heart | aorta | (vertebra_r < 24)[..., None]
    lung_space = cavity & ~mediastinum & (cavity_depth > apex_shrink) & (z < apex)
    lung_frac = lung_space * above

    med_tex = smooth_field(rng, shape, 6.0, spacing)
    soft = np.where(med_tex > 1.0, p["fat_hu"], p["muscle_hu"] - 5)
    abdomen = np.where(x[..., None] < 25, p["liver_hu"], np.where(med_tex > 0.6, p["fat_hu"], 40.0))
    inside = np.where(z < dome, abdomen, soft)
    blood = p["contrast_hu"] if p["contrast"] else 42.0
    chambers = np.where(heart_e < 0.55, blood, 42.0)
    inside = np.where(heart, np.where(med_tex > 1.2, p["fat_hu"], chambers), inside)
    inside = np.where(aorta, blood, inside)
    hu = np.where(cavity_depth > 0, inside, hu)
    _abdominal_gas(rng, p, hu, x, y, zz, cavity_depth > 0, dome, side_x, lateral, b, spacing)

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
    airway_x = np.where(zz > carina, 0.0, np.clip((carina - zz) * 0.8, 0, 40.0))
    airway_ok = (zz > carina - 45) & (zz < apex + 30)
    for sgn in (-1.0, 1.0):
        r = np.sqrt((x[..., None] - sgn * airway_x) ** 2 + (y - spine_y - 38.0)[..., None] ** 2)
        lumen = np.where(zz > carina, 9.0, 6.5)
        hu = np.where(airway_ok & (r < lumen + 2), np.where(r < lumen, AIR_HU, p["muscle_hu"]), hu)

    # ---- lungs, built on the bounding box of the lung space ----
    ii = np.flatnonzero(lung_space.any(axis=(1, 2)))
    jj = np.flatnonzero(lung_space.any(axis=(0, 2)))
    if len(ii):
        i0, i1, j0, j1 = ii[0], ii[-1] + 1, jj[0], jj[-1] + 1
    else:
        i0, i1, j0, j1 = 0, 1, 0, 1
    box = (slice(i0, i1), slice(j0, j1))
    cshape = (i1 - i0, j1 - j0, nz)
    xc, yc = x[box][..., None], y[box][..., None]
    cdepth = np.maximum(cavity_depth[box], 0)
    space_c = lung_space[box]
    frac_c = lung_frac[box]
    lung_c = frac_c > 0.5

    def to_crop(pts: np.ndarray) -> np.ndarray:
        return to_index(pts) - np.array([i0, j0, 0])

    # parenchyma: smooth, a little regional variation, dependent density at the back and bases
    lung_tex = smooth_field(rng, cshape, 1.5, spacing)
    lobular = smooth_field(rng, cshape, 3.5, spacing)
    regional = smooth_field(rng, cshape, 25.0, spacing)
    basal = np.clip((base + p["dome_mm"] + 40 - z) / 80.0, 0, 1)
    posterior = 1 / (1 + np.exp(yc / 20.0))
    dependent = p["dependent_hu"] * np.exp(-cdepth / p["dependent_mm"]) * posterior * (0.4 + 0.6 * basal)
    dependent = dependent + p["ap_gradient_hu"] * np.clip(0.5 - yc / (2 * b), 0, 1)
    if p["mimic_dependent_band"]:
        band_hu, band_mm = rng.uniform(120.0, 300.0), rng.uniform(5.0, 12.0)
        dependent = dependent + band_hu * np.exp(-cdepth / band_mm) * (1 / (1 + np.exp((yc + 0.25 * b) / 8.0))) * (
            0.5 + 0.5 * basal
        )
    lung_hu = (
        p["lung_hu"]
        + p["lung_texture_hu"] * lung_tex
        + p["lung_lobular_hu"] * lobular
        + p["lung_regional_hu"] * regional
        + dependent
    )

    # lung voxels (crop indices) and their body coordinates, for placing findings
    lung_idx = np.argwhere(lung_c)
    lung_xyz = np.stack(
        [xc[lung_idx[:, 0], lung_idx[:, 1], 0], yc[lung_idx[:, 0], lung_idx[:, 1], 0], zz[lung_idx[:, 2]]], 1
    )

    def pick(weights: np.ndarray | None = None, n: int = 1, stream: np.random.Generator = rng) -> np.ndarray:
        """Indices into lung_idx drawn with probabilities ``weights`` (uniform if None)."""
        if not len(lung_idx):
            return np.zeros(0, int)
        if weights is None:
            return stream.integers(0, len(lung_idx), n)
        cdf = np.cumsum(weights, dtype=np.float64)
        return np.minimum(np.searchsorted(cdf, stream.uniform(0, cdf[-1], n)), len(lung_idx) - 1)

    height = max(p["lung_height_mm"], 1.0)
    rel_z = (lung_xyz[:, 2] - base) / height if len(lung_idx) else np.zeros(0)

    if p["mimic_emphysema"]:
        # centrilobular holes, upper zones
        n_holes = int(rng.uniform(0.003, 0.012) * len(lung_idx))
        sel = pick(np.clip(rel_z, 0.05, 1) ** 2, n_holes)
        hole_mm = rng.uniform(1.5, 3.0)
        holes = np.minimum(blob_field(cshape, lung_idx[sel], np.ones(len(sel)), hole_mm, spacing) * 1.5, 1)
        lung_hu = lung_hu * (1 - holes) + holes * (-985.0 + 5 * lung_tex)

    # ---- opacities (category-dependent: their own streams) ----
    lesion_mask_c = np.zeros(cshape, bool)
    if lesion["target_fraction"] > 0 and len(lung_idx):
        lung_hu, lesion_mask_c = paint_lesions(np.random.default_rng(texture_seq), lesion, lung_hu, lung_c, spacing)

    # ---- vessels, bronchi and fissures ----
    hilum_z = carina - 20.0
    hila = [np.array([s * (p["mediastinum_mm"] + 12), spine_y + 45.0, hilum_z]) for s in (-1.0, 1.0)]
    pts, radii, dirs = _vessel_tree(rng, p["vessel_root_mm"], hila, px / 2)
    vessels = splat(pts, radii, to_crop, cshape, px, dz) * space_c
    vessel_hu = 0.8 * p["contrast_hu"] if p["contrast"] else p["vessel_hu"]
    lung_hu = lung_hu * (1 - vessels) + vessel_hu * vessels
    # bronchi beside the arteries (radius >= 1.2 mm): air lumen, soft-tissue wall
    big = radii >= 1.2
    side = np.cross(dirs[big], np.array([0.0, 0.0, 1.0]))
    side /= np.linalg.norm(side, axis=1, keepdims=True) + 1e-6
    rb = 0.85 * radii[big]
    wall_mm = 0.25 * rb + 0.3
    centre = pts[big] + side * (radii[big] + rb + wall_mm)[:, None]
    lumen = splat(centre, rb, to_crop, cshape, px, dz, (2.0,)) * space_c
    outer = splat(centre, rb + wall_mm, to_crop, cshape, px, dz, (2.0,)) * space_c
    bwall = np.clip(outer - lumen, 0, 1)
    lung_hu = lung_hu * (1 - lumen) + AIR_HU * lumen
    lung_hu = lung_hu * (1 - bwall) + 20.0 * bwall

    # fissures: thin pleural sheets, broadened by partial volume in thick slices
    tilt = p["fissure_tilt"]
    zf = hilum_z + 35.0
    for sgn, plane in ((-1.0, "oblique"), (1.0, "oblique"), (-1.0, "horizontal")):
        if plane == "oblique":
            n_y, n_z = tilt, 1.0  # z falls anteriorly: z - zf + tilt * (y - spine_y - 45) = 0
            d = (z - zf + tilt * (yc - spine_y - 45.0 + 0.7 * (np.abs(xc) - hila[1][0]))) / np.hypot(n_y, n_z)
        else:
            n_y, n_z = 0.15, 1.0
            d = (z - hilum_z + 0.15 * (yc - spine_y - 45.0)) / np.hypot(n_y, n_z)
            d = np.where(yc > spine_y + 45.0, d, 1e3)
        nz_ = n_z / np.hypot(n_y, n_z)
        sig = max(0.35 * nz_ * dz, 0.5 * px * n_y / np.hypot(n_y, n_z), 0.5)
        peak = min(0.6 / (2.5 * sig), 0.3)
        sheet = peak * np.exp(-0.5 * (d / sig) ** 2) * (sgn * xc > 0)
        lung_hu = lung_hu + sheet * (0.0 - lung_hu) * (1 - vessels)

    # ---- solid mimics: nodules, a mass, scars, plate atelectasis (never in the lesion mask) ----
    solid_hu = np.float32(rng.uniform(-60.0, 40.0))
    strands, strand_r = [], []
    if p["mimic_scar"] and len(lung_idx):
        for c in lung_xyz[pick(None, int(rng.integers(1, 4)))]:
            direction = rng.normal(size=3) * np.array([1.0, 1.0, 0.3])
            direction /= np.linalg.norm(direction)
            t = np.arange(0.0, rng.uniform(20.0, 60.0), px / 2)
            strands.append(c + t[:, None] * direction + rng.normal(0, 1.0, (len(t), 3)).cumsum(0) * 0.3)
            strand_r.append(np.full(len(t), rng.uniform(0.6, 1.3)))
    if p["mimic_atelectasis"] and len(lung_idx):
        low = np.clip(1 - rel_z * 3, 0, 1) * (lung_xyz[:, 1] < 0.2 * b)
        for c in lung_xyz[pick(low + 1e-9, int(rng.integers(1, 3)))]:
            ang = rng.uniform(-0.6, 0.6) + (0.0 if rng.random() < 0.5 else np.pi)
            along = np.arange(0.0, rng.uniform(25.0, 60.0), px / 2)
            ups = np.arange(0.0, rng.uniform(8.0, 20.0), dz / 2)
            s, t = np.meshgrid(along, ups, indexing="ij")
            plate = np.stack([np.cos(ang) * s, np.sin(ang) * s, t], -1).reshape(-1, 3) + c
            strands.append(plate)
            strand_r.append(np.full(len(plate), rng.uniform(1.0, 2.0)))
    solid = np.zeros(cshape, np.float32)
    if strands:
        solid = splat(np.concatenate(strands), np.concatenate(strand_r), to_crop, cshape, px, dz, (1.5,)) * space_c
        lung_hu = lung_hu * (1 - solid) + solid * (solid_hu + 10 * lung_tex)
    nodules = []
    if p["mimic_nodule"]:
        nodules += [(rng.uniform(2.5, 15.0), rng.uniform(0.0, 50.0)) for _ in range(int(rng.integers(1, 4)))]
    if p["mimic_mass"]:
        nodules.append((rng.uniform(15.0, 30.0), rng.uniform(20.0, 50.0)))
    for radius, nod_hu in nodules:
        if not len(lung_idx):
            break
        ci, cj, ck = lung_idx[pick()[0]]
        lob = rng.uniform(0.0, 0.15, 3)
        phase = rng.uniform(0, 2 * np.pi, 3)
        ri, rk = int(radius / px) + 3, int(radius / dz) + 2
        si = slice(max(ci - ri, 0), min(ci + ri + 1, cshape[0]))
        sj = slice(max(cj - ri, 0), min(cj + ri + 1, cshape[1]))
        sk = slice(max(ck - rk, 0), min(ck + rk + 1, nz))
        dx_ = (np.arange(si.start, si.stop) - ci)[:, None, None] * px
        dy_ = (np.arange(sj.start, sj.stop) - cj)[None, :, None] * px
        ang = np.arctan2(dy_, dx_)
        r_eff = radius * (1 + lob[0] * np.cos(2 * ang + phase[0]) + lob[1] * np.cos(3 * ang + phase[1]))
        amt = 0.0
        for sub in (-1 / 3, 0.0, 1 / 3):
            dz_ = ((np.arange(sk.start, sk.stop) - ck + sub) * dz)[None, None, :]
            dist = np.sqrt(dx_**2 + dy_**2 + dz_**2)
            amt = amt + np.clip((r_eff - dist) / px + 0.5, 0, 1) / 3
        blk = (si, sj, sk)
        amt = (amt * space_c[blk]).astype(np.float32)
        lung_hu[blk] = lung_hu[blk] * (1 - amt) + amt * (nod_hu + 10 * lung_tex[blk])
        solid[blk] = np.maximum(solid[blk], amt)
    lesion_mask_c &= solid < 0.5

    crop = hu[box]
    hu[box] = np.where(frac_c > 0, frac_c * lung_hu + (1 - frac_c) * crop, crop)

    # ---- artefacts: cardiac motion, streaks (nuisance stream) ----
    if p["mimic_motion"]:
        ks = (zz > base) & (zz < heart_c[2] + 0.5 * hs[2])
        near = (((x - heart_c[0]) / (1.5 * hs[0])) ** 2 + ((y - heart_c[1]) / (1.5 * hs[1])) ** 2) < 1
        shift = round(rng.uniform(3.0, 8.0) / px) * (1 if rng.random() < 0.5 else -1)
        region = near[..., None] & ks
        ghost = np.roll(hu, shift, axis=1)
        hu = np.where(region, 0.6 * hu + 0.4 * ghost, hu)
    if p["mimic_streaks"]:
        if rng.random() < 1 / 3:  # a metal bead on the skin: radial streaks on its slices
            ang = rng.uniform(0, 2 * np.pi)
            mx, my = (a + 2) * np.cos(ang), (b + 2) * np.sin(ang) * (1 if np.sin(ang) > 0 else 0.9)
            wx = cr * mx - sr * my + p["shift_x_mm"]
            wy = sr * mx + cr * my + p["shift_y_mm"]
            k0 = int(rng.integers(0, nz))
            n_l = 14
            amps = rng.uniform(60.0, 200.0, n_l) * np.where(np.arange(n_l) % 2, 1, -1)
            art = _lines(gx, gy, wx, wy, rng.uniform(0, np.pi, n_l), amps, 1.0 * px, 150.0)
            bead = ((gx - wx) ** 2 + (gy - wy) ** 2) < rng.uniform(2.0, 4.0) ** 2
            for k in range(max(k0 - 1, 0), min(k0 + 2, nz)):
                hu[..., k] += art * (1.0 if k == k0 else 0.4)
                hu[..., k] = np.where(bead, 2500.0, hu[..., k])
        else:  # shoulders / arms: dark bands and streaks between the humeri, upper slices (all if arms down)
            top = (zz > apex - rng.uniform(40.0, 90.0)) | p["arms_down"]
            hx = arm_x if p["arms_down"] else a + 15.0
            n_l = 8
            amps = rng.uniform(30.0, 90.0, n_l) * np.where(np.arange(n_l) % 3, -1, 1)
            angs = rng.normal(0, 0.08, n_l)
            wy = sr * hx + cr * arm_y + p["shift_y_mm"]
            art = _lines(gx, gy, p["shift_x_mm"], wy, angs, amps, rng.uniform(2.0, 6.0), 400.0)
            hu[..., top] += art[..., None]

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

    lung_mask = np.zeros(shape, bool)
    lung_mask[box] = lung_c
    lesion_mask = np.zeros(shape, bool)
    lesion_mask[box] = lesion_mask_c
    mimic_mask = np.zeros(shape, bool)
    mimic_mask[box] = solid >= 0.5

    def to_full(m: np.ndarray) -> np.ndarray:
        m = np.repeat(np.repeat(m, factor, 0), factor, 1)
        m[outside] = False
        return m

    lung_full = to_full(lung_mask)
    mask = to_full(lesion_mask).astype(np.uint8)
    mimic_full = to_full(mimic_mask)
    fraction = float(mask.sum() / max(lung_full.sum(), 1))

    half = (matrix - 1) / 2 * p["pixel_mm"]
    affine = np.diag([-p["pixel_mm"], p["pixel_mm"], dz, 1.0])
    affine[:3, 3] = [half, -half, p["origin_z_mm"]]
    # same voxels in the world, stored from patient right to left (R) or from front to back (P)
    for axis, code in ((0, "R"), (1, "P")):
        if profile.orientation[axis] == code:
            image, mask, mimic_full, lung_full = (np.flip(a, axis) for a in (image, mask, mimic_full, lung_full))
            affine[axis, axis], affine[axis, 3] = -affine[axis, axis], -affine[axis, 3]
    image, mask, mimic_full, lung_full = map(np.ascontiguousarray, (image, mask, mimic_full, lung_full))
    params = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in {**p, **lesion}.items()}
    params["mimics"] = mimics_of(p)
    params["lung_voxels"] = int(lung_full.sum())
    return SyntheticStudy(
        image=image,
        mask=mask,
        affine=affine,
        lesion_fraction=fraction,
        params=params,
        mimic_mask=mimic_full,
        lung=lung_full,
    )
