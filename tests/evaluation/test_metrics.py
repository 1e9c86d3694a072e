"""Metrics against scikit-learn on fixed inputs, edge cases and the bootstrap interval."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from pipeline.evaluation.metrics import (
    CATEGORY_KEYS,
    binary_auc,
    calibration_bins,
    classification_metrics,
    roc_band,
    roc_curve,
    threshold_for_sensitivity,
    youden_threshold,
)

RNG = np.random.default_rng(42)
#: 60 cases, 25 positive, scores with ties (rounded to 0.05) and some overlap between classes.
LABELS = np.r_[np.ones(25, int), np.zeros(35, int)]
PROBS = np.round(np.clip(np.r_[RNG.normal(0.65, 0.2, 25), RNG.normal(0.35, 0.2, 35)], 0, 1) / 0.05) * 0.05


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.72])
def test_point_metrics_match_sklearn(threshold):
    m = classification_metrics(LABELS, PROBS, threshold=threshold, n_bootstrap=0)
    pred = (PROBS >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(LABELS, pred).ravel()
    assert m["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert (m["n"], m["n_positive"], m["n_negative"]) == (60, 25, 35)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(LABELS, PROBS), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(LABELS, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(LABELS, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(LABELS, pred, pos_label=0))
    assert m["ppv"] == pytest.approx(skm.precision_score(LABELS, pred))
    assert m["npv"] == pytest.approx(skm.precision_score(LABELS, pred, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(LABELS, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(LABELS, PROBS))
    assert m["positive_rate"] == pytest.approx(pred.mean())
    assert m["auc_ci95"] is None and m["per_category"] == {}
    json.dumps(m, allow_nan=False)  # JSON-ready, no NaN


def test_roc_curve_matches_sklearn():
    fpr, tpr, thr = roc_curve(LABELS, PROBS)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(LABELS, PROBS, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf and thr.size == np.unique(PROBS).size + 1


def test_ece_and_calibration_bins_match_sklearn():
    probs = np.r_[0.0, 0.1, 0.15, 0.5, 0.55, 0.99, 1.0, 0.3, 0.31, 0.8]  # 0.1 and 0.5 sit on edges
    labels = np.r_[0, 0, 1, 0, 1, 1, 1, 0, 1, 1]
    bins = calibration_bins(labels, probs)
    filled = [b for b in bins if b["n"]]
    prob_true, prob_pred = calibration_curve(labels, probs, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([b["frac_positive"] for b in filled], prob_true)
    np.testing.assert_allclose([b["mean_prob"] for b in filled], prob_pred)
    assert sum(b["n"] for b in bins) == 10 and bins[0]["n"] == 2  # 0.0 and 0.1 in the first bin
    assert all(b["mean_prob"] is None and b["frac_positive"] is None for b in bins if not b["n"])
    counts = np.array([b["n"] for b in filled])
    expected = np.sum(counts * np.abs(prob_true - prob_pred)) / counts.sum()
    assert classification_metrics(labels, probs, n_bootstrap=0)["ece"] == pytest.approx(expected)


def test_perfectly_calibrated_scores_have_zero_ece():
    labels = np.r_[np.zeros(4, int), np.ones(6, int)]
    assert classification_metrics(labels, labels.astype(float), n_bootstrap=0)["ece"] == 0.0


def test_all_correct():
    labels = np.array([0, 0, 0, 1, 1])
    m = classification_metrics(labels, [0.1, 0.2, 0.3, 0.8, 0.9], n_bootstrap=200)
    assert m["auc"] == 1.0 and m["auc_ci95"] == [1.0, 1.0]
    for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        assert m[key] == 1.0, key


def test_all_tied_scores_give_auc_one_half():
    labels = np.array([0, 1, 0, 1, 1])
    assert binary_auc(labels, np.full(5, 0.4)) == 0.5 == skm.roc_auc_score(labels, np.full(5, 0.4))


def test_one_class_has_no_auc_and_undefined_ratios_are_none():
    m = classification_metrics([0, 0, 0], [0.2, 0.7, 0.1], n_bootstrap=100)
    assert m["auc"] is None and m["auc_ci95"] is None
    assert m["sensitivity"] is None and m["npv"] == 1.0 and m["specificity"] == pytest.approx(2 / 3)
    assert m["ppv"] == 0.0 and m["f1"] == 0.0  # one false positive: both defined and zero
    m = classification_metrics([0, 0], [0.2, 0.1], n_bootstrap=0)
    assert m["ppv"] is None and m["f1"] is None and m["sensitivity"] is None
    json.dumps(m, allow_nan=False)


def test_bootstrap_interval_is_deterministic_and_contains_the_estimate():
    a = classification_metrics(LABELS, PROBS, n_bootstrap=500, seed=3)
    b = classification_metrics(LABELS, PROBS, n_bootstrap=500, seed=3)
    c = classification_metrics(LABELS, PROBS, n_bootstrap=500, seed=4)
    lo, hi = a["auc_ci95"]
    assert a["auc_ci95"] == b["auc_ci95"] != c["auc_ci95"]
    assert 0.5 < lo < a["auc"] < hi <= 1.0
    assert 0.05 < hi - lo < 0.4  # a real spread for 60 cases, not a degenerate interval


def test_roc_band_brackets_the_curve():
    grid, lo, hi = roc_band(LABELS, PROBS, n_bootstrap=300, seed=0)
    fpr, tpr, _ = roc_curve(LABELS, PROBS)
    point = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    assert grid.shape == lo.shape == hi.shape == (101,)
    assert np.all(lo <= hi) and np.all(np.diff(lo) >= 0) and hi[-1] == 1.0
    inside = (lo <= point) & (point <= hi)
    assert inside.mean() > 0.9
    with pytest.raises(ValueError, match="both classes"):
        roc_band([1, 1], [0.2, 0.3])


def test_per_category_including_single_class_categories():
    cats = np.array(["CT-0"] * 35 + ["CT-2"] * 15 + ["CT-3"] * 10)
    labels = np.r_[np.zeros(35, int), np.ones(25, int)]
    probs = np.r_[PROBS[25:], PROBS[:25]]
    mixed = cats.copy()
    mixed[:5] = "CT-X"  # another single-class category
    mixed[30:40] = "mix"  # five negatives and five positives
    mixed[0] = ""  # no category
    m = classification_metrics(labels, probs, categories=mixed, n_bootstrap=0)
    per = m["per_category"]
    assert set(per) == {"CT-0", "CT-2", "CT-3", "CT-X", "mix"}
    assert all(set(v) == set(CATEGORY_KEYS) for v in per.values())
    ct0 = per["CT-0"]
    sel = mixed == "CT-0"
    assert ct0["n"] == sel.sum() and ct0["auc"] is None and ct0["sensitivity"] is None
    assert ct0["positive_rate"] == pytest.approx((probs[sel] >= 0.5).mean())
    assert ct0["accuracy"] == pytest.approx((probs[sel] < 0.5).mean())
    assert ct0["mean_prob"] == pytest.approx(probs[sel].mean())
    sel = mixed == "mix"
    assert per["mix"]["auc"] == pytest.approx(skm.roc_auc_score(labels[sel], probs[sel]))
    assert sum(v["n"] for v in per.values()) == 59
    json.dumps(m, allow_nan=False)


def test_youden_threshold_matches_sklearn_roc():
    fpr, tpr, thr = skm.roc_curve(LABELS, PROBS, drop_intermediate=False)
    j = tpr - fpr
    expected = thr[np.flatnonzero(j == j.max())].max()
    assert youden_threshold(LABELS, PROBS) == pytest.approx(expected)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_threshold_for_sensitivity_is_the_highest_reaching_the_target(target):
    t = threshold_for_sensitivity(LABELS, PROBS, target)
    assert skm.recall_score(LABELS, PROBS >= t) >= target
    higher = np.unique(PROBS[PROBS > t])
    assert all(skm.recall_score(LABELS, PROBS >= h) < target for h in higher)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="0 or 1"):
        classification_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classification_metrics([0, 1], [0.1, 1.2])
    with pytest.raises(ValueError, match="one length"):
        classification_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [])
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="positive cases"):
        threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9)
