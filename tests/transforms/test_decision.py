"""Tests for pipeline.transforms.decision: the decided P(pneumonia) and the calibrated involvement of one scan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.transforms.decision import FLOOR_ML, Decided, decide, feature_matrix

DECISION = {
    "rule": "combined",
    "rules": {
        "classifier": {"features": ["classifier_logit"], "coef": [1.0], "intercept": 0.0},
        "lesion": {"features": ["log_lesion_ml", "log_focus_ml"], "coef": [0.8, 0.4], "intercept": -2.0},
        "combined": {
            "features": ["classifier_logit", "log_lesion_ml", "log_focus_ml"],
            "coef": [0.5, 0.7, 0.2],
            "intercept": -1.5,
        },
    },
    "involvement": {"raw": [0.0, 0.2, 0.4, 1.0], "true": [0.0, 0.3, 0.7, 1.0]},
}


def test_features_and_rules() -> None:
    x = feature_matrix(["classifier_logit", "log_lesion_ml"], [0.5, 0.8, 1.0], {"lesion_ml": [0.0, 10.0, 100.0]})
    np.testing.assert_allclose(x[:, 0], [0.0, np.log(4.0), 20.0])  # the head's logit, clipped at certainty
    np.testing.assert_allclose(x[:, 1], np.log(np.array([0.0, 10.0, 100.0]) + FLOOR_ML))
    # the classifier rule is the head itself
    np.testing.assert_allclose(decide(DECISION["rules"]["classifier"], [0.1, 0.73], {}), [0.1, 0.73])
    with pytest.raises(ValueError, match="unknown decision feature"):
        feature_matrix(["volume"], [0.5], {})


def test_decided_replaces_p_and_keeps_the_head_and_the_measured_involvement() -> None:
    item = {"pred": torch.tensor([0.2, 0.8]), "lesion_ml": 40.0, "focus_ml": 25.0, "involvement": 0.3}
    out = Decided(DECISION)(item)
    expected = 1.0 / (1.0 + np.exp(-(-1.5 + 0.5 * np.log(4.0) + 0.7 * np.log(40.1) + 0.2 * np.log(25.1))))
    assert float(out["pred"][1]) == pytest.approx(expected) and float(out["pred"].sum()) == pytest.approx(1.0)
    assert out["prob_classifier"] == pytest.approx(0.8)
    assert out["involvement_raw"] == 0.3 and out["involvement"] == pytest.approx(0.5)  # between knots 0.2 and 0.4
    plain = Decided(None)(item)  # a model without a decision: the head, involvement as measured
    assert torch.equal(plain["pred"], item["pred"]) and plain["prob_classifier"] == pytest.approx(0.8)
    assert plain["involvement"] == 0.3 and "involvement_raw" not in plain
    with pytest.raises(ValueError, match="needs the lesion evidence"):
        Decided(DECISION)({"pred": torch.tensor([0.2, 0.8])})  # a classifier network's output
    with pytest.raises(Exception, match="no fitted rule 'vote'"):
        Decided({**DECISION, "rule": "vote"})
