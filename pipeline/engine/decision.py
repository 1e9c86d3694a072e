"""Fitting the scan's decision on the validation split, at the epoch whose weights become ``model.pt``.

The decision (layout and use: :mod:`pipeline.transforms.decision`) has two parts:

- every rule of :data:`~pipeline.transforms.decision.RULES`: ``classifier`` is the head as is; ``lesion`` and
  ``combined`` are logistic regressions (:func:`fit_logistic`) of the label on their features, with an L2 penalty
  on the standardised coefficients (a Gaussian prior of variance ``1 / l2``), so that a validation split that
  the evidence separates perfectly still gives finite, moderate coefficients, and with the two classes weighted
  equally, so that P(pneumonia) is calibrated to even odds like the class-balanced head's and a threshold of 0.5
  means the same for every rule;
- the involvement calibration (:func:`fit_monotone`): the isotonic (pool-adjacent-violators) regression of the
  true involvement on the measured one over the validation studies with a lesion mask, as interpolation knots
  from (0, 0) to (1, 1).

:class:`DecisionFitter` is the validation handler that fits it and sets ``record.decision``, before the
best-model saver writes the record with the weights; :class:`~pipeline.engine.threshold.ThresholdSelector` then
chooses the threshold on the decided validation probabilities (:meth:`DecisionFitter.decided`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import evenly_divisible_all_gather
from scipy import optimize

from pipeline.engine.handlers import class_output
from pipeline.engine.record import ChainRecord
from pipeline.engine.threshold import DEFAULT_THRESHOLD, choose_threshold
from pipeline.transforms.decision import CLASSIFIER_KEY, RULES, decide, feature_matrix

__all__ = ["DEFAULT_L2", "DecisionFitter", "fit_decision", "fit_logistic", "fit_monotone", "log_loss"]

logger = logging.getLogger(__name__)

#: The L2 penalty on the standardised coefficients: a standard normal prior on each.
DEFAULT_L2 = 1.0
_COLUMNS = ("label", CLASSIFIER_KEY, "lesion_ml", "focus_ml", "involvement", "involvement_true")


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    """Case weights giving each class the same total weight, ``N / 2`` (a balanced set's weights are all one)."""
    weights = np.zeros(y.size)
    for value in (0, 1):
        weights[y == value] = y.size / 2.0 / max(int((y == value).sum()), 1)
    return weights


def log_loss(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """The class-balanced mean negative log-likelihood of ``labels`` (N,) under ``probs`` (N,) (clipped at 1e-12)."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), 1e-12, 1 - 1e-12)
    nll = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float((_balanced_weights(y) * nll).sum() / y.size)


def fit_logistic(x: np.ndarray, labels: Sequence[int] | np.ndarray, l2: float = DEFAULT_L2) -> tuple[np.ndarray, float]:
    """Class-balanced, L2-penalised logistic regression of ``labels`` (N,) on ``x`` (N, F).

    Minimises ``sum_i w_i NLL_i + l2 / 2 * |beta|^2`` (``w`` giving each class a total weight of ``N / 2``,
    ``beta`` the coefficients of the standardised features, whose prior is Gaussian of variance ``1 / l2``; the
    intercept is not penalised) with L-BFGS.

    Returns:
        ``(coef (F,), intercept)`` on the original features.

    Raises:
        ValueError: labels of one class only, or ``l2`` not positive.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if l2 <= 0:
        raise ValueError(f"l2 must be positive (it keeps separable data finite), got {l2}")
    if len(np.unique(y)) < 2:
        raise ValueError("a logistic decision needs validation studies of both classes")
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    z = (x - mean) / std
    w = _balanced_weights(y.astype(np.int64))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        eta = theta[0] + z @ theta[1:]
        nll = np.logaddexp(0.0, eta) - y * eta
        residual = w * (1.0 / (1.0 + np.exp(-eta)) - y)
        grad = np.r_[residual.sum(), z.T @ residual + l2 * theta[1:]]
        return float((w * nll).sum() + 0.5 * l2 * theta[1:] @ theta[1:]), grad

    result = optimize.minimize(objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B")
    coef = result.x[1:] / std
    return coef, float(result.x[0] - coef @ mean)


def fit_monotone(raw: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> dict[str, list[float]]:
    """The knots of a non-decreasing map from measured to true involvement (fractions), for ``np.interp``.

    Isotonic least squares (pool adjacent violators) of ``true`` on ``raw``, one knot per pooled block at its
    mean measured value, between the anchors (0, 0) and (1, 1).

    Raises:
        ValueError: no pair, or different lengths.
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    if raw.size == 0 or raw.size != true.size:
        raise ValueError(f"need matching non-empty measured and true involvements, got {raw.size} and {true.size}")
    order = np.argsort(raw, kind="stable")
    blocks: list[list[float]] = []  # [sum raw, sum true, count]
    for r, t in zip(raw[order], true[order]):
        blocks.append([r, t, 1.0])
        while len(blocks) > 1 and (
            blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]
            or blocks[-2][0] / blocks[-2][2] == blocks[-1][0] / blocks[-1][2]
        ):
            last = blocks.pop()
            blocks[-1] = [a + b for a, b in zip(blocks[-1], last)]
    xs = [0.0] + [b[0] / b[2] for b in blocks] + [1.0]
    ys = [0.0] + [float(np.clip(b[1] / b[2], 0.0, 1.0)) for b in blocks] + [1.0]
    return {"raw": [float(v) for v in xs], "true": [float(v) for v in np.maximum.accumulate(ys)]}


def fit_decision(
    rule: str,
    labels: Sequence[int] | np.ndarray,
    prob_classifier: Sequence[float] | np.ndarray,
    evidence: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    l2: float = DEFAULT_L2,
    threshold_method: str = "fixed",
    target_sensitivity: float | None = None,
) -> dict[str, Any]:
    """The decision of :mod:`pipeline.transforms.decision` fitted on validation studies.

    Args:
        rule: the rule in use, one of :data:`~pipeline.transforms.decision.RULES`.
        labels: ``(N,)`` 0 normal, 1 pneumonia.
        prob_classifier: ``(N,)`` the head's P(pneumonia).
        evidence: ``lesion_ml``, ``focus_ml``, ``involvement`` ``(N,)`` and ``involvement_true`` ``(N,)`` (NaN
            without a mask); ``None`` for a network without a lesion output (only the classifier rule then).
        l2: the penalty of :func:`fit_logistic`.
        threshold_method, target_sensitivity: how each rule's ``"threshold"`` is chosen on its decided validation
            probabilities (:func:`~pipeline.engine.threshold.choose_threshold`, ``fixed`` where the method does not
            apply); the operating threshold of the rule in use is the one ``threshold.json`` holds.

    Returns:
        the decision (layout in :mod:`pipeline.transforms.decision`); each rule also records its
        ``validation_log_loss`` (class-balanced, :func:`log_loss`) and ``threshold``.

    Raises:
        ValueError: an unknown rule, a lesion rule without evidence, or labels of one class.
    """
    if rule not in RULES:
        raise ValueError(f"decision rule must be one of {list(RULES)}, got {rule!r}")
    if rule != "classifier" and evidence is None:
        raise ValueError(f"decision rule {rule!r} needs a network with a lesion output")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    fits: dict[str, Any] = {"classifier": {"features": list(RULES["classifier"]), "coef": [1.0], "intercept": 0.0}}
    decision: dict[str, Any] = {"rule": rule, "rules": fits, "involvement": None}
    n_mask = 0
    if evidence is not None:
        for name in ("lesion", "combined"):
            features = list(RULES[name])
            coef, intercept = fit_logistic(feature_matrix(features, prob_classifier, evidence), y, l2)
            fits[name] = {"features": features, "coef": [float(c) for c in coef], "intercept": intercept, "l2": l2}
        true = np.asarray(evidence["involvement_true"], dtype=np.float64)
        known = ~np.isnan(true)
        n_mask = int(known.sum())
        if n_mask:
            decision["involvement"] = fit_monotone(np.asarray(evidence["involvement"])[known], true[known])
    for fit in fits.values():
        decided = decide(fit, prob_classifier, evidence or {})
        fit["validation_log_loss"] = log_loss(y, decided)
        try:
            fit["threshold"] = choose_threshold(y, decided, threshold_method, target_sensitivity)["threshold"]
        except ValueError:  # one class: no cut can be chosen on these labels
            fit["threshold"] = DEFAULT_THRESHOLD
    decision["fitted_on"] = {"n": int(y.size), "n_positive": int(y.sum()), "n_with_mask": n_mask}
    return decision


class DecisionFitter:
    """Validation handler fitting the decision whenever the key metric improves; sets ``record.decision``.

    Attach to the validation evaluator before the best-model saver, which then writes the record with the
    weights of the same epoch (MONAI's workflow sets ``best_metric_epoch`` before the handlers run). It reads the
    head's P(pneumonia) (``prob_classifier`` of :class:`~pipeline.transforms.decision.Decided`, else ``pred``)
    and the lesion evidence of :class:`~pipeline.transforms.severity.Involvementd` from the evaluator's output.
    Under ``torch.distributed`` the values of every rank are gathered and every rank fits the same decision.

    Args:
        record: the run's record (the saver's ``"record"``).
        rule: the rule in use, one of :data:`~pipeline.transforms.decision.RULES`.
        l2: the penalty of :func:`fit_logistic`.
        threshold_method, target_sensitivity: as the run's ``ThresholdSelector`` (each rule's recorded threshold).
    """

    def __init__(
        self,
        record: ChainRecord,
        rule: str = "classifier",
        l2: float = DEFAULT_L2,
        threshold_method: str = "fixed",
        target_sensitivity: float | None = None,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"decision rule must be one of {list(RULES)}, got {rule!r}")
        self.record, self.rule, self.l2 = record, rule, float(l2)
        self.threshold_method, self.target_sensitivity = threshold_method, target_sensitivity
        self._rows: list[list[float]] = []
        self._decided: tuple[np.ndarray, np.ndarray] | None = None

    def attach(self, engine: Engine) -> None:
        """Register on the evaluator's epochs and iterations."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _reset(self, _engine: Engine) -> None:
        self._rows, self._decided = [], None

    def _collect(self, engine: Engine) -> None:
        probs, labels = class_output(engine.state.output)
        for out, prob, label in zip(engine.state.output, probs[:, 1].tolist(), labels.tolist()):
            values = {"label": label, **{k: out.get(k, math.nan) for k in _COLUMNS[2:]}}
            values[CLASSIFIER_KEY] = out.get(CLASSIFIER_KEY, prob)  # Decided keeps the head's own P there
            self._rows.append([float(values[k]) for k in _COLUMNS])

    def decided(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(labels (N,), decided P(pneumonia) (N,))`` of the validation epoch just fitted; ``None`` before."""
        return self._decided

    def _epoch_completed(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        table = torch.tensor(self._rows, dtype=torch.float64).reshape(-1, len(_COLUMNS))
        if idist.get_world_size() > 1:
            table = evenly_divisible_all_gather(table)
        columns = dict(zip(_COLUMNS, table.numpy().T))
        labels = columns.pop("label").astype(np.int64)
        prob = columns.pop(CLASSIFIER_KEY)
        evidence = None if np.isnan(columns["lesion_ml"]).all() else columns
        try:
            decision = fit_decision(
                self.rule, labels, prob, evidence, self.l2, self.threshold_method, self.target_sensitivity
            )
        except ValueError as err:
            if evidence is None or len(np.unique(labels)) > 1:
                raise
            logger.warning("decision rule %r not fitted (%s); deciding by the classifier", self.rule, err)
            decision = {**fit_decision("classifier", labels, prob), "fallback": f"{self.rule}: {err}"}
        decision["fitted_on"]["epoch"] = int(engine.state.epoch)
        self.record.decision = decision
        fit = decision["rules"][decision["rule"]]
        self._decided = labels, decide(fit, prob, evidence or {})
        logger.info("decision %r fitted on %d validation studies: %s", decision["rule"], labels.size, fit)
