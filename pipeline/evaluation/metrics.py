"""Binary classification metrics with bootstrap uncertainty, calibration and threshold selection.

Conventions, shared by every function here:

- ``labels`` are 0 (normal) or 1 (pneumonia); ``probs`` are P(pneumonia) in [0, 1].
- A case is predicted positive when ``prob >= threshold`` (the convention of ROC thresholds).
- A ratio whose denominator is zero (e.g. sensitivity without positive cases, PPV without
  positive predictions, AUC with one class only) is undefined and reported as ``None``
  (``null`` in JSON), never as 0 or NaN.

Only numpy is needed at run time; the tests check every number against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = [
    "binary_auc",
    "calibration_bins",
    "classification_metrics",
    "roc_band",
    "roc_curve",
    "threshold_for_sensitivity",
    "youden_threshold",
]

#: Keys reported for every category in ``classification_metrics(...)["per_category"]``.
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


def binary_auc(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted as one half).

    Returns ``None`` when ``labels`` hold one class only.
    """
    y, p = _as_arrays(labels, probs)
    return _auc(y, p)


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_ranks = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = mid_ranks[inverse][y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score, highest first, starting at (0, 0).

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(K + 1,)`` for ``K`` distinct scores; ``thresholds[0]``
        is ``inf`` (nothing predicted positive). Equals scikit-learn's
        ``roc_curve(..., drop_intermediate=False)``. A rate is NaN when its class is absent.
    """
    y, p = _as_arrays(labels, probs)
    return _roc(y, p)


def _roc(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(p_sorted)), p_sorted.size - 1]
    tps = np.r_[0, np.cumsum(y_sorted)[last_of_group]]
    fps = np.r_[0, (last_of_group + 1) - tps[1:]]
    n_pos, n_neg = tps[-1], fps[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tps / n_pos if n_pos else np.full(tps.shape, np.nan)
        fpr = fps / n_neg if n_neg else np.full(fps.shape, np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), np.r_[np.inf, p_sorted[last_of_group]]


def _stratified_resamples(y: np.ndarray, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of bootstrap resamples drawn with replacement within each class."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    for _ in range(n_bootstrap):
        yield np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]


def _auc_ci(y: np.ndarray, p: np.ndarray, n_bootstrap: int, seed: int) -> list[float] | None:
    """95% stratified percentile-bootstrap interval of the AUC, or ``None`` with one class."""
    if y.min() == y.max() or n_bootstrap < 1:
        return None
    aucs = np.array([_auc(y[idx], p[idx]) for idx in _stratified_resamples(y, n_bootstrap, seed)])
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return [float(lo), float(hi)]


def roc_band(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_points: int = 101,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise 95% bootstrap band of the ROC curve (stratified resamples, as for the AUC interval).

    Returns:
        ``(fpr_grid, tpr_lo, tpr_hi)``, each ``(n_points,)``: the 2.5th and 97.5th percentiles, over
        resamples, of the highest TPR reached at a false positive rate <= each grid value.

    Raises:
        ValueError: one class is absent.
    """
    y, p = _as_arrays(labels, probs)
    if y.min() == y.max():
        raise ValueError("an ROC band needs both classes")
    grid = np.linspace(0.0, 1.0, n_points)
    curves = np.empty((n_bootstrap, n_points))
    for b, idx in enumerate(_stratified_resamples(y, n_bootstrap, seed)):
        fpr, tpr, _ = _roc(y[idx], p[idx])
        curves[b] = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
    return grid, lo, hi


def calibration_bins(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, n_bins: int = 10
) -> list[dict]:
    """Reliability table over ``n_bins`` equal-width bins of P(pneumonia).

    Bin ``k`` holds probabilities in ``(edges[k], edges[k + 1]]`` (the first bin includes 0), as in
    scikit-learn's ``calibration_curve(strategy="uniform")``.

    Returns:
        one dict per bin: ``lo``, ``hi``, ``n`` (cases), ``mean_prob`` and ``frac_positive``
        (``None`` for an empty bin).
    """
    y, p = _as_arrays(labels, probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(ids, minlength=n_bins)
    sums = np.bincount(ids, weights=p, minlength=n_bins)
    positives = np.bincount(ids, weights=y, minlength=n_bins)
    return [
        {
            "lo": float(edges[k]),
            "hi": float(edges[k + 1]),
            "n": int(counts[k]),
            "mean_prob": _ratio(sums[k], counts[k]),
            "frac_positive": _ratio(positives[k], counts[k]),
        }
        for k in range(n_bins)
    ]


def _ece(bins: list[dict], n: int) -> float:
    """Expected calibration error: bin-size-weighted mean of ``|frac_positive - mean_prob|``."""
    return float(sum(b["n"] * abs(b["frac_positive"] - b["mean_prob"]) for b in bins if b["n"]) / n)


def _threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Counts and rates at ``threshold`` shared by the whole cohort and each category."""
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    return {
        "n": int(y.size),
        "n_positive": tp + fn,
        "n_negative": tn + fp,
        "auc": _auc(y, p),
        "accuracy": (tp + tn) / y.size,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "brier": float(np.mean((p - y) ** 2)),
        "positive_rate": (tp + fp) / y.size,
        "mean_prob": float(p.mean()),
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
        n_bootstrap: stratified bootstrap resamples for ``auc_ci95`` (0 skips the interval).
        seed: seed of the bootstrap; equal inputs and seed give equal intervals.

    Returns:
        a dict with ``n``, ``n_positive``, ``n_negative``, ``threshold``, ``auc``, ``auc_ci95``
        (``[lo, hi]`` or ``None`` with one class), ``accuracy``, ``sensitivity``, ``specificity``,
        ``ppv``, ``npv``, ``f1``, ``brier``, ``ece`` (10 equal-width bins), ``positive_rate``,
        ``mean_prob``, ``confusion`` (``tp``, ``fp``, ``tn``, ``fn``), ``calibration`` (the bins of
        :func:`calibration_bins`), ``n_bootstrap``, ``seed`` and ``per_category``: for each
        category present, the keys of :data:`CATEGORY_KEYS` (``auc`` is ``None`` for a category
        holding one class). Undefined ratios are ``None``.
    """
    y, p = _as_arrays(labels, probs)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    result = {"threshold": float(threshold), **_threshold_metrics(y, p, threshold)}
    result["auc_ci95"] = _auc_ci(y, p, n_bootstrap, seed)
    result["calibration"] = calibration_bins(y, p)
    result["ece"] = _ece(result["calibration"], y.size)
    result["n_bootstrap"], result["seed"] = int(n_bootstrap), int(seed)
    result["per_category"] = {}
    if categories is not None:
        cats = np.array(["" if c is None else str(c) for c in categories])
        if cats.shape != y.shape:
            raise ValueError(f"categories must have one entry per case, got {cats.size} for {y.size}")
        for cat in sorted(set(cats.tolist()) - {""}):
            mask = cats == cat
            sub = _threshold_metrics(y[mask], p[mask], threshold)
            result["per_category"][cat] = {k: sub[k] for k in CATEGORY_KEYS}
    return result


def youden_threshold(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """The score maximising Youden's J = sensitivity + specificity - 1 (the highest one on ties).

    Raises:
        ValueError: one class is absent.
    """
    y, p = _as_arrays(labels, probs)
    if y.min() == y.max():
        raise ValueError("Youden's J needs both classes")
    fpr, tpr, thresholds = _roc(y, p)
    j = tpr[1:] - fpr[1:]
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0]) + 1  # the first, i.e. highest, of (rounding-)tied thresholds
    return float(thresholds[best])


def threshold_for_sensitivity(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, target: float
) -> float:
    """The highest threshold (one of the scores) whose sensitivity is at least ``target``.

    Raises:
        ValueError: no positive case, or ``target`` outside (0, 1].
    """
    y, p = _as_arrays(labels, probs)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    if not y.any():
        raise ValueError("threshold selection for a sensitivity needs positive cases")
    _, tpr, thresholds = _roc(y, p)
    return float(thresholds[int(np.argmax(tpr >= target - 1e-12))])
