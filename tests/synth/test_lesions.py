"""Tests of the lesion patterns: rates as documented, exact masks, determinism, forced patterns, CT-1 calibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.synth.generate import _study_seed
from pipeline.synth.lesions import (
    ADDON_RATES,
    CATEGORY_BANDS,
    CT1_CONFLUENT_SHARE,
    CT1_RAGGED,
    PATTERNS,
    PRIMARY_RATES,
    REAL_CT1,
    VIRAL,
    add_lesions,
    draw_lesions,
    paint_lesions,
)
from pipeline.synth.phantom import generate_study

SPACING = (1.5, 1.5, 8.0)
POSITIVE = [c for c in CATEGORY_BANDS if c != "CT-0"]


def _chest(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small HU volume (X, Y, Z) at :data:`SPACING` with two ellipsoidal lungs (-850 HU +- 20, 42 x 66 x 120
    mm) in soft tissue (40 HU)."""
    shape = (96, 64, 16)
    x, y, z = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij")
    lung = np.zeros(shape, bool)
    for cx in (-22.0, 22.0):
        lung |= ((x - cx) / 14) ** 2 + (y / 22) ** 2 + (z / 7.5) ** 2 < 1
    hu = np.where(lung, -850.0, 40.0) + np.random.default_rng(seed).normal(0, 20, shape)
    return hu.astype(np.float32), lung


def test_rate_tables_are_probabilities() -> None:
    assert set(PRIMARY_RATES) == set(POSITIVE)
    for category, rates in PRIMARY_RATES.items():
        assert set(rates) <= set(PATTERNS), category
        assert sum(rates.values()) == pytest.approx(1.0), category
    assert set(ADDON_RATES) <= set(VIRAL) and set(VIRAL) <= set(PATTERNS)


@pytest.mark.parametrize("category", POSITIVE)
def test_patterns_drawn_at_documented_rates(category: str) -> None:
    """Over 4,000 draws (parameters only, nothing rendered) the primary patterns and the add-ons (given a
    viral primary) come at their rates, within 4 binomial standard errors."""
    n = 4000
    draws = [draw_lesions(np.random.default_rng(i), category) for i in range(n)]
    primaries = [d["lesions"][0]["pattern"] for d in draws]
    for name in PATTERNS:
        rate = PRIMARY_RATES[category].get(name, 0.0)
        share = primaries.count(name) / n
        assert abs(share - rate) <= 4 * np.sqrt(rate * (1 - rate) / n) + 1e-9, (name, share, rate)
    for name, rate in ADDON_RATES.items():
        eligible = [d for d in draws if d["lesions"][0]["pattern"] in VIRAL and d["lesions"][0]["pattern"] != name]
        share = np.mean([name in d["patterns"].split("+")[1:] for d in eligible])
        assert abs(share - rate) <= 4 * np.sqrt(rate * (1 - rate) / len(eligible)), (name, share, rate)
    # non-viral primaries come alone; the shares add up; every level is inside the band
    lo, hi = CATEGORY_BANDS[category]
    for d in draws:
        names = d["patterns"].split("+")
        assert names == [c["pattern"] for c in d["lesions"]]
        assert names[0] in VIRAL or len(names) == 1
        assert sum(c["share"] for c in d["lesions"]) == pytest.approx(1.0)
        assert lo < d["target_fraction"] < hi


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_forced_pattern_paints_an_exact_mask(pattern: str) -> None:
    """Each pattern, forced, paints into a given lung region: the mask is exactly the voxels whose HU changed,
    all inside the lung, as many as the drawn involvement; the same stream gives the same lesion."""
    hu, lung = _chest()
    new, mask, params = add_lesions(np.random.default_rng(3), "CT-2", hu, lung, SPACING, patterns=(pattern,))
    assert params["patterns"] == pattern and new.dtype == np.float32
    assert mask.any() and not (mask & ~lung).any()
    assert mask.sum() == round(params["target_fraction"] * lung.sum())
    assert np.array_equal(new != hu, mask)
    assert np.median(new[mask]) > np.median(hu[mask]) + 100  # denser than the lung it replaced
    again = add_lesions(np.random.default_rng(3), "CT-2", hu, lung, SPACING, patterns=(pattern,))
    assert np.array_equal(again[0], new) and np.array_equal(again[1], mask) and again[2] == params
    other = add_lesions(np.random.default_rng(4), "CT-2", hu, lung, SPACING, patterns=(pattern,))
    assert not np.array_equal(other[1], mask)


@pytest.mark.parametrize("category", POSITIVE)
def test_drawn_mixtures_keep_the_band(category: str) -> None:
    hu, lung = _chest(1)
    lo, hi = CATEGORY_BANDS[category]
    for seed in range(3):
        new, mask, params = add_lesions(np.random.default_rng(seed), category, hu, lung, SPACING)
        assert lo < mask.sum() / lung.sum() < hi, params["patterns"]
        assert np.array_equal(new != hu, mask)


def test_pattern_signatures() -> None:
    """What makes each pattern itself: lobar consolidation is solid with air inside it; reticular disease
    has air-filled airways and lines denser than its ground glass; round foci make several pieces."""
    hu, lung = _chest(2)
    rng = np.random.default_rng

    new, mask, _ = add_lesions(rng(5), "CT-3", hu, lung, SPACING, patterns=("lobar",))
    assert np.median(new[mask]) > -100 and (new[mask] < -800).any()  # consolidation, air bronchograms
    new, mask, _ = add_lesions(rng(5), "CT-3", hu, lung, SPACING, patterns=("diffuse_reticular",))
    assert (new[mask] < -880).any() and np.percentile(new[mask], 95) > np.median(new[mask]) + 100
    new, mask, _ = add_lesions(rng(5), "CT-2", hu, lung, SPACING, patterns=("round_ggo",))
    assert ndimage.label(mask)[1] >= 3


@pytest.mark.parametrize("pattern", ["round_ggo", "subpleural"])
def test_ct1_confluent_patches_keep_the_mask_exact(pattern: str) -> None:
    """CT-1 round and subpleural lesions claim their confluent patches first, then the rest of their footprint:
    the mask is still exactly the voxels whose HU changed, as many as the involvement; same stream, same lesion."""
    hu, lung = _chest()
    for seed in range(3):
        new, mask, params = add_lesions(np.random.default_rng(seed), "CT-1", hu, lung, SPACING, patterns=(pattern,))
        comp = params["lesions"][0]
        assert CT1_CONFLUENT_SHARE[0] <= comp["confluent_share"] <= CT1_CONFLUENT_SHARE[1]
        assert comp["confluent_patches"] in (1, 2, 3)
        assert mask.sum() == round(params["target_fraction"] * lung.sum()) and not (mask & ~lung).any()
        assert np.array_equal(new != hu, mask)
        again = add_lesions(np.random.default_rng(seed), "CT-1", hu, lung, SPACING, patterns=(pattern,))
        assert np.array_equal(again[0], new) and np.array_equal(again[1], mask)


def test_confluent_patches_hold_the_largest_piece() -> None:
    """CT-1 round foci over 8 seeds: with their confluent patches the largest 6-connected piece holds a median
    of at least 40 % of the lesion; the same draws with no patches (share 0), under 25 %."""
    hu, lung = _chest()
    shares: dict[bool, list[float]] = {True: [], False: []}
    for seed in range(8):
        lesion = draw_lesions(np.random.default_rng(seed), "CT-1", ("round_ggo",))
        for patches in (True, False):
            comps = [c if patches else {**c, "confluent_share": 0.0} for c in lesion["lesions"]]
            _, mask = paint_lesions(np.random.default_rng(seed), {**lesion, "lesions": comps}, hu, lung, SPACING)
            labels, _ = ndimage.label(mask)
            shares[patches].append(np.bincount(labels.ravel())[1:].max() / mask.sum())
    assert np.median(shares[True]) >= 0.4 and np.median(shares[False]) < 0.25, shares


def test_only_ct1_draws_confluent_patches_small_foci_and_rougher_margins() -> None:
    """CT-2..CT-4 draw round foci and subpleural lesions as before (no patches, margins as drawn); CT-1 draws
    patches, foci 5-14 mm and margins ``CT1_RAGGED`` times as ragged."""
    for seed in range(50):
        for category in POSITIVE:
            lesion = draw_lesions(np.random.default_rng(seed), category, ("round_ggo", "subpleural"))
            round_foci, subpleural = lesion["lesions"]
            factor = CT1_RAGGED if category == "CT-1" else 1.0
            assert 0.3 * factor <= round_foci["ragged"] <= 0.6 * factor
            assert 0.1 * factor <= subpleural["ragged"] <= 0.3 * factor
            lo, hi = round_foci["diameter_mm"]
            if category == "CT-1":
                assert 5.0 <= lo <= 6.0 and 8.0 <= hi <= 14.0
                assert all("confluent_share" in c for c in lesion["lesions"])
            else:
                assert 5.0 <= lo <= 10.0 and 12.0 <= hi <= 30.0
                assert not any("confluent_share" in c for c in lesion["lesions"])


def test_forcing_patterns_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown patterns"):
        draw_lesions(np.random.default_rng(0), "CT-2", patterns=("fibrosis",))
    with pytest.raises(ValueError, match="no lesions"):
        draw_lesions(np.random.default_rng(0), "CT-0", patterns=("lobar",))
    assert draw_lesions(np.random.default_rng(0), "CT-0") == {"target_fraction": 0.0, "patterns": "none", "lesions": []}


@pytest.mark.parametrize("pattern", ["diffuse_reticular", "lobar", "bronchopneumonia"])
def test_generate_study_with_forced_pattern(pattern: str) -> None:
    study = generate_study("CT-3", 2, matrix=64, _n_slices=33, patterns=(pattern,))
    lo, hi = CATEGORY_BANDS["CT-3"]
    assert study.params["patterns"] == pattern and lo < study.lesion_fraction < hi
    assert not (study.mask.astype(bool) & ~study.lung).any()


@pytest.mark.slow
def test_mild_disease_calibrated_on_real_ct1_masks() -> None:
    """Synthetic CT-1 at the default geometry (20 studies of a seed-0 cohort, 8 mm slices; the mask is built on
    the 256 working grid either way, so matrix 256 gives the same volumes and pieces as 512): the medians of
    total lesion volume, 6-connected pieces and largest piece fall inside the real CT-1 interquartile ranges."""
    stats = []
    for i in range(20):
        study = generate_study("CT-1", _study_seed(0, 21 + i), matrix=256)
        ml = float(np.prod(np.abs(np.diag(study.affine)[:3]))) / 1000
        labels, n = ndimage.label(study.mask)
        sizes = np.bincount(labels.ravel())[1:] * ml
        stats.append({"total_ml": study.mask.sum() * ml, "pieces": n, "largest_ml": sizes.max() if n else 0.0})
    for key, (q25, _, q75) in REAL_CT1.items():
        median = float(np.median([s[key] for s in stats]))
        assert q25 <= median <= q75, (key, median, REAL_CT1[key])
