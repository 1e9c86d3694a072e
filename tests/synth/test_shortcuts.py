"""No shortcut between categories in the synthetic cohorts: nothing but the lesions depends on the category.

(a) A lung HU histogram (20 bins, -1000..0 HU) fed to a logistic regression must not separate normal
(CT-0) from mild (CT-1) phantoms nearly perfectly: mild disease shifts the histogram a little, but
normals vary (inspiration, dependent density, atelectasis, nodules, emphysema...) as much as real ones.
(b) Every nuisance parameter (scanner, geometry, patient, breathing, outside-lung findings, mimics)
is drawn from a stream the category never touches: for one seed they are identical in every category,
and over a cohort's study seeds their distributions do not differ between categories.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

from pipeline.synth.generate import _study_seed
from pipeline.synth.phantom import (
    CATEGORY_BANDS,
    LESION_KEYS,
    MIMIC_RATES,
    SCANNERS,
    draw_nuisance,
    generate_study,
    mimics_of,
)

#: Parameters computed from the lesion (not drawn): left out of the nuisance comparison.
DERIVED = {"lung_voxels"}


def lung_region(image: np.ndarray) -> np.ndarray:
    """A simple HU lung mask: per axial slice, air (< -400 HU) inside the body (the largest region above
    -400 HU with its holes filled), then holes filled (vessels, opacities surrounded by lung)."""
    out = np.zeros(image.shape, bool)
    for k in range(image.shape[2]):
        sl = image[..., k]
        labels, n = ndimage.label(sl > -400)
        if not n:
            continue
        body = ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
        air = ndimage.binary_opening(body & (sl < -400))
        out[..., k] = ndimage.binary_fill_holes(air)
    return out


def lung_histogram(image: np.ndarray, bins: int = 20) -> np.ndarray:
    """Share of the lung voxels in ``bins`` equal HU bins between -1000 and 0."""
    values = image[lung_region(image)]
    counts, _ = np.histogram(values, bins=bins, range=(-1000, 0))
    return counts / max(counts.sum(), 1)


def histogram_auc(n: int = 20, matrix: int = 96, seed: int = 0) -> float:
    """Cross-validated AUC of a logistic regression on lung HU histograms, ``n`` CT-0 vs ``n`` CT-1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = [], []
    for label, category in enumerate(("CT-0", "CT-1")):
        for i in range(n):
            study = generate_study(category, _study_seed(seed, label * n + i + 1), matrix=matrix)
            features.append(lung_histogram(study.image))
            labels.append(label)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    scores = cross_val_predict(model, np.array(features), np.array(labels), cv=folds, method="predict_proba")
    return float(roc_auc_score(labels, scores[:, 1]))


def test_lung_histogram_does_not_separate_normal_from_mild() -> None:
    pytest.importorskip("sklearn")
    auc = histogram_auc()
    print(f"histogram AUC CT-0 vs CT-1: {auc:.3f}")
    assert auc < 0.9, auc


def _nuisance(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in LESION_KEYS and k not in DERIVED}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_seed_same_nuisance_in_every_category(seed: int) -> None:
    studies = {c: generate_study(c, seed, matrix=48, _n_slices=36) for c in CATEGORY_BANDS}
    normal = studies["CT-0"]
    lungs = ndimage.binary_dilation(lung_region(normal.image) | (normal.image < -400), np.ones((5, 5, 3)))
    for category, study in studies.items():
        assert _nuisance(study.params) == _nuisance(normal.params), category
        assert study.params["mimics"] == normal.params["mimics"] == mimics_of(normal.params)
        assert np.array_equal(study.affine, normal.affine)
        # outside the lungs (and the motion ghost next to them) the image is the same voxel for voxel
        assert np.array_equal(study.image[~lungs], normal.image[~lungs]), category
        if category != "CT-0":
            assert study.mask.any()


def test_nuisance_distribution_independent_of_category() -> None:
    """Over the study seeds of a 5 x 200 cohort, no nuisance draw differs between categories
    (chi-square on categorical draws, Kruskal-Wallis on continuous ones)."""
    n, cats = 200, list(CATEGORY_BANDS)
    draws = {
        c: [
            draw_nuisance(np.random.default_rng(_study_seed(7, ci * n + i + 1)), 512, None, SCANNERS["mosmed"])
            for i in range(n)
        ]
        for ci, c in enumerate(cats)
    }
    categorical = ["kernel", "padding_hu", "arms_down", "breasts", "couch", "contrast"]
    categorical += [f"mimic_{m}" for m in MIMIC_RATES]
    for key in categorical:
        values = sorted({str(d[key]) for c in cats for d in draws[c]})
        if len(values) < 2:
            continue
        table = np.array([[sum(str(d[key]) == v for d in draws[c]) for v in values] for c in cats])
        assert stats.chi2_contingency(table).pvalue > 1e-3, (key, table)
    for key in ("noise_hu", "fov_mm", "n_slices", "body_a", "lung_hu", "inspiration", "dependent_hu"):
        assert stats.kruskal(*[[d[key] for d in draws[c]] for c in cats]).pvalue > 1e-3, key
    # mimics at their stated rates, in every category
    for name, rate in MIMIC_RATES.items():
        for c in cats:
            share = np.mean([d[f"mimic_{name}"] for d in draws[c]])
            assert abs(share - rate) < 4 * np.sqrt(rate * (1 - rate) / n) + 0.01, (name, c, share)


def test_mimics_stay_out_of_the_lesion_mask() -> None:
    """A mass (and any nodule, scar or atelectasis) is never labelled lesion: in a CT-4 twin whose
    lesions cover most of the lung, the mimic's dense voxels stay outside the mask."""
    for seed in range(500):
        p = draw_nuisance(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))), 64, 36)
        if p["mimic_mass"]:
            break
    normal = generate_study("CT-0", seed, matrix=64, _n_slices=36)
    sick = generate_study("CT-4", seed, matrix=64, _n_slices=36)
    assert "mass" in normal.params["mimics"] and not normal.mask.any()
    solid = normal.mimic_mask
    assert solid.sum() > 20 and np.array_equal(solid, sick.mimic_mask)
    assert np.median(normal.image[solid]) > -300  # the mass is dense
    assert sick.lesion_fraction > 0.75
    assert not sick.mask[solid].any()
