"""Lesion patterns of pneumonia, drawn per category and painted into any lung region of an HU volume.

A positive study (CT-1 ... CT-4) has a target involvement (share of lung voxels) and one **primary pattern**
drawn at the category's rates (:data:`PRIMARY_RATES`); a viral primary may carry **add-on patterns**
(:data:`ADDON_RATES`, each drawn on its own) that take a share of the involvement. Every pattern has a
footprint (a score field over the lung, highest where the pattern lies) and an appearance (how it changes the
HU there); its parameters are drawn by :func:`draw_lesions` and listed in :data:`PATTERNS`.

Painting (:func:`paint_lesions`) takes the patterns in turn: each claims exactly its share of the lung voxels,
those of highest footprint not claimed yet (a CT-1 pattern with confluent patches claims their part first,
then the rest of its share), and changes the HU there only. The lesion mask is the union of the
claimed voxels: exactly the lung voxels whose HU a lesion changed (at least ``EDGE`` of its contrast at the
margin, rising to full contrast inside). Arrays are ``(X, Y, Z)`` with Y towards anterior and Z towards
superior (RAS or LAS alike); spacing in mm.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.synth.fields import blob_field, smooth_field, splat

#: MosMedData categories and the fraction of lung parenchyma involved (lower, upper bound).
CATEGORY_BANDS: dict[str, tuple[float, float]] = {
    "CT-0": (0.0, 0.0),
    "CT-1": (0.0, 0.25),
    "CT-2": (0.25, 0.50),
    "CT-3": (0.50, 0.75),
    "CT-4": (0.75, 1.0),
}
#: The patterns and what each paints (parameters drawn by :func:`draw_lesions`, ranges in the docstrings
#: of the ``_draw_*`` functions and in docs/synthetic.md).
PATTERNS: dict[str, str] = {
    "patchy_ggo": "patchy ground glass with consolidated cores (typical COVID-19, moderate to severe)",
    "round_ggo": "multifocal round / nodular ground glass, 5-30 mm foci (early or mild COVID-19)",
    "subpleural": "peripheral subpleural ground glass with curvilinear subpleural bands",
    "crazy_paving": "ground glass with thickened interlobular septa at lobular scale (10-20 mm cells)",
    "organizing": "organizing pattern: reversed halo rings and perilobular arcades",
    "diffuse_reticular": "diffuse heterogeneous ground glass with reticulation and traction bronchiectasis",
    "lobar": "lobar / segmental consolidation with air bronchograms (bacterial pneumonia)",
    "bronchopneumonia": "bronchopneumonia: centrilobular nodules, tree-in-bud, peribronchial patches",
}
#: Patterns of viral (COVID-19-like) pneumonia; only these carry add-ons.
VIRAL = ("patchy_ggo", "round_ggo", "subpleural", "crazy_paving", "organizing", "diffuse_reticular")
#: Probability of each primary pattern per positive category (each row sums to 1).
PRIMARY_RATES: dict[str, dict[str, float]] = {
    "CT-1": {
        "round_ggo": 0.45,
        "subpleural": 0.20,
        "patchy_ggo": 0.10,
        "crazy_paving": 0.05,
        "organizing": 0.05,
        "lobar": 0.07,
        "bronchopneumonia": 0.08,
    },
    "CT-2": {
        "patchy_ggo": 0.25,
        "round_ggo": 0.15,
        "subpleural": 0.10,
        "crazy_paving": 0.12,
        "organizing": 0.10,
        "diffuse_reticular": 0.08,
        "lobar": 0.10,
        "bronchopneumonia": 0.10,
    },
    "CT-3": {
        "patchy_ggo": 0.30,
        "round_ggo": 0.05,
        "subpleural": 0.02,
        "crazy_paving": 0.15,
        "organizing": 0.08,
        "diffuse_reticular": 0.20,
        "lobar": 0.10,
        "bronchopneumonia": 0.10,
    },
    "CT-4": {
        "patchy_ggo": 0.35,
        "crazy_paving": 0.15,
        "diffuse_reticular": 0.35,
        "lobar": 0.07,
        "bronchopneumonia": 0.08,
    },
}
#: Probability of each add-on pattern, drawn independently when the primary is viral (never the primary itself).
ADDON_RATES: dict[str, float] = {"round_ggo": 0.30, "subpleural": 0.30, "crazy_paving": 0.20, "organizing": 0.15}
#: Share of the involvement an add-on takes (uniform); the primary keeps at least ``MIN_PRIMARY_SHARE``.
ADDON_SHARE = (0.1, 0.3)
MIN_PRIMARY_SHARE = 0.4
#: CT-1 involvement: log-normal share of the lung (median, log std), clipped to ``CT1_CLIP``; calibrated
#: against the 50 radiologist masks of MosMedData's CT-1 (median 66 mL in 60 pieces, largest 25 mL): 1.5 %
#: of the synthetic lungs (median 4.3 L) gives a median 65 mL over 320 studies (16 cohorts of 20).
CT1_FRACTION = (0.015, 0.8)
CT1_CLIP = (0.002, 0.21)
#: CT-1 round and subpleural patterns: share of the pattern's voxels in 1-3 confluent patches (uniform low,
#: high); real CT-1 has one or a few confluent foci and many small ones (in the 50 masks below the largest
#: piece holds a median 55 % of the lesion volume; without patches the synthetic largest piece was 2-10 mL).
CT1_CONFLUENT_SHARE = (0.5, 0.9)
#: CT-1 margins: every pattern's drawn ``ragged`` times this (in the real CT-1 masks 93 % of the pieces lie in
#: one slice, most of them a few voxels at ragged lesion margins).
CT1_RAGGED = 2.0
#: MosMedData's 50 radiologist CT-1 masks (512x512, 8 mm slices; ``../shared/realct/mosmed_ct1_masks``):
#: 25th / 50th / 75th percentile of total lesion volume (mL), 6-connected pieces and largest piece (mL).
REAL_CT1: dict[str, tuple[float, float, float]] = {
    "total_ml": (26.4, 66.0, 108.9),
    "pieces": (30.0, 60.0, 121.5),
    "largest_ml": (13.7, 25.4, 76.3),
}
#: Other categories: uniform inside the band, this far from its edges.
BAND_MARGIN = 0.04
#: Share of a lesion's full HU change at its margin (the mask's edge): inside the mask every voxel changed.
EDGE = 0.3
#: Smallest HU rise of ground glass above the lung it is painted into.
MIN_RISE_HU = 100.0
#: Air and bronchial-wall HU of airways drawn inside lesions (air bronchograms, bronchiectasis).
AIRWAY_HU = (-930.0, -20.0)


def _hu_keys(comp: dict[str, Any]) -> list[str]:
    """Keys of ``comp`` holding an absolute lesion HU level (shifted by a profile's ``lesion_hu_shift``)."""
    return [k for k in comp if k.endswith("_hu") and not k.endswith(("_var_hu", "_add_hu"))]


def _draw_patchy_ggo(u, category: str) -> dict[str, Any]:
    """Ground glass -650..-380 HU (CT-4: -720..-580, some lung stays aerated), variation 20-60 HU, soft
    margins; consolidation (-120..+30 HU) in the densest 0-8 % (CT-1) or 0-25 % of the patch cores."""
    return {
        "ggo_hu": u(-720.0, -580.0) if category == "CT-4" else u(-650.0, -380.0),
        "ggo_var_hu": u(20.0, 60.0),
        "margin": u(0.3, 1.0),
        "ragged": u(0.2, 0.5),
        "consolidation_share": u(0.0, 0.08) if category == "CT-1" else u(0.0, 0.25),
        "consolidation_hu": u(-120.0, 30.0),
    }


def _draw_confluent(u, category: str) -> dict[str, Any]:
    """CT-1 only (other categories: nothing drawn): ``confluent_share`` (:data:`CT1_CONFLUENT_SHARE`) of the
    pattern's voxels lie in ``confluent_patches`` (1-3) confluent patches, volumes in the ratio 1 : 1/2 : 1/4
    and the pattern's appearance, claimed before the rest of its footprint (:func:`paint_lesions`)."""
    if category != "CT-1":
        return {}
    return {"confluent_share": u(*CT1_CONFLUENT_SHARE), "confluent_patches": int(u(1.0, 4.0))}


def _draw_round_ggo(u, category: str) -> dict[str, Any]:
    """Round foci whose diameters are log-uniform in ``diameter_mm`` (within 5-30 mm: from 5-10 to 12-30 mm;
    CT-1 from 5-6 to 8-14 mm, the small foci beside its confluent patches), as many as the involvement needs,
    gathered around 1-4 ``clusters`` (Gaussian, std ``cluster_mm`` 15-35 mm) where neighbours merge, a sixth
    of the density scattered outside them; ground glass -700..-450 HU, fairly sharp margins, ragged edge.
    CT-1: confluent patches (:func:`_draw_confluent`) where the clusters are."""
    lo, hi = (u(5.0, 6.0), u(8.0, 14.0)) if category == "CT-1" else (u(5.0, 10.0), None)
    return {
        "ggo_hu": u(-700.0, -450.0),
        "ggo_var_hu": u(10.0, 40.0),
        "margin": u(0.2, 0.6),
        "ragged": u(0.3, 0.6),
        "diameter_mm": (lo, hi if hi else u(max(lo, 12.0), 30.0)),
        "clusters": int(u(1.0, 5.0)),
        "cluster_mm": u(15.0, 35.0),
        **_draw_confluent(u, category),
    }


def _draw_subpleural(u, category: str) -> dict[str, Any]:
    """Ground glass -750..-500 HU hugging the pleura (e-fold depth 5-15 mm), patchy along it; a curvilinear
    band (+150..+350 HU, 1.5-3 mm thick) parallel to the pleura at 3-10 mm depth in 60 %. CT-1: confluent
    patches against the pleura (:func:`_draw_confluent`)."""
    return {
        "ggo_hu": u(-750.0, -500.0),
        "ggo_var_hu": u(10.0, 40.0),
        "margin": u(0.3, 0.8),
        "ragged": u(0.1, 0.3),
        "depth_mm": u(5.0, 15.0),
        "band": bool(u(0.0, 1.0) < 0.6),
        "band_depth_mm": u(3.0, 10.0),
        "band_width_mm": u(1.5, 3.0),
        "band_add_hu": u(150.0, 350.0),
        **_draw_confluent(u, category),
    }


def _draw_crazy_paving(u, category: str) -> dict[str, Any]:
    """Patchy ground glass -650..-450 HU crossed by thickened interlobular septa: a network of lines
    (+120..+250 HU) around cells of 10-20 mm, the size of secondary pulmonary lobules."""
    return {
        "ggo_hu": u(-650.0, -450.0),
        "ggo_var_hu": u(10.0, 40.0),
        "margin": u(0.3, 0.8),
        "ragged": u(0.2, 0.4),
        "cell_mm": u(10.0, 20.0),
        "septa_add_hu": u(120.0, 250.0),
    }


def _draw_organizing(u, category: str) -> dict[str, Any]:
    """Reversed halo (atoll) rings: central ground glass (-750..-600 HU) ringed by consolidation (-250..0 HU,
    2-5 mm thick, ring radius 8-20 mm), and perilobular arcades (curved bands around lobules, 15-25 mm cells)
    in the periphery (e-fold depth 12 mm); ``halo_share`` (0.5-1) of the footprint weight goes to the rings."""
    return {
        "ggo_hu": u(-750.0, -600.0),
        "ggo_var_hu": u(10.0, 30.0),
        "margin": u(0.2, 0.5),
        "ragged": u(0.1, 0.3),
        "ring_radius_mm": (8.0, u(12.0, 20.0)),
        "ring_width_mm": u(2.0, 5.0),
        "consolidation_hu": u(-250.0, 0.0),
        "arcade_cell_mm": u(15.0, 25.0),
        "halo_share": u(0.5, 1.0),
    }


def _draw_diffuse_reticular(u, category: str) -> dict[str, Any]:
    """Diffuse heterogeneous ground glass (-750..-450 HU, regional variation 40-120 HU over 25 mm), denser
    basally and peripherally, with reticulation (lines +80..+200 HU around 5-10 mm cells) and 4-14 dilated
    airways of traction bronchiectasis (lumen radius 1.5-4 mm, varicose, soft-tissue wall)."""
    return {
        "ggo_hu": u(-750.0, -450.0),
        "ggo_var_hu": u(40.0, 120.0),
        "margin": u(0.5, 1.0),
        "ragged": u(0.1, 0.3),
        "cell_mm": u(5.0, 10.0),
        "reticulation_add_hu": u(80.0, 200.0),
        "bronchiectasis": int(u(4.0, 15.0)),
        "lumen_mm": (1.5, u(2.5, 4.0)),
    }


def _draw_lobar(u, category: str) -> dict[str, Any]:
    """Consolidation (-30..+50 HU) filling one region per 20 % of involvement (a segment or lobe against the
    pleura, cut flat on one side as by a fissure), sharp margins, with air bronchograms (3-8 branching air
    tubes, radius 1-2.5 mm)."""
    return {
        "consolidation_hu": u(-30.0, 50.0),
        "margin": u(0.05, 0.2),
        "ragged": u(0.02, 0.06),
        "bronchograms": int(u(3.0, 9.0)),
        "lumen_mm": (1.0, u(1.5, 2.5)),
    }


def _draw_bronchopneumonia(u, category: str) -> dict[str, Any]:
    """Clusters (1-4, lower and posterior lung first) of centrilobular nodules (radius 2-4 mm, -350..-50 HU,
    one per 0.5-2 mL of cluster, sparing the 4 mm under the pleura), tree-in-bud (short branching tubes,
    radius 0.7-1.5 mm) and peribronchial ground glass (-650..-450 HU)."""
    return {
        "nodule_hu": u(-350.0, -50.0),
        "ggo_hu": u(-650.0, -450.0),
        "ggo_var_hu": u(10.0, 40.0),
        "margin": u(0.1, 0.4),
        "ragged": u(0.1, 0.3),
        "clusters": int(u(1.0, 5.0)),
        "nodule_mm": u(2.0, 4.0),
        "nodule_ml": u(0.5, 2.0),
        "bud_mm": u(0.7, 1.5),
    }


_DRAWS = {
    "patchy_ggo": _draw_patchy_ggo,
    "round_ggo": _draw_round_ggo,
    "subpleural": _draw_subpleural,
    "crazy_paving": _draw_crazy_paving,
    "organizing": _draw_organizing,
    "diffuse_reticular": _draw_diffuse_reticular,
    "lobar": _draw_lobar,
    "bronchopneumonia": _draw_bronchopneumonia,
}


def draw_target(rng: np.random.Generator, category: str) -> float:
    """The share of the lung a ``category`` study involves: CT-1 log-normal (:data:`CT1_FRACTION`), others
    uniform inside their MosMedData band (:data:`BAND_MARGIN` from its edges); 0 for CT-0."""
    lo, hi = CATEGORY_BANDS[category]
    if hi == 0.0:
        return 0.0
    if category == "CT-1":
        median, sigma = CT1_FRACTION
        return float(np.clip(median * np.exp(sigma * rng.standard_normal()), *CT1_CLIP))
    return float(rng.uniform(lo + BAND_MARGIN, hi - BAND_MARGIN))


def draw_lesions(
    rng: np.random.Generator,
    category: str,
    patterns: Sequence[str] | None = None,
    rates: dict[str, dict[str, float]] | None = None,
    hu_shift: tuple[float, float] = (0.0, 0.0),
) -> dict[str, Any]:
    """Draw the involvement, the patterns and every pattern's parameters for ``category`` (no rendering).

    Args:
        rng: the study's lesion stream.
        category: ``"CT-0"`` ... ``"CT-4"``; CT-0 draws nothing.
        patterns: force these patterns (names in :data:`PATTERNS`; the first is the primary) instead of the
            drawn ones; the involvement is still that of ``category``.
        rates: primary-pattern rates per category instead of :data:`PRIMARY_RATES`.
        hu_shift: (low, high) of a uniform shift added to every absolute lesion HU level.

    Returns:
        JSON-serialisable dict: ``target_fraction``, ``patterns`` (``"+"``-joined, ``"none"`` for CT-0), the
        study's distribution weights (``peripheral_weight``, ``posterior_weight``, ``basal_weight``,
        ``left_right_bias``) and ``lesions``, one dict per pattern with its ``pattern``, ``share`` of the
        involvement and parameters.
    """
    target = draw_target(rng, category)
    if target == 0.0:
        if patterns:
            raise ValueError(f"{category} has no lesions; patterns {list(patterns)} cannot be forced")
        return {"target_fraction": 0.0, "patterns": "none", "lesions": []}
    u = rng.uniform
    primary_rates = (rates or PRIMARY_RATES)[category]
    names = list(primary_rates)
    primary = str(rng.choice(names, p=np.array([primary_rates[n] for n in names]) / sum(primary_rates.values())))
    addons = {name: bool(rng.random() < rate) for name, rate in ADDON_RATES.items()}
    if patterns is not None:
        unknown = [p for p in patterns if p not in PATTERNS]
        if unknown or not patterns:
            raise ValueError(f"unknown patterns {unknown}; choose from {', '.join(PATTERNS)}")
        chosen = list(dict.fromkeys(patterns))
    else:
        chosen = [primary] + [n for n, on in addons.items() if on and n != primary and primary in VIRAL]
    shares = [u(*ADDON_SHARE) for _ in chosen[1:]]
    scale = min(1.0, (1 - MIN_PRIMARY_SHARE) / sum(shares)) if shares else 1.0
    shares = [1 - scale * sum(shares)] + [scale * s for s in shares]
    shift = u(*hu_shift)
    lesions = []
    for name, share in zip(chosen, shares, strict=True):
        comp = {"pattern": name, "share": share, **_DRAWS[name](u, category)}
        if category == "CT-1":
            comp["ragged"] *= CT1_RAGGED
        for key in _hu_keys(comp):
            comp[key] += shift
        lesions.append(comp)
    return {
        "target_fraction": target,
        "patterns": "+".join(chosen),
        "peripheral_weight": u(1.5, 3.0),
        "posterior_weight": u(0.3, 1.2),
        "basal_weight": u(0.3, 1.2),
        "left_right_bias": u(-0.5, 0.5),
        "lesions": lesions,
    }


@dataclass
class LungFrame:
    """Where the lung is and the fields every pattern shares.

    Attributes:
        lung: bool ``(X, Y, Z)`` lung region.
        spacing: voxel size in mm.
        idx: ``(N, 3)`` indices of the lung voxels.
        depth: float32 ``(X, Y, Z)``: distance (mm) from the lung's edge, 0 outside.
        post: float32 ``(1, Y, 1)``: 1 at the lung's back, 0 at its front.
        low: float32 ``(1, 1, Z)``: 1 at the lung's base, 0 at its apex.
        side: float32 ``(X, 1, 1)``: -1 / +1 either side of the lungs' middle.
        rng: the stream the shared fields are drawn from, when first used:
        ``fine`` (2 mm correlation: ragged margins), ``irregular`` (6 mm: lesion texture and shape) and
        ``regional`` (25 mm: heterogeneity between regions), unit Gaussian fields of the lung's shape.
    """

    lung: np.ndarray
    spacing: tuple[float, float, float]
    idx: np.ndarray
    depth: np.ndarray
    post: np.ndarray
    low: np.ndarray
    side: np.ndarray
    rng: np.random.Generator

    @cached_property
    def fine(self) -> np.ndarray:
        return smooth_field(self.rng, self.lung.shape, 2.0, self.spacing)

    @cached_property
    def irregular(self) -> np.ndarray:
        return smooth_field(self.rng, self.lung.shape, 6.0, self.spacing)

    @cached_property
    def regional(self) -> np.ndarray:
        return smooth_field(self.rng, self.lung.shape, 25.0, self.spacing)

    @classmethod
    def build(cls, rng: np.random.Generator, lung: np.ndarray, spacing: Sequence[float]) -> LungFrame:
        """The frame of ``lung`` (the distance map on a grid of about 3 mm in-plane)."""
        spacing = tuple(float(s) for s in spacing)
        idx = np.argwhere(lung)
        step = max(1, round(3.0 / spacing[0]))
        coarse = ndimage.distance_transform_edt(
            lung[::step, ::step], sampling=(spacing[0] * step, spacing[1] * step, spacing[2])
        ).astype(np.float32)
        depth = np.repeat(np.repeat(coarse, step, 0), step, 1)[: lung.shape[0], : lung.shape[1]] * lung
        lo, hi = idx.min(0), idx.max(0)
        span = np.maximum(hi - lo, 1).astype(np.float32)
        post = 1 - np.clip((np.arange(lung.shape[1], dtype=np.float32) - lo[1]) / span[1], 0, 1)
        low = 1 - np.clip((np.arange(lung.shape[2], dtype=np.float32) - lo[2]) / span[2], 0, 1)
        side = np.sign(np.arange(lung.shape[0], dtype=np.float32) - idx[:, 0].mean()).astype(np.float32)
        post, low = post.astype(np.float32)[None, :, None], low.astype(np.float32)[None, None, :]
        return cls(lung, spacing, idx, depth, post, low, side[:, None, None], rng)

    def mm(self, idx: np.ndarray) -> np.ndarray:
        """Voxel indices ``(N, 3)`` to array millimetres."""
        return idx * np.asarray(self.spacing)

    def to_index(self, pts: np.ndarray) -> np.ndarray:
        """Array millimetres ``(N, 3)`` to the nearest voxel indices."""
        return np.rint(pts / np.asarray(self.spacing)).astype(int)

    def pick(self, rng: np.random.Generator, weights: np.ndarray | None, n: int) -> np.ndarray:
        """``n`` lung voxel indices ``(n, 3)`` drawn with probability ``weights`` (per lung voxel; uniform if None)."""
        if weights is None:
            return self.idx[rng.integers(0, len(self.idx), n)]
        cdf = np.cumsum(weights, dtype=np.float64)
        return self.idx[np.minimum(np.searchsorted(cdf, rng.uniform(0, cdf[-1], n)), len(self.idx) - 1)]

    def at(self, field: np.ndarray) -> np.ndarray:
        """A broadcastable field's values at the lung voxels, ``(N,)``."""
        i, j, k = self.idx.T
        return np.broadcast_to(field, self.lung.shape)[i, j, k]

    def tubes(
        self, rng: np.random.Generator, starts: np.ndarray, length_mm: float, radius_mm: tuple[float, float]
    ) -> np.ndarray:
        """Volume fraction (float32 ``(X, Y, Z)``) of branching tubes from voxel indices ``starts``, heading
        away from the lungs' centre; radius drawn in ``radius_mm`` per tube and varying along it (varicose)."""
        px = self.spacing[0]
        centre = self.mm(self.idx.mean(0))
        points, radii = [], []
        for start in self.mm(starts):
            direction = start - centre + rng.normal(0, 20.0, 3)
            for _ in range(2):  # the tube and one branch from its middle
                direction = direction / (np.linalg.norm(direction) + 1e-6)
                steps = max(int(length_mm / (px / 2)), 2)
                wiggle = rng.normal(0, 0.15, (steps, 3)).cumsum(0) * (px / 2)
                path = start + np.arange(steps)[:, None] * (px / 2) * direction + wiggle
                r = rng.uniform(*radius_mm) * (1 + 0.25 * np.sin(np.arange(steps) * px / rng.uniform(3.0, 6.0)))
                points.append(path)
                radii.append(np.linspace(1.0, 0.6, steps) * r)
                start = path[steps // 2]
                direction = direction + rng.normal(0, 0.8, 3)
        if not points:
            return np.zeros(self.lung.shape, np.float32)
        return splat(np.concatenate(points), np.concatenate(radii), self.to_index, self.lung.shape, px, self.spacing[2])


def _location_weight(lesion: dict[str, Any], frame: LungFrame) -> np.ndarray:
    """Per lung voxel: the study's preference for peripheral, posterior and basal lung, and one side."""
    w = (
        lesion["peripheral_weight"] * np.exp(-frame.at(frame.depth) / 15.0)
        + lesion["posterior_weight"] * frame.at(frame.post)
        + lesion["basal_weight"] * frame.at(frame.low)
    ) * (1 + lesion["left_right_bias"] * frame.at(frame.side))
    return w**2


def _blobs(frame: LungFrame, centres: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Unit-peak Gaussian blobs of std ``sigmas`` (mm) at ``centres``, one filter per size class."""
    out = np.zeros(frame.lung.shape, np.float32)
    edges = np.quantile(sigmas, [0.0, 1 / 3, 2 / 3, 1.0]) if len(sigmas) > 3 else [0.0, np.inf]
    for lo, hi in itertools.pairwise(edges):
        sel = (sigmas >= lo) & ((sigmas < hi) | (hi == edges[-1]))
        if sel.any():
            out = np.maximum(
                out, blob_field(out.shape, centres[sel], np.ones(sel.sum()), np.median(sigmas[sel]), frame.spacing)
            )
    return out


def _network(rng: np.random.Generator, frame: LungFrame, cell_mm: float, width: float = 0.15) -> np.ndarray:
    """Lines (0..1) along the zero set of a Gaussian field: a network of cells about ``cell_mm`` across
    (zero crossings of a field smoothed by sigma lie about 4.4 sigma apart)."""
    net = smooth_field(rng, frame.lung.shape, cell_mm / 4.4, frame.spacing)
    return np.exp(-((net / width) ** 2))


# ---- footprints: a score per voxel, highest where the pattern lies ----


def _foot_patchy(rng, comp, lesion, frame, n_vox):
    n = int(1 + rng.poisson(1.5 + 40.0 * n_vox / len(frame.idx)))
    centres = frame.pick(rng, _location_weight(lesion, frame), n)
    # blob size so that n blobs cover about the claimed voxels (a blob's core ~ 14 sigma^3)
    sigma = (1.5 * n_vox * np.prod(frame.spacing) / (14.0 * n)) ** (1 / 3)
    sizes = np.clip(sigma * rng.uniform(0.6, 1.4, n), 3.0, 40.0)
    return _blobs(frame, centres, sizes) * (1 + 0.3 * frame.irregular), {}


def _n_confluent(comp: dict[str, Any], n_vox: int) -> int:
    """How many of a pattern's ``n_vox`` voxels its confluent patches claim (0 without them)."""
    return round(comp.get("confluent_share", 0.0) * n_vox)


def _confluent(rng, comp, frame, weight, n_conf) -> np.ndarray:
    """Unit-peak blobs of ``comp["confluent_patches"]`` confluent patches at lung voxels drawn by ``weight``
    (per lung voxel), sized so that their cores (above 0.5: radius 1.18 sigma, 6.8 sigma^3) hold ``n_conf``
    voxels in the volume ratio 1 : 1/2 : 1/4."""
    k = comp["confluent_patches"]
    volumes = n_conf * np.prod(frame.spacing) * 0.5 ** np.arange(k) / (2 - 0.5 ** (k - 1))
    out = np.zeros(frame.lung.shape, np.float32)
    for centre, volume in zip(frame.pick(rng, weight, k), volumes, strict=True):
        sigma = max((volume / 6.8) ** (1 / 3), frame.spacing[0])
        out = np.maximum(out, blob_field(out.shape, centre[None], np.ones(1), sigma, frame.spacing))
    return out


def _foot_round(rng, comp, lesion, frame, n_vox):
    lo, hi = comp["diameter_mm"]
    n_conf = _n_confluent(comp, n_vox)
    volume = max(n_vox - n_conf, 1) * np.prod(frame.spacing)
    mean_ball = np.mean(np.pi / 6 * np.exp(rng.uniform(np.log(lo), np.log(hi), 64)) ** 3)
    n = int(np.clip(round(volume / mean_ball), 1, 3000))
    diam = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    weight = _location_weight(lesion, frame)
    near = np.zeros(len(frame.idx))
    for c in frame.mm(frame.pick(rng, weight, comp["clusters"])):
        near += np.exp(-(((frame.mm(frame.idx) - c) ** 2).sum(1)) / (2 * comp["cluster_mm"] ** 2))
    centres = frame.pick(rng, weight * (near + 0.15), n)
    # a unit Gaussian of std d / 2.8 is 0.5 at radius d / 2.4: the foci stand apart at a common threshold
    parts = {}
    if n_conf:  # confluent patches where the foci gather
        parts["confluent"] = _confluent(rng, comp, frame, weight * near, n_conf) * (1 + 0.3 * frame.irregular)
    return _blobs(frame, centres, diam / 2.8) * (1 + 0.1 * frame.irregular), parts


def _foot_subpleural(rng, comp, lesion, frame, n_vox):
    patch = smooth_field(rng, frame.lung.shape, 20.0, frame.spacing)
    where = (0.5 + lesion["posterior_weight"] * frame.post) * (0.5 + lesion["basal_weight"] * frame.low)
    score = np.exp(-frame.depth / comp["depth_mm"]) * where * np.exp(1.0 * patch)
    n_conf = _n_confluent(comp, n_vox)
    if not n_conf:
        return score, {}
    pleural = np.exp(-frame.depth / comp["depth_mm"])  # confluent patches against the pleura
    patches = _confluent(rng, comp, frame, frame.at(score), n_conf) * pleural * (1 + 0.3 * frame.irregular)
    return score, {"confluent": patches}


def _foot_organizing(rng, comp, lesion, frame, n_vox):
    """Rings (1 on the consolidated rim, 0.7 inside it) and peripheral arcades, each 0..1."""
    lo, hi = comp["ring_radius_mm"]
    mean_disc = np.pi * ((lo + hi) / 2) ** 2 * 2 * frame.spacing[2]  # a ring spans about two slices
    n_rings = int(np.clip(round(comp["halo_share"] * n_vox * np.prod(frame.spacing) / mean_disc), 1, 200))
    centres = frame.pick(rng, _location_weight(lesion, frame), n_rings)
    ring = np.zeros(frame.lung.shape, np.float32)
    sx, sy, sz = frame.spacing
    for c, radius in zip(centres, rng.uniform(lo, hi, n_rings), strict=True):
        reach = radius + 2 * comp["ring_width_mm"]
        box = tuple(
            slice(max(int(ci - reach / s), 0), min(int(ci + reach / s) + 1, n))
            for ci, s, n in zip(c, frame.spacing, frame.lung.shape, strict=True)
        )
        gx, gy, gz = (np.arange(b.start, b.stop) - ci for b, ci in zip(box, c, strict=True))
        r = np.sqrt((gx[:, None, None] * sx) ** 2 + (gy[None, :, None] * sy) ** 2 + (gz[None, None, :] * sz * 2.5) ** 2)
        rim = np.exp(-(((r - radius) / comp["ring_width_mm"]) ** 2)) + 0.7 * (r < radius)
        ring[box] = np.maximum(ring[box], np.minimum(rim, 1.0))
    arcade = _network(rng, frame, comp["arcade_cell_mm"], 0.5) * np.exp(-frame.depth / 12.0)
    arcade = (1 - comp["halo_share"]) * arcade
    return np.maximum(ring, arcade), {"ring": ring, "arcade": arcade}


def _foot_diffuse(rng, comp, lesion, frame, n_vox):
    return 1.0 + 0.5 * frame.regional + 0.5 * frame.low + 0.5 * np.exp(-frame.depth / 30.0), {}


def _foot_lobar(rng, comp, lesion, frame, n_vox):
    n = 1 + int(n_vox / len(frame.idx) / 0.2)
    out = np.zeros(frame.lung.shape, np.float32)
    sx, sy, sz = frame.spacing
    gx = np.arange(frame.lung.shape[0], dtype=np.float32)[:, None, None] * sx
    gy = np.arange(frame.lung.shape[1], dtype=np.float32)[None, :, None] * sy
    gz = np.arange(frame.lung.shape[2], dtype=np.float32)[None, None, :] * sz
    for c in frame.mm(frame.pick(rng, _location_weight(lesion, frame), n)):
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        offset = rng.uniform(5.0, 25.0)
        dist = np.sqrt((gx - c[0]) ** 2 + (gy - c[1]) ** 2 + (gz - c[2]) ** 2)
        plane = (gx - c[0]) * normal[0] + (gy - c[1]) * normal[1] + (gz - c[2]) * normal[2]
        out = np.maximum(out, (1 - dist / 150.0) * (1 / (1 + np.exp((plane - offset) / 2.0))))
    return out, {}


def _foot_broncho(rng, comp, lesion, frame, n_vox):
    """Centrilobular nodules and tree-in-bud tubes (``solid``, 0..1) over peribronchial patches."""
    volume = n_vox * np.prod(frame.spacing)
    n_clusters = comp["clusters"]
    radius = np.clip((3 * volume / (4 * np.pi * n_clusters)) ** (1 / 3) * 1.6, 15.0, 120.0)
    centres = frame.pick(rng, _location_weight(lesion, frame), n_clusters)
    envelope = _blobs(frame, centres, np.full(n_clusters, radius / 1.5))
    inside = frame.at(envelope) * (frame.at(frame.depth) > 4.0)
    n_nod = int(np.clip(4 * np.pi / 3 * radius**3 * n_clusters / 1000 / comp["nodule_ml"], 1, 4000))
    nodules = _blobs(frame, frame.pick(rng, inside + 1e-9, n_nod), np.full(n_nod, comp["nodule_mm"] / 1.2))
    buds = frame.tubes(rng, frame.pick(rng, inside + 1e-9, max(n_nod // 4, 1)), 6.0, (comp["bud_mm"], comp["bud_mm"]))
    patches = envelope * np.clip(0.5 + 0.5 * frame.irregular, 0, 1)
    solid = np.maximum(nodules, np.clip(buds * 3, 0, 1))
    return solid + 0.5 * patches, {"solid": solid}


_FOOTPRINTS = {
    "patchy_ggo": _foot_patchy,
    "round_ggo": _foot_round,
    "subpleural": _foot_subpleural,
    "crazy_paving": _foot_patchy,
    "organizing": _foot_organizing,
    "diffuse_reticular": _foot_diffuse,
    "lobar": _foot_lobar,
    "bronchopneumonia": _foot_broncho,
}


def _ggo(out, amount, comp, frame, base, var=None):
    """Ground glass: lift the HU by ``amount`` of the way to ``ggo_hu`` (+- its variation), keeping the texture."""
    level = comp["ggo_hu"] + comp["ggo_var_hu"] * (frame.irregular if var is None else var)
    return out + amount * np.maximum(level - base, MIN_RISE_HU)


def _blend(out, weight, hu, frame):
    """Replace the HU by ``hu`` (+- 10 HU of fine texture) in proportion to ``weight``."""
    return out * (1 - weight) + weight * (hu + 10.0 * frame.fine)


def _airways(rng, frame, out, sel, n, lumen_mm, length_mm):
    """Air tubes with a soft-tissue wall inside ``sel`` (air bronchograms, bronchiectasis)."""
    if n < 1 or not sel.any():
        return out
    starts = np.argwhere(sel)[rng.integers(0, int(sel.sum()), n)]
    lumen = frame.tubes(rng, starts, length_mm, lumen_mm) * sel
    wall = np.clip(frame.tubes(rng, starts, length_mm, (lumen_mm[0] + 1.0, lumen_mm[1] + 1.0)) * sel - lumen, 0, 1)
    return _blend(_blend(out, wall, AIRWAY_HU[1], frame), lumen, AIRWAY_HU[0], frame)


def _paint(rng, comp, frame, out, amount, sel, base, parts):
    """Apply pattern ``comp`` where ``amount > 0`` (only inside ``sel``); ``parts``: its footprint's parts."""
    name = comp["pattern"]
    if name in ("patchy_ggo", "crazy_paving", "round_ggo", "subpleural"):
        out = _ggo(out, amount, comp, frame, base)
    if name == "patchy_ggo" and comp["consolidation_share"] > 0.02:
        score = parts["score"]
        core = np.quantile(score[sel], 1 - comp["consolidation_share"])
        weight = np.clip(0.5 + (score - core) / (score[sel].max() - core + 1e-6), 0, 1) * (score >= core) * sel
        out = _blend(out, weight, comp["consolidation_hu"], frame)
    elif name == "subpleural" and comp["band"]:
        band = np.exp(-(((frame.depth - comp["band_depth_mm"]) / comp["band_width_mm"]) ** 2))
        out = out + comp["band_add_hu"] * band * sel
    elif name == "crazy_paving":
        out = out + comp["septa_add_hu"] * _network(rng, frame, comp["cell_mm"]) * amount
    elif name == "organizing":
        dense = np.clip(np.maximum((parts["ring"] - 0.7) / 0.3, parts["arcade"] * 2), 0, 1) * amount
        out = _blend(_ggo(out, amount - dense, comp, frame, base), dense, comp["consolidation_hu"], frame)
    elif name == "diffuse_reticular":
        out = _ggo(out, amount, comp, frame, base, var=frame.regional)
        lines = _network(rng, frame, comp["cell_mm"], 0.2) * (0.5 + 0.5 * frame.low + 0.5 * np.exp(-frame.depth / 20))
        out = out + comp["reticulation_add_hu"] * lines * amount
        out = _airways(rng, frame, out, sel, comp["bronchiectasis"], comp["lumen_mm"], 40.0)
    elif name == "lobar":
        out = _blend(out, amount, comp["consolidation_hu"], frame)
        out = _airways(rng, frame, out, amount > 0.8, comp["bronchograms"], comp["lumen_mm"], 35.0)
    elif name == "bronchopneumonia":
        solid = np.clip(parts["solid"] * 1.5, 0, 1) * amount
        out = _blend(_ggo(out, amount - solid, comp, frame, base), solid, comp["nodule_hu"], frame)
    return out


def paint_lesions(
    rng: np.random.Generator,
    lesion: dict[str, Any],
    hu: np.ndarray,
    lung: np.ndarray,
    spacing: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Paint the drawn ``lesion`` (:func:`draw_lesions`) into ``hu`` inside ``lung``.

    Args:
        rng: the rendering stream.
        lesion: drawn involvement, weights and patterns.
        hu: ``(X, Y, Z)`` HU volume, Y towards anterior, Z towards superior.
        lung: bool, same shape: where lesions may lie.
        spacing: voxel size in mm.

    Returns:
        ``(new_hu, mask)``: float32 HU (unchanged outside ``mask``) and the bool lesion mask, exactly
        ``round(target_fraction * lung.sum())`` voxels of ``lung`` (fewer only if the lung is smaller).
    """
    out = np.asarray(hu, dtype=np.float32).copy()
    mask = np.zeros(lung.shape, bool)
    n_total = round(lesion["target_fraction"] * int(lung.sum()))
    if n_total == 0 or not lesion["lesions"]:
        return out, mask
    frame = LungFrame.build(rng, lung, spacing)
    base = float(np.median(out[lung]))
    tie = 1e-3 * frame.irregular  # continuous: no two voxels score alike
    claimed = 0
    for i, comp in enumerate(lesion["lesions"]):
        last = i == len(lesion["lesions"]) - 1
        n_vox = n_total - claimed if last else round(comp["share"] * n_total)
        free = lung & ~mask
        n_vox = min(n_vox, int(free.sum()))
        if n_vox <= 0:
            continue
        score, parts = _FOOTPRINTS[comp["pattern"]](rng, comp, lesion, frame, n_vox)
        n_conf = _n_confluent(comp, n_vox) if "confluent" in parts else 0
        # confluent patches (CT-1) claim their voxels first, the pattern's own footprint the rest
        for field, n in ((parts.get("confluent"), n_conf), (score, n_vox - n_conf)):
            if n <= 0:
                continue
            field = (field * (1 + comp["ragged"] * frame.fine) + tie).astype(np.float32)
            sel, amount = _claim(field, lung & ~mask, n, comp["margin"])
            out = _paint(rng, comp, frame, out, amount, sel, base, {**parts, "score": field})
            mask |= sel
        claimed += n_vox
    return out, mask


def _claim(score: np.ndarray, free: np.ndarray, n: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` voxels of ``free`` with the highest ``score`` (bool ``sel``) and how much of its full
    contrast a lesion has there (``amount``: ``EDGE`` at the margin, 1 deeper than ``margin`` of the way from
    the threshold to the selection's median score; 0 outside ``sel``)."""
    flat = np.flatnonzero(free)
    values = score.ravel()[flat]
    top = np.argpartition(-values, n - 1)[:n]
    sel = np.zeros(free.shape, bool)
    sel.ravel()[flat[top]] = True
    thr = values[top].min()
    inner = max(float(np.median(values[top])) - thr, 1e-6)
    ramp = np.clip(EDGE + (1 - EDGE) * (score - thr) / (margin * inner), EDGE, 1)
    return sel, (ramp * sel).astype(np.float32)


def add_lesions(
    rng: np.random.Generator,
    category: str,
    hu: np.ndarray,
    lung: np.ndarray,
    spacing: Sequence[float],
    patterns: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw lesions for ``category`` and paint them into ``hu`` inside ``lung`` (one stream: ``rng``).

    Args:
        rng: random stream; equal streams give equal results.
        category: ``"CT-0"`` ... ``"CT-4"``.
        hu: ``(X, Y, Z)`` HU volume, Y towards anterior, Z towards superior (RAS or LAS).
        lung: bool lung region, same shape.
        spacing: voxel size in mm.
        patterns: force these patterns (see :func:`draw_lesions`).

    Returns:
        ``(new_hu, mask, params)``: float32 HU, the exact bool lesion mask and the drawn parameters.
    """
    lesion = draw_lesions(rng, category, patterns)
    new_hu, mask = paint_lesions(rng, lesion, hu, lung, spacing)
    return new_hu, mask, lesion
