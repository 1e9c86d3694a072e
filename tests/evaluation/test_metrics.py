"""Metrics against scikit-learn and closed forms on fixed inputs, edge cases, DeLong and Wilson intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from pipeline.evaluation.metrics import (
    CATEGORY_KEYS,
    PROPORTION_KEYS,
    binary_auc,
    calibration_bins,
    category_agreement,
    classification_metrics,
    delong_auc,
    has_roc_band,
    involvement_agreement,
    roc_band,
    roc_curve,
    threshold_for_sensitivity,
    wilson_interval,
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
    assert m["per_category"] == {}
    assert m["auc_ci_method"] == "DeLong" and m["proportion_ci_method"] == "Wilson score" and m["ci_level"] == 0.95
    counts = {"accuracy": (tp + tn, 60), "sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp)}
    counts.update(ppv=(tp, tp + fp), npv=(tn, tn + fn))
    for key in PROPORTION_KEYS:
        assert m[f"{key}_ci95"] == pytest.approx(wilson_closed_form(*counts[key])), key
        assert m[f"{key}_ci95"][0] < m[key] < m[f"{key}_ci95"][1]
    json.dumps(m, allow_nan=False)  # JSON-ready, no NaN


def wilson_closed_form(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    """Wilson's (1927) score interval, written out: the reference the scipy-based intervals must match."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [centre - half, centre + half]


@pytest.mark.parametrize("k, n", [(0, 7), (7, 7), (3, 10), (1, 1)])
def test_wilson_interval_matches_the_closed_form(k, n):
    lo, hi = wilson_interval(k, n)
    assert [lo, hi] == pytest.approx(wilson_closed_form(k, n))
    assert 0.0 <= lo < hi <= 1.0  # informative at 0 % and 100 %, unlike the Wald interval
    assert wilson_interval(0, 0) is None


def delong_brute_force(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """AUC and DeLong's variance from the O(m n) kernel psi(x, y) = 1 if x > y, 1/2 if x == y, else 0."""
    pos, neg = probs[labels == 1], probs[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), np.var(v10, ddof=1) / pos.size + np.var(v01, ddof=1) / neg.size


def test_delong_known_value():
    """3 pneumonia (0.4, 0.7, 0.9), 4 normal (0.1, 0.2, 0.3, 0.6): by hand, V10 = (3/4, 1, 1) with variance 1/48,
    V01 = (1, 1, 1, 2/3) with variance 1/36, so var(AUC) = (1/48) / 3 + (1/36) / 4 = 1/72 and AUC = 11/12."""
    d = delong_auc([1, 1, 1, 0, 0, 0, 0], [0.4, 0.7, 0.9, 0.1, 0.2, 0.3, 0.6])
    assert d["auc"] == pytest.approx(11 / 12) and d["se"] == pytest.approx(np.sqrt(1 / 72))
    assert d["ci"] == pytest.approx([11 / 12 - 1.959964 * np.sqrt(1 / 72), 1.0])  # clipped at 1
    assert not d["degenerate"] and d["reason"] is None


def test_delong_matches_the_kernel_definition_and_the_bootstrap():
    """Fast (midrank) DeLong equals the O(m n) definition with ties, and agrees with a stratified bootstrap."""
    auc, var = delong_brute_force(LABELS, PROBS)
    d = delong_auc(LABELS, PROBS)
    assert d["auc"] == pytest.approx(auc) and d["se"] == pytest.approx(np.sqrt(var), rel=1e-12)
    boot = stats.bootstrap(
        (PROBS[LABELS == 1], PROBS[LABELS == 0]),
        lambda pos, neg: delong_brute_force(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg])[0],
        n_resamples=2000,
        vectorized=False,
        rng=np.random.default_rng(0),
    )
    assert d["se"] == pytest.approx(boot.standard_error, rel=0.15)
    m = classification_metrics(LABELS, PROBS, n_bootstrap=0)
    assert m["auc_ci95"] == d["ci"] and m["auc_se"] == d["se"] and not m["auc_ci_degenerate"]
    lo, hi = m["auc_ci95"]
    assert 0.5 < lo < m["auc"] < hi < 1.0


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


def test_all_correct_flags_the_degenerate_auc_interval():
    labels = np.array([0, 0, 0, 1, 1])
    m = classification_metrics(labels, [0.1, 0.2, 0.3, 0.8, 0.9], n_bootstrap=200)
    assert m["auc"] == 1.0 and m["auc_ci95"] is None and m["auc_se"] is None
    assert m["auc_ci_degenerate"] is True and "perfect separation" in m["auc_ci_reason"]
    for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        assert m[key] == 1.0, key
    assert m["sensitivity_ci95"] == pytest.approx(wilson_closed_form(2, 2)) and m["sensitivity_ci95"][0] < 0.5


@pytest.mark.parametrize(
    "labels, probs, reason",
    [
        ([0, 1, 0, 1], [0.4] * 4, "every score is tied"),
        ([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.95], "at least two of each"),
        ([0, 0, 0], [0.2, 0.7, 0.1], "one class only"),
    ],
)
def test_degenerate_auc_intervals_say_why(labels, probs, reason):
    d = delong_auc(labels, probs)
    assert d["degenerate"] and d["ci"] is None and d["se"] is None and reason in d["reason"]


def test_all_tied_scores_give_auc_one_half():
    labels = np.array([0, 1, 0, 1, 1])
    assert binary_auc(labels, np.full(5, 0.4)) == 0.5 == skm.roc_auc_score(labels, np.full(5, 0.4))


def test_one_class_has_no_auc_and_undefined_ratios_are_none():
    m = classification_metrics([0, 0, 0], [0.2, 0.7, 0.1], n_bootstrap=100)
    assert m["auc"] is None and m["auc_ci95"] is None and m["auc_ci_degenerate"]
    assert m["sensitivity_ci95"] is None and m["npv_ci95"] == pytest.approx(wilson_closed_form(2, 2))
    assert m["sensitivity"] is None and m["npv"] == 1.0 and m["specificity"] == pytest.approx(2 / 3)
    assert m["ppv"] == 0.0 and m["f1"] == 0.0  # one false positive: both defined and zero
    m = classification_metrics([0, 0], [0.2, 0.1], n_bootstrap=0)
    assert m["ppv"] is None and m["f1"] is None and m["sensitivity"] is None
    json.dumps(m, allow_nan=False)


def test_roc_band_brackets_the_curve():
    grid, lo, hi = roc_band(LABELS, PROBS, n_bootstrap=300, seed=0)
    fpr, tpr, _ = roc_curve(LABELS, PROBS)
    point = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    assert grid.shape == lo.shape == hi.shape == (101,)
    assert np.all(lo <= hi) and np.all(np.diff(lo) >= 0) and hi[-1] == 1.0
    inside = (lo <= point) & (point <= hi)
    assert inside.mean() > 0.9
    again = roc_band(LABELS, PROBS, n_bootstrap=300, seed=0)
    assert np.array_equal(again[1], lo) and not np.array_equal(roc_band(LABELS, PROBS, 300, seed=1)[1], lo)
    for labels in ([1, 1], [1, 1, 1, 0]):  # a class absent, or one study in it: nothing to resample
        assert not has_roc_band(labels)
        with pytest.raises(ValueError, match="two studies of each class"):
            roc_band(labels, [0.2, 0.3, 0.4, 0.5][: len(labels)])
    assert has_roc_band([1, 1, 0, 0])


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
    intervals = {f"{k}_ci95" for k in PROPORTION_KEYS}
    assert all(set(v) == set(CATEGORY_KEYS) | intervals for v in per.values())
    ct0 = per["CT-0"]
    sel = mixed == "CT-0"
    assert ct0["n"] == sel.sum() and ct0["auc"] is None and ct0["sensitivity"] is None
    assert ct0["sensitivity_ci95"] is None and ct0["specificity_ci95"][0] < ct0["specificity"]
    assert ct0["positive_rate"] == pytest.approx((probs[sel] >= 0.5).mean())
    assert ct0["accuracy"] == pytest.approx((probs[sel] < 0.5).mean())
    assert ct0["mean_prob"] == pytest.approx(probs[sel].mean())
    sel = mixed == "mix"
    assert per["mix"]["auc"] == pytest.approx(skm.roc_auc_score(labels[sel], probs[sel]))
    assert sum(v["n"] for v in per.values()) == 59
    json.dumps(m, allow_nan=False)


def test_youden_threshold_lies_midway_below_the_best_cut():
    fpr, tpr, thr = skm.roc_curve(LABELS, PROBS, drop_intermediate=False)
    j = tpr - fpr
    cut = thr[np.flatnonzero(j >= j.max() - 1e-12)].max()
    below = np.unique(PROBS)[np.unique(PROBS) < cut].max()
    t = youden_threshold(LABELS, PROBS)
    assert t == pytest.approx((cut + below) / 2) and t not in PROBS
    assert np.array_equal(PROBS >= t, PROBS >= cut)  # the same split of the validation cases


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_threshold_for_sensitivity_is_the_highest_reaching_the_target(target):
    t = threshold_for_sensitivity(LABELS, PROBS, target)
    assert skm.recall_score(LABELS, PROBS >= t) >= target
    scores = np.unique(PROBS)
    above, below = scores[scores > t], scores[scores < t]
    assert all(skm.recall_score(LABELS, PROBS >= h) < target for h in above[1:])  # no higher cut reaches it
    assert t == pytest.approx((above[0] + below[-1]) / 2)  # between two scores, on none


def test_threshold_below_the_lowest_score_and_between_adjacent_floats():
    assert threshold_for_sensitivity([1, 0, 1], [0.2, 0.3, 0.5], 1.0) == pytest.approx(0.1)  # 0 and the lowest score
    a = 0.3
    b = np.nextafter(a, 1.0)  # no float between them: the threshold stays on the upper score
    assert youden_threshold([0, 1], [a, b]) == b


def test_involvement_agreement():
    predicted = [0.10, 0.30, 0.20, 0.80, 0.55, None, 0.4]
    true = [0.12, 0.25, 0.22, 0.70, 0.50, 0.3, None]
    a = involvement_agreement(predicted, true)
    assert (a["n"], a["n_without_truth"]) == (5, 1)
    assert a["spearman"] == pytest.approx(stats.spearmanr(predicted[:5], true[:5]).statistic)
    assert a["mae_pp"] == pytest.approx(100 * np.mean(np.abs(np.subtract(predicted[:5], true[:5]))))
    constant = involvement_agreement([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert constant["spearman"] is None and constant["mae_pp"] == pytest.approx(30.0)
    assert involvement_agreement([0.1], [None])["mae_pp"] is None
    assert a["mae_pp_ci95"][0] <= a["mae_pp"] <= a["mae_pp_ci95"][1]
    low, high = constant["mae_pp_ci95"]  # the cases err by 40, 30 and 20 points: a resample's mean lies between
    assert 20.0 - 1e-9 <= low < 30.0 < high <= 40.0 + 1e-9
    assert involvement_agreement([0.1, 0.2], [0.1, 0.3])["mae_pp_ci95"] is None  # under three cases


def test_severity_intervals_narrow_with_more_studies_and_are_reproducible():
    rng = np.random.default_rng(0)
    labels = ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"]
    widths = {}
    for n in (20, 200):
        true = rng.uniform(0.0, 1.0, n)
        measured = np.clip(true + rng.normal(0.0, 0.08, n), 0.0, 1.0)
        grade = lambda v: [labels[min(int(x * 5), 4)] for x in v]  # noqa: E731
        mae = involvement_agreement(list(measured), list(true))
        kappa = category_agreement(grade(measured), grade(true))
        assert mae["mae_pp_ci95"][0] < mae["mae_pp"] < mae["mae_pp_ci95"][1]
        assert kappa["kappa_quadratic_ci95"][0] < kappa["kappa_quadratic"] <= kappa["kappa_quadratic_ci95"][1] <= 1.0
        assert category_agreement(grade(measured), grade(true))["kappa_quadratic_ci95"] == kappa["kappa_quadratic_ci95"]
        widths[n] = (np.diff(mae["mae_pp_ci95"])[0], np.diff(kappa["kappa_quadratic_ci95"])[0])
    assert widths[200][0] < 0.5 * widths[20][0] and widths[200][1] < 0.5 * widths[20][1]  # about sqrt(10) narrower


def test_category_agreement():
    true = ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4", "CT-2", "", "CT-1"]
    predicted = ["CT-0", "CT-2", "CT-2", "CT-3", "CT-3", "CT-0", "CT-1", "other"]
    a = category_agreement(predicted, true)
    kept = [0, 1, 2, 3, 4, 5]  # rows with both categories known
    t, q = [true[i] for i in kept], [predicted[i] for i in kept]
    assert a["n"] == 6 and a["labels"] == ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"]
    assert a["confusion"] == skm.confusion_matrix(t, q, labels=a["labels"]).tolist()
    assert a["confusion"][2] == [1, 0, 1, 0, 0]  # rows: the true category
    assert a["kappa_quadratic"] == pytest.approx(skm.cohen_kappa_score(t, q, weights="quadratic"))
    assert a["accuracy"] == pytest.approx(3 / 6)
    assert category_agreement(["CT-1"], ["CT-1"])["kappa_quadratic"] is None  # undefined with one category
    assert category_agreement(["CT-1"], ["CT-1"])["kappa_quadratic_ci95"] is None
    assert a["kappa_quadratic_ci95"][0] <= a["kappa_quadratic"] <= a["kappa_quadratic_ci95"][1]
    assert category_agreement([""], ["CT-1"])["confusion"] is None


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
