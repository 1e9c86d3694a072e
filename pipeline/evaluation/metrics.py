"""Binary classification metrics with confidence intervals, calibration, threshold selection and severity agreement.

Conventions, shared by every function here:

- ``labels`` are 0 (normal) or 1 (pneumonia); ``probs`` are P(pneumonia) in [0, 1].
- A case is predicted positive when ``prob >= threshold`` (the convention of ROC thresholds).
- A ratio whose denominator is zero (e.g. sensitivity without positive cases, PPV without
  positive predictions, AUC with one class only) is undefined and reported as ``None``
  (``null`` in JSON), never as 0 or NaN; so is an interval that cannot be computed.

Libraries do the work wherever one does it: scikit-learn the ROC curve, AUC, confusion matrix, Brier score,
calibration curve, confusion matrix and kappa of severity categories; ``scipy.stats`` the Wilson intervals
(``binomtest(...).proportion_ci``), the bootstrap (``bootstrap``), midranks (``rankdata``) and Spearman's
correlation. Hand-written, each saying why: the DeLong variance of the AUC, the expected calibration error and
the placement of a chosen threshold between two scores.

Intervals (95 % unless ``confidence_level`` says otherwise):

- AUC: DeLong's variance (DeLong, DeLong and Clarke-Pearson 1988, by the fast algorithm of Sun and Xu 2014),
  a normal interval clipped to [0, 1] as R's pROC does. When it cannot be computed (one class, fewer than two
  cases of a class, zero variance as under perfect separation) the interval is ``None`` and the metrics say
  why (``auc_ci_degenerate``, ``auc_ci_reason``) rather than showing a zero-width ``[1, 1]``.
- sensitivity, specificity, PPV, NPV, accuracy: Wilson score intervals of the underlying counts, which stay
  informative at 0 % and 100 %.
- the ROC curve: a pointwise percentile bootstrap band, resampling within each class.
- severity agreement (the involvement's MAE, the categories' quadratic kappa): a percentile bootstrap over the
  cases, each resample keeping a case's prediction with its truth (``SEVERITY_BOOTSTRAP`` resamples, seeded).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning

__all__ = [
    "AUC_CI_METHOD",
    "CATEGORY_KEYS",
    "PROPORTION_CI_METHOD",
    "PROPORTION_KEYS",
    "SEVERITY_CATEGORIES",
    "binary_auc",
    "calibration_bins",
    "category_agreement",
    "classification_metrics",
    "delong_auc",
    "has_roc_band",
    "involvement_agreement",
    "roc_band",
    "roc_curve",
    "threshold_for_sensitivity",
    "wilson_interval",
    "youden_threshold",
]

AUC_CI_METHOD = "DeLong"
PROPORTION_CI_METHOD = "Wilson score"
CONFIDENCE_LEVEL = 0.95

#: Proportions reported with a Wilson interval under ``<key>_ci95``.
PROPORTION_KEYS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")

#: Keys reported for every category in ``classification_metrics(...)["per_category"]`` (and summarised by CV).
CATEGORY_KEYS = (
    "n",
    "n_positive",
    "n_negative",
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "brier",
    "positive_rate",
    "mean_prob",
)

#: MosMedData severity categories, in order of lung involvement (0, < 25 %, 25-50 %, 50-75 %, > 75 %).
SEVERITY_CATEGORIES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
#: Resamples and seed of the severity agreements' bootstrap intervals.
SEVERITY_BOOTSTRAP, SEVERITY_SEED = 2000, 0


def _as_arrays(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to ``(labels int64 (N,), probs float64 (N,))``."""
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or y.shape != p.shape:
        raise ValueError(f"labels and probs must be 1-D of one length, got shapes {y.shape} and {p.shape}")
    if y.size == 0:
        raise ValueError("no cases: labels and probs are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(np.unique(y).tolist()) - {0, 1})}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probs must be finite probabilities in [0, 1]")
    return y.astype(np.int64), p


def _ratio(num: float, den: float) -> float | None:
    """``num / den`` as a float, or ``None`` when ``den`` is zero."""
    return float(num) / float(den) if den else None


def _finite(value: float) -> float | None:
    """``value`` as a float, or ``None`` when it is NaN or infinite (an undefined statistic)."""
    return float(value) if np.isfinite(value) else None


def wilson_interval(successes: int, trials: int, confidence_level: float = CONFIDENCE_LEVEL) -> list[float] | None:
    """Wilson score interval ``[lo, hi]`` of a proportion (``scipy.stats.binomtest``), ``None`` without trials."""
    if trials == 0:
        return None
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level, method="wilson")
    return [float(ci.low), float(ci.high)]


def binary_auc(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``); ``None`` when ``labels`` hold one class only."""
    y, p = _as_arrays(labels, probs)
    return _auc(y, p)


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(skm.roc_auc_score(y, p)) if 0 < y.sum() < y.size else None


def delong_auc(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, confidence_level: float = CONFIDENCE_LEVEL
) -> dict:
    """The AUC with DeLong's standard error and normal-approximation interval.

    Neither scikit-learn nor scipy computes DeLong's variance, hence this code: the fast algorithm of Sun and
    Xu (IEEE Signal Process. Lett. 21, 2014), whose structural components come from midranks
    (``scipy.stats.rankdata``), so tied scores count one half as in the AUC. The interval
    ``auc -/+ z * se`` is clipped to [0, 1] (as R's pROC does).

    Returns:
        ``auc`` (``None`` with one class), ``se``, ``ci`` (``[lo, hi]``), ``degenerate`` and ``reason``:
        with one class, fewer than two cases of a class, or a zero variance (perfect separation, or every
        score tied) ``se`` and ``ci`` are ``None``, ``degenerate`` is ``True`` and ``reason`` says why.
    """
    y, p = _as_arrays(labels, probs)
    pos, neg = p[y == 1], p[y == 0]
    m, n = pos.size, neg.size
    result = {"auc": _auc(y, p), "se": None, "ci": None, "degenerate": True, "reason": None}
    if m == 0 or n == 0:
        result["reason"] = "one class only: the AUC is undefined"
        return result
    if m < 2 or n < 2:
        result["reason"] = f"{m} pneumonia and {n} normal cases: DeLong's variance needs at least two of each"
        return result
    ranks = stats.rankdata(np.r_[pos, neg])
    v10 = (ranks[:m] - stats.rankdata(pos)) / n  # per positive: share of negatives scored below it
    v01 = 1.0 - (ranks[m:] - stats.rankdata(neg)) / m  # per negative: share of positives scored above it
    se = float(np.sqrt(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n))
    if se == 0.0:
        auc = result["auc"]
        result["reason"] = (
            f"perfect separation (AUC {auc:g}): DeLong's variance is zero and these cases cannot bound the AUC; "
            "see the Wilson intervals of sensitivity and specificity"
            if auc in (0.0, 1.0)
            else "DeLong's variance is zero: every score is tied"
        )
        return result
    z = stats.norm.ppf(0.5 + confidence_level / 2)
    lo, hi = max(0.0, result["auc"] - z * se), min(1.0, result["auc"] + z * se)
    return {**result, "se": se, "ci": [float(lo), float(hi)], "degenerate": False}


def roc_curve(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score, highest first, starting at (0, 0).

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(K + 1,)`` for ``K`` distinct scores; ``thresholds[0]``
        is ``inf`` (nothing predicted positive): scikit-learn's ``roc_curve(..., drop_intermediate=False)``.
        A rate is NaN when its class is absent.
    """
    y, p = _as_arrays(labels, probs)
    return _roc(y, p)


def _roc(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # one class: its rate is NaN, documented above
        return skm.roc_curve(y, p, drop_intermediate=False)


def has_roc_band(labels: Sequence[int] | np.ndarray) -> bool:
    """Whether :func:`roc_band` can resample ``labels``: at least two studies of each class."""
    y = np.asarray(labels)
    return int((y == 1).sum()) >= 2 and int((y == 0).sum()) >= 2


def roc_band(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_points: int = 101,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise 95% percentile bootstrap band of the ROC curve (``scipy.stats.bootstrap``, resampling each class).

    Returns:
        ``(fpr_grid, tpr_lo, tpr_hi)``, each ``(n_points,)``: the 2.5th and 97.5th percentiles, over
        resamples, of the highest TPR reached at a false positive rate <= each grid value.

    Raises:
        ValueError: a class has fewer than two studies (nothing to resample: :func:`has_roc_band` says so first).
    """
    y, p = _as_arrays(labels, probs)
    if not has_roc_band(y):
        raise ValueError(
            f"an ROC band needs two studies of each class, got {int((y == 1).sum())} positive and "
            f"{int((y == 0).sum())} negative"
        )
    grid = np.linspace(0.0, 1.0, n_points)
    n_neg = int((y == 0).sum())
    # false positives allowed at each grid FPR: the largest k with k / n_neg <= grid
    allowed = np.searchsorted(np.arange(n_neg + 1) / n_neg, grid, side="right") - 1

    def tpr_on_grid(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
        # a threshold just above the (k+1)-th highest negative score admits k false positives (fewer on ties)
        cut = np.r_[np.sort(neg)[::-1], -np.inf][allowed]
        return (pos.size - np.searchsorted(np.sort(pos), cut, side="right")) / pos.size

    band = stats.bootstrap(
        (p[y == 1], p[y == 0]),
        tpr_on_grid,
        n_resamples=n_bootstrap,
        vectorized=False,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return grid, np.asarray(band.low), np.asarray(band.high)


def calibration_bins(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, n_bins: int = 10
) -> list[dict]:
    """Reliability table over ``n_bins`` equal-width bins of P(pneumonia), by ``sklearn.calibration.calibration_curve``.

    Bin ``k`` holds probabilities in ``(edges[k], edges[k + 1]]`` (the first bin includes 0), as scikit-learn bins
    them (``strategy="uniform"``); the bin sizes, which scikit-learn does not return, are counted the same way.

    Returns:
        one dict per bin: ``lo``, ``hi``, ``n`` (cases), ``mean_prob`` and ``frac_positive``
        (``None`` for an empty bin).
    """
    y, p = _as_arrays(labels, probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    frac_positive, mean_prob = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    filled = iter(zip(mean_prob.tolist(), frac_positive.tolist()))  # scikit-learn returns the non-empty bins only
    bins = []
    for k in range(n_bins):
        mean, frac = next(filled) if counts[k] else (None, None)
        bins.append({"lo": float(edges[k]), "hi": float(edges[k + 1]), "n": int(counts[k])})
        bins[-1].update(mean_prob=mean, frac_positive=frac)
    return bins


def _ece(bins: list[dict], n: int) -> float:
    """Expected calibration error: bin-size-weighted mean of ``|frac_positive - mean_prob|``.

    Hand-written: scikit-learn has the calibration curve but no ECE.
    """
    return float(sum(b["n"] * abs(b["frac_positive"] - b["mean_prob"]) for b in bins if b["n"]) / n)


def _threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Counts, rates and their Wilson intervals at ``threshold``, shared by the whole cohort and each category."""
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    counts = {
        "accuracy": (tp + tn, y.size),
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    return {
        "n": int(y.size),
        "n_positive": tp + fn,
        "n_negative": tn + fp,
        "auc": _auc(y, p),
        **{key: _ratio(*counts[key]) for key in PROPORTION_KEYS},
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "brier": float(skm.brier_score_loss(y, p, pos_label=1)),
        "positive_rate": (tp + fp) / y.size,
        "mean_prob": float(p.mean()),
        **{f"{key}_ci95": wilson_interval(*counts[key]) for key in PROPORTION_KEYS},
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def classification_metrics(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
    categories: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Every metric of a binary classifier at one threshold, JSON-ready.

    Args:
        labels: ``(N,)`` true classes, 0 normal or 1 pneumonia.
        probs: ``(N,)`` P(pneumonia) in [0, 1].
        threshold: a case is predicted pneumonia when ``prob >= threshold``.
        categories: ``(N,)`` optional group of each case (e.g. ``CT-0``..``CT-4``); empty strings
            and ``None`` belong to no category.
        n_bootstrap: resamples of the ROC curve's bootstrap band, recorded for the report (0: no band).
        seed: seed of that bootstrap.

    Returns:
        a dict with ``n``, ``n_positive``, ``n_negative``, ``threshold``, ``auc``, ``auc_se``, ``auc_ci95``
        (``[lo, hi]`` or ``None``), ``auc_ci_method`` (``"DeLong"``), ``auc_ci_degenerate`` and
        ``auc_ci_reason`` (see :func:`delong_auc`), ``accuracy``, ``sensitivity``, ``specificity``, ``ppv``,
        ``npv`` each with a Wilson interval ``<key>_ci95`` (``None`` when the ratio is undefined),
        ``proportion_ci_method``, ``ci_level``, ``f1``, ``brier``, ``ece`` (10 equal-width bins),
        ``positive_rate``, ``mean_prob``, ``confusion`` (``tp``, ``fp``, ``tn``, ``fn``), ``calibration``
        (the bins of :func:`calibration_bins`), ``n_bootstrap``, ``seed`` and ``per_category``: for each
        category present, the keys of :data:`CATEGORY_KEYS` and the Wilson intervals (``auc`` is ``None``
        for a category holding one class). Undefined ratios are ``None``.
    """
    y, p = _as_arrays(labels, probs)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    result = {"threshold": float(threshold), **_threshold_metrics(y, p, threshold)}
    delong = delong_auc(y, p)
    result.update(
        auc_se=delong["se"],
        auc_ci95=delong["ci"],
        auc_ci_method=AUC_CI_METHOD,
        auc_ci_degenerate=delong["degenerate"],
        auc_ci_reason=delong["reason"],
        proportion_ci_method=PROPORTION_CI_METHOD,
        ci_level=CONFIDENCE_LEVEL,
    )
    result["calibration"] = calibration_bins(y, p)
    result["ece"] = _ece(result["calibration"], y.size)
    result["n_bootstrap"], result["seed"] = int(n_bootstrap), int(seed)
    result["per_category"] = {}
    if categories is not None:
        cats = np.array(["" if c is None else str(c) for c in categories])
        if cats.shape != y.shape:
            raise ValueError(f"categories must have one entry per case, got {cats.size} for {y.size}")
        keys = (*CATEGORY_KEYS, *(f"{k}_ci95" for k in PROPORTION_KEYS))
        for cat in sorted(set(cats.tolist()) - {""}):
            mask = cats == cat
            sub = _threshold_metrics(y[mask], p[mask], threshold)
            result["per_category"][cat] = {k: sub[k] for k in keys}
    return result


def _between(p: np.ndarray, cut: float) -> float:
    """The midpoint of the score ``cut`` and the next lower distinct score (0 below the lowest one).

    Hand-written: ROC thresholds (scikit-learn's too) are the scores themselves, so a case scored exactly at
    the threshold decides its side. The midpoint splits ``p`` exactly as ``cut`` does (``p >= cut``) with a margin
    on both sides. Adjacent floats without a representable midpoint keep ``cut``.
    """
    lower = p[p < cut]
    low = float(lower.max()) if lower.size else 0.0
    mid = low + (cut - low) / 2.0
    return mid if low < mid else float(cut)


def youden_threshold(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1, between two scores.

    Of (rounding-)tied maxima the highest cut is taken; the threshold is the midpoint between that score and
    the next lower distinct score (:func:`_between`).

    Raises:
        ValueError: one class is absent.
    """
    y, p = _as_arrays(labels, probs)
    if y.min() == y.max():
        raise ValueError("Youden's J needs both classes")
    fpr, tpr, thresholds = _roc(y, p)
    j = tpr[1:] - fpr[1:]
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0]) + 1
    return _between(p, float(thresholds[best]))


def threshold_for_sensitivity(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, target: float
) -> float:
    """The highest threshold whose sensitivity is at least ``target``, between two scores.

    The lowest score that must be called positive is found on the ROC curve; the threshold is the midpoint
    between it and the next lower distinct score (:func:`_between`).

    Raises:
        ValueError: no positive case, or ``target`` outside (0, 1].
    """
    y, p = _as_arrays(labels, probs)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    if not y.any():
        raise ValueError("threshold selection for a sensitivity needs positive cases")
    _, tpr, thresholds = _roc(y, p)
    return _between(p, float(thresholds[int(np.argmax(tpr >= target - 1e-12))]))


def involvement_agreement(predicted: Sequence[float | None], true: Sequence[float | None]) -> dict:
    """Agreement of predicted and true lung involvement (fractions in [0, 1]) over the cases with both.

    Returns:
        ``n`` (cases with both values), ``n_without_truth`` (predicted but no true value), ``spearman``
        (``scipy.stats.spearmanr``; ``None`` below 3 cases or for constant values), ``spearman_p`` and
        ``mae_pp``, the mean absolute error in percentage points (``None`` without cases), with its bootstrap
        interval ``mae_pp_ci95`` (:func:`_paired_bootstrap`).
    """
    pairs = [(float(a), float(b)) for a, b in zip(predicted, true) if a is not None and b is not None]
    result = {
        "n": len(pairs),
        "n_without_truth": sum(a is not None and b is None for a, b in zip(predicted, true)),
        "spearman": None,
        "spearman_p": None,
        "mae_pp": None,
        "mae_pp_ci95": None,
    }
    if not pairs:
        return result
    a, b = np.array(pairs).T
    result["mae_pp"] = float(100.0 * np.mean(np.abs(a - b)))
    result["mae_pp_ci95"] = _paired_bootstrap(lambda x, y: 100.0 * np.mean(np.abs(x - y)), a, b)
    if len(pairs) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            rho = stats.spearmanr(a, b)
        result["spearman"], result["spearman_p"] = _finite(rho.statistic), _finite(rho.pvalue)
    return result


def category_agreement(
    predicted: Sequence[str | None], true: Sequence[str | None], labels: Sequence[str] = SEVERITY_CATEGORIES
) -> dict:
    """Agreement of predicted and true severity categories over the cases where both are one of ``labels``.

    Returns:
        ``n``, ``labels``, ``confusion`` (``sklearn.metrics.confusion_matrix``: rows the true category,
        columns the predicted one), ``accuracy`` and ``kappa_quadratic`` (``sklearn.metrics.cohen_kappa_score``
        with quadratic weights; ``None`` without cases or when undefined, e.g. one category only) with its
        bootstrap interval ``kappa_quadratic_ci95`` (:func:`_paired_bootstrap`).
    """
    labels = list(labels)
    pairs = [(t, q) for q, t in zip(predicted, true) if q in labels and t in labels]
    result = {
        "n": len(pairs),
        "labels": labels,
        "confusion": None,
        "accuracy": None,
        "kappa_quadratic": None,
        "kappa_quadratic_ci95": None,
    }
    if not pairs:
        return result
    t, q = (list(v) for v in zip(*pairs))
    confusion = skm.confusion_matrix(t, q, labels=labels)
    index = {label: i for i, label in enumerate(labels)}
    ti, qi = np.array([index[v] for v in t]), np.array([index[v] for v in q])

    def quadratic_kappa(x: np.ndarray, y: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            return skm.cohen_kappa_score(
                x, y, labels=np.arange(len(labels)), weights="quadratic", replace_undefined_by=np.nan
            )

    kappa = _finite(quadratic_kappa(ti, qi))
    result.update(
        confusion=confusion.tolist(),
        accuracy=float(np.trace(confusion) / len(pairs)),
        kappa_quadratic=kappa,
        kappa_quadratic_ci95=None if kappa is None else _paired_bootstrap(quadratic_kappa, ti, qi),
    )
    return result


def _paired_bootstrap(
    statistic: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray
) -> list[float] | None:
    """The 95 % percentile bootstrap interval of ``statistic(a, b)`` over cases resampled in pairs (``a[i]`` with
    ``b[i]``; ``scipy.stats.bootstrap``, ``SEVERITY_BOOTSTRAP`` resamples, seed ``SEVERITY_SEED``); ``None`` below
    three cases, or when resamples leave it undefined (a kappa of one category)."""
    if len(a) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        ci = stats.bootstrap(
            (a, b),
            statistic,
            paired=True,
            vectorized=False,
            n_resamples=SEVERITY_BOOTSTRAP,
            confidence_level=CONFIDENCE_LEVEL,
            method="percentile",
            random_state=SEVERITY_SEED,
        ).confidence_interval
    low, high = _finite(float(ci.low)), _finite(float(ci.high))
    return None if low is None or high is None else [low, high]
