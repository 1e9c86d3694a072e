"""Tests for pipeline.engine.decision: the logistic fits, the involvement calibration, the validation handler."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_evaluation
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import ROCAUC, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose
from torch import nn

from pipeline.engine.decision import DecisionFitter, fit_decision, fit_logistic, fit_monotone, log_loss
from pipeline.engine.record import ChainRecord
from pipeline.engine.record import read as read_record
from pipeline.engine.threshold import ThresholdSelector, choose_threshold
from pipeline.engine.threshold import read as read_threshold
from pipeline.transforms.decision import RULES, Decided, calibrate_involvement, decide
from pipeline.transforms.severity import Involvementd, SplitOutputsd


def _logistic(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_separable_data_gives_finite_sensible_coefficients() -> None:
    """48 studies split perfectly by one feature (as a small validation split may be): finite, positive, moderate."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(10), np.ones(38)].astype(int)
    x = np.r_[rng.uniform(-3, -1, 10), rng.uniform(1, 6, 38)][:, None]
    coef, intercept = fit_logistic(x, y)
    assert np.all(np.isfinite(coef)) and math.isfinite(intercept)
    assert 0.3 < coef[0] < 10.0
    p = _logistic(intercept + x @ coef)
    assert np.all(p[y == 1] > 0.5) and np.all(p[y == 0] < 0.5)  # it still separates them
    assert 1e-6 < p.min() and p.max() < 1 - 1e-6  # without certainty it has no data for
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, np.ones(48, dtype=int))
    with pytest.raises(ValueError, match="positive"):
        fit_logistic(x, y, l2=0.0)


def test_inseparable_data_recovers_the_generating_model() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 2))
    y = (rng.uniform(size=4000) < _logistic(0.3 + x @ np.array([1.5, -0.8]))).astype(int)
    coef, intercept = fit_logistic(x, y)
    # class-balanced weights move the intercept to even odds; the slopes stay
    np.testing.assert_allclose(coef, [1.5, -0.8], atol=0.15)
    assert abs(intercept) < 0.3


def _evidence(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Synthetic validation studies: a 4x overconfident head, lesion volumes that grow with disease."""
    y = (rng.uniform(size=n) < 0.7).astype(int)
    severity = np.where(y == 1, rng.uniform(0.5, 3.0, n), rng.uniform(-1.0, 0.8, n))
    prob = _logistic(4.0 * (severity - 0.5 + rng.normal(0, 0.8, n)))
    lesion_ml = np.exp(3.0 * severity + rng.normal(0, 1.0, n))
    true = np.clip(np.where(y == 1, severity / 3.5, 0.0), 0, 1)
    raw = true**1.6  # measured involvement reads low at the top
    evidence = {"lesion_ml": lesion_ml, "focus_ml": 0.6 * lesion_ml, "involvement": raw, "involvement_true": true}
    return y, prob, evidence


def test_fitted_rules_lower_the_log_loss_on_held_out_studies() -> None:
    rng = np.random.default_rng(2)
    y, prob, evidence = _evidence(rng, 48)
    decision = fit_decision("combined", y, prob, evidence)
    assert decision["rule"] == "combined" and set(decision["rules"]) == set(RULES)
    assert decision["fitted_on"] == {"n": 48, "n_positive": int(y.sum()), "n_with_mask": 48}
    assert json.loads(json.dumps(decision)) == decision  # JSON-able, as the record stores it
    held_y, held_prob, held_evidence = _evidence(rng, 2000)
    head = log_loss(held_y, decide(decision["rules"]["classifier"], held_prob, held_evidence))
    for rule in ("lesion", "combined"):
        fit = decision["rules"][rule]
        assert fit["features"] == list(RULES[rule]) and fit["threshold"] == 0.5
        assert log_loss(held_y, decide(fit, held_prob, held_evidence)) < head
    with pytest.raises(ValueError, match="lesion output"):
        fit_decision("lesion", y, prob, None)
    assert fit_decision("classifier", y, prob, None)["involvement"] is None


def test_involvement_calibration_is_monotone_and_reduces_the_error() -> None:
    rng = np.random.default_rng(3)
    _, _, evidence = _evidence(rng, 48)
    calibration = fit_monotone(evidence["involvement"], evidence["involvement_true"])
    assert calibration["raw"][0] == 0.0 and calibration["raw"][-1] == 1.0
    assert np.all(np.diff(calibration["raw"]) >= 0) and np.all(np.diff(calibration["true"]) >= 0)
    grid = calibrate_involvement(calibration, np.linspace(0, 1, 201))
    assert np.all(np.diff(grid) >= 0) and grid.min() >= 0.0 and grid.max() <= 1.0
    _, _, held = _evidence(rng, 2000)
    before = np.abs(held["involvement"] - held["involvement_true"]).mean()
    after = np.abs(calibrate_involvement(calibration, held["involvement"]) - held["involvement_true"]).mean()
    assert after < 0.5 * before
    assert calibrate_involvement(None, 0.3) == pytest.approx(0.3)  # no calibration: as measured
    # tied measured values are pooled into one knot
    assert fit_monotone([0.2, 0.2, 0.4], [0.1, 0.3, 0.5]) == {"raw": [0.0, 0.2, 0.4, 1.0], "true": [0.0, 0.2, 0.5, 1.0]}


class LesionScorer(nn.Module):
    """Multi-task logits of a ``(B, 1, 4, 4, 2)`` batch: class ``(-m, m)`` of the mean, lesion ``8 (x - 0.5)``;
    with ``lesion=False`` the class logits alone (a classifier)."""

    def __init__(self, lesion: bool = True) -> None:
        super().__init__()
        self.lesion = lesion

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        score = 2.0 * x.mean(dim=(1, 2, 3, 4))
        logits = torch.stack([-score, score], dim=1)
        return {"pred": logits, "lesion": 8.0 * (x - 0.5)} if self.lesion else logits


LABELS = [0, 0, 0, 1, 1, 1, 1]
LESION_VOXELS = [0, 1, 3, 2, 6, 9, 12]


def _validate(network: nn.Module, handlers: list) -> list[dict]:
    """One validation epoch of a MONAI evaluator with the bundle's postprocessing over 7 studies of 2x2x4 mm
    voxels whose lesion voxels (value 1) number :data:`LESION_VOXELS`; returns the items."""
    affine = torch.diag(torch.tensor([2.0, 2.0, 4.0, 1.0]))
    data = []
    for n, y in zip(LESION_VOXELS, LABELS):
        image = torch.zeros(1, 4, 4, 2)
        image.view(-1)[:n] = 1.0
        data.append(
            {
                "image": MetaTensor(image, affine=affine),
                "lung": MetaTensor(torch.ones(1, 4, 4, 2, dtype=torch.uint8), affine=affine),
                "mask": MetaTensor(image.to(torch.uint8), affine=affine),
                "has_mask": torch.tensor(1.0),
                "label": torch.tensor([y]),
            }
        )
    post = [SplitOutputsd(), Activationsd("pred", softmax=True)]
    post += [Activationsd("lesion", sigmoid=True, allow_missing_keys=True)]
    post += [Involvementd(), Decided(None), AsDiscreted("label", to_onehot=2)]
    SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=3),
        network=network,
        postprocessing=Compose(post),
        key_val_metric={"val_auc": ROCAUC(output_transform=from_engine(["pred", "label"]))},
        val_handlers=handlers,
    ).run(global_epoch=1)
    return data


def test_handler_fits_before_the_saver_and_the_threshold_uses_the_decided_p(tmp_path) -> None:
    """In a MONAI evaluator: the record's decision is fitted at the best epoch; threshold.json is chosen on its P."""
    record = ChainRecord("chestnet", {})
    fitter = DecisionFitter(record, rule="lesion", threshold_method="youden")
    data = _validate(LesionScorer(), [fitter, ThresholdSelector(tmp_path, method="youden", decision=fitter)])
    decision = record.decision
    assert decision is not None and decision["rule"] == "lesion" and decision["fitted_on"]["epoch"] == 1
    assert record.state_dict()["decision"] == decision
    lesion_ml = np.array(LESION_VOXELS) * 0.016  # voxels of 2 x 2 x 4 mm
    evidence = {"lesion_ml": lesion_ml, "focus_ml": lesion_ml}
    prob = torch.softmax(torch.stack([LesionScorer()(d["image"][None])["pred"][0] for d in data]), 1)[:, 1].numpy()
    decided = decide(decision["rules"]["lesion"], prob, evidence)
    stored = read_threshold(tmp_path)
    assert stored["threshold"] == pytest.approx(choose_threshold(LABELS, decided, "youden")["threshold"])
    assert stored["threshold"] == pytest.approx(decision["rules"]["lesion"]["threshold"])


def test_a_classifier_network_decides_by_its_head() -> None:
    record = ChainRecord("chestnet_cls", {})
    _validate(LesionScorer(lesion=False), [DecisionFitter(record, rule="classifier")])
    assert set(record.decision["rules"]) == {"classifier"} and record.decision["involvement"] is None
    with pytest.raises(ValueError, match="needs a network with a lesion output"):
        _validate(LesionScorer(lesion=False), [DecisionFitter(ChainRecord("chestnet_cls", {}), rule="lesion")])
    with pytest.raises(ValueError, match="decision rule must be one of"):
        DecisionFitter(record, rule="vote")


@pytest.mark.slow
def test_training_saves_the_decision_with_the_weights(trained_bundle, tiny_cohort, tmp_path) -> None:
    """The tiny bundle run: the record read from model.pt holds the decision fitted at the epoch threshold.json
    names; evaluating it, each row's P(pneumonia) is that rule applied to the row's own evidence."""
    record = read_record(trained_bundle / "models" / "model.pt")
    decision = record["decision"]
    assert decision["rule"] == "lesion" and set(decision["rules"]) == set(RULES)  # train.json's default
    assert decision["fitted_on"]["epoch"] == read_threshold(trained_bundle / "models")["epoch"]
    for fit in decision["rules"].values():
        assert all(math.isfinite(c) for c in [*fit["coef"], fit["intercept"]])
    run_evaluation(trained_bundle, tiny_cohort, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    evidence = {k: np.array([float(r[k]) for r in rows]) for k in ("lesion_ml", "focus_ml")}
    prob = np.array([float(r["prob_classifier"]) for r in rows])
    expected = decide(decision["rules"][decision["rule"]], prob, evidence)
    np.testing.assert_allclose([float(r["prob_pneumonia"]) for r in rows], expected, atol=1e-5)
    raw = np.array([float(r["involvement_raw"]) for r in rows])
    calibrated = calibrate_involvement(decision["involvement"], raw)
    np.testing.assert_allclose([float(r["involvement"]) for r in rows], calibrated, atol=1e-4)
