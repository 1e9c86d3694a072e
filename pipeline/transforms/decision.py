"""The scan's decision: P(pneumonia) from the classifier head, the lesion evidence, or both; involvement calibrated.

A model's record (:class:`pipeline.engine.record.ChainRecord`, ``"decision"``) holds its decision, fitted on the
validation split at the best epoch (:mod:`pipeline.engine.decision`)::

    {
      "rule": "lesion",                       # the rule in use, one of RULES
      "rules": {                              # every rule fitted on the same validation studies
        "classifier": {"features": ["classifier_logit"], "coef": [1.0], "intercept": 0.0},   # the head as is
        "lesion": {"features": ["log_lesion_ml", "log_focus_ml"], "coef": [a, b], "intercept": c, ...},
        "combined": {"features": ["classifier_logit", "log_lesion_ml", "log_focus_ml"], ...}
      },
      "involvement": {"raw": [0.0, ..., 1.0], "true": [0.0, ..., 1.0]},   # monotone knots, or None
      "fitted_on": {"n": 48, "n_positive": 39, "n_with_mask": 48, "epoch": 19}
    }

A rule is a logistic function ``P = sigmoid(intercept + coef . features)`` of the scan's :data:`FEATURES`:

- ``classifier_logit``: ``log(p / (1 - p))`` of the head's softmax ``p`` (the ``classifier`` rule is the head
  itself: coefficient 1, intercept 0);
- ``log_lesion_ml``, ``log_focus_ml``: ``log(x + FLOOR_ML)`` of the lesion volume and of the largest focus in the
  lungs, in mL (:func:`pipeline.transforms.severity.lesion_evidence`).

The involvement calibration maps the measured involvement onto the true one by linear interpolation between
monotone knots (``np.interp``; from (0, 0) to (1, 1)).

:class:`Decided` applies a decision in the evaluators' postprocessing, after
:class:`~pipeline.transforms.severity.Involvementd`: it is the one place where the network's output becomes
P(pneumonia) on every route (validation, evaluation, inference, TorchScript, MONAI Label, ensembles and TTA,
whose averaged outputs it reads like a single network's). A model without a decision (older records, or
training before the first fit) keeps the classifier rule and its measured involvement.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from pipeline.engine.record import read as read_record
from pipeline.utils.errors import InputError

__all__ = [
    "CLASSIFIER_KEY",
    "FLOOR_ML",
    "RAW_INVOLVEMENT_KEY",
    "RULES",
    "Decided",
    "calibrate_involvement",
    "decide",
    "feature_matrix",
    "load",
]

logger = logging.getLogger(__name__)

#: The decision rules, and the features each is a logistic function of.
RULES = {
    "classifier": ("classifier_logit",),
    "lesion": ("log_lesion_ml", "log_focus_ml"),
    "combined": ("classifier_logit", "log_lesion_ml", "log_focus_ml"),
}
#: Added to a volume in mL before its logarithm (about four voxels of the 128x128x64 grid): no lesion is finite.
FLOOR_ML = 0.1
#: Item keys (and prediction columns) of the head's own P(pneumonia) and of the involvement before calibration.
CLASSIFIER_KEY, RAW_INVOLVEMENT_KEY = "prob_classifier", "involvement_raw"
_LOGIT_CLIP = 20.0


def feature_matrix(
    features: Sequence[str], prob_classifier: Sequence[float] | np.ndarray, evidence: Mapping[str, Any]
) -> np.ndarray:
    """The ``(N, len(features))`` matrix of :data:`RULES` features.

    Args:
        features: names from :data:`RULES`.
        prob_classifier: ``(N,)`` the head's P(pneumonia).
        evidence: ``"lesion_ml"`` and ``"focus_ml"`` ``(N,)`` (needed by the ``log_*`` features only).
    """
    p = np.clip(np.asarray(prob_classifier, dtype=np.float64).reshape(-1), 0.0, 1.0)
    columns = []
    for name in features:
        if name == "classifier_logit":
            with np.errstate(divide="ignore"):
                columns.append(np.clip(np.log(p) - np.log1p(-p), -_LOGIT_CLIP, _LOGIT_CLIP))
        elif name in ("log_lesion_ml", "log_focus_ml"):
            key = name.removeprefix("log_")
            columns.append(np.log(np.asarray(evidence[key], dtype=np.float64).reshape(-1) + FLOOR_ML))
        else:
            known = sorted({f for v in RULES.values() for f in v})
            raise ValueError(f"unknown decision feature {name!r}; known: {known}")
    return np.stack(columns, axis=1) if columns else np.zeros((p.size, 0))


def decide(
    fit: Mapping[str, Any], prob_classifier: Sequence[float] | np.ndarray, evidence: Mapping[str, Any]
) -> np.ndarray:
    """``(N,)`` P(pneumonia) of one fitted rule (``{"features", "coef", "intercept"}``) on the scans' features."""
    x = feature_matrix(fit["features"], prob_classifier, evidence)
    z = float(fit["intercept"]) + x @ np.asarray(fit["coef"], dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def calibrate_involvement(calibration: Mapping[str, Sequence[float]] | None, raw: float | np.ndarray) -> np.ndarray:
    """The calibrated involvement of measured fraction(s) ``raw``; ``raw`` itself without a calibration."""
    raw = np.asarray(raw, dtype=np.float64)
    if not calibration:
        return raw
    return np.interp(raw, calibration["raw"], calibration["true"])


def _check(decision: Mapping[str, Any], source: str | os.PathLike) -> Mapping[str, Any]:
    """``decision`` when its rule is known and fitted; an :class:`InputError` naming ``source`` otherwise."""
    rule = decision.get("rule") if isinstance(decision, Mapping) else None
    if rule not in RULES or rule not in (decision.get("rules") or {}):
        raise InputError(source, f"the record's decision has no fitted rule {rule!r} (rules: {list(RULES)})")
    return decision


def load(ckpt_files: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, Any] | None:
    """The decision of a model (the record of its checkpoint) or of an ensemble, for ``"decision"`` in configs.

    An ensemble's members must share their rule (their outputs are averaged before the decision): the first
    member's fitted decision is applied to the averaged outputs, and the ensemble's threshold is chosen on its
    own decided validation predictions (``python -m pipeline ensemble-threshold``). ``None`` (the classifier
    rule) when no member has a decision.

    Raises:
        InputError: a member's decision is malformed, or the members decide by different rules.
    """
    files = [ckpt_files] if isinstance(ckpt_files, str | os.PathLike) else list(ckpt_files)
    decisions = [(f, read_record(f).get("decision")) for f in files]
    fitted = [(f, _check(d, f)) for f, d in decisions if d is not None]
    if not fitted:
        return None
    rules = {f"{f}: {d['rule']}" for f, d in fitted}
    if len(fitted) != len(decisions) or len({d["rule"] for _, d in fitted}) > 1:
        raise InputError(files[0], f"the ensemble's members decide by different rules ({', '.join(sorted(rules))})")
    logger.info("decision: rule %r of %s", fitted[0][1]["rule"], fitted[0][0])
    return dict(fitted[0][1])


class Decided(MapTransform):
    """P(pneumonia) of the model's decision in ``data[pred_key]``; the head's own under :data:`CLASSIFIER_KEY`.

    Reads the head's class probabilities ``data[pred_key]`` ``(2,)`` (after the softmax) and the lesion evidence
    of :class:`~pipeline.transforms.severity.Involvementd`; writes ``data[pred_key]`` = ``(1 - P, P)`` of the
    decision's rule, ``data["prob_classifier"]`` = the head's P(pneumonia), and, when the decision calibrates the
    involvement, ``data["involvement"]`` calibrated and ``data["involvement_raw"]`` as measured.

    Args:
        decision: a record's decision (:func:`load`), or ``None``: the classifier rule, involvement as measured.
        pred_key: the class probabilities.
    """

    def __init__(self, decision: Mapping[str, Any] | None = None, pred_key: str = "pred") -> None:
        super().__init__(pred_key)
        self.decision = None if decision is None else _check(decision, "decision")
        self.pred_key = pred_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        probs = torch.as_tensor(d[self.pred_key])
        d[CLASSIFIER_KEY] = float(probs.reshape(-1)[1])
        if self.decision is None:
            return d
        fit = self.decision["rules"][self.decision["rule"]]
        if any(f != "classifier_logit" for f in fit["features"]) and "lesion_ml" not in d:
            raise ValueError(f"decision rule {self.decision['rule']!r} needs the lesion evidence (Involvementd)")
        p = float(decide(fit, [d[CLASSIFIER_KEY]], {k: [d[k]] for k in ("lesion_ml", "focus_ml") if k in d})[0])
        d[self.pred_key] = torch.tensor([1.0 - p, p], dtype=probs.dtype, device=probs.device)
        if "involvement" in d and self.decision.get("involvement"):
            d[RAW_INVOLVEMENT_KEY] = float(d["involvement"])
            d["involvement"] = float(calibrate_involvement(self.decision["involvement"], d["involvement"]))
        return d
