"""Model selection breaks AUC ties by loss; the epoch-level schedule does not depend on the cohort's size."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from ignite.engine import Engine
from ignite.metrics import Loss
from monai.handlers import ROCAUC

from pipeline.engine.selection import TIE_WEIGHT, InvolvementError, lr_schedule, selection_metric, selection_score


def test_ties_in_auc_go_to_the_lower_loss_and_auc_still_comes_first():
    assert selection_score(1.0, 0.05) > selection_score(1.0, 0.30)
    assert selection_score(0.999, 0.0) < selection_score(1.0, 10.0)
    assert 0 <= selection_score(1.0, 0.0) - selection_score(1.0, 1e9) <= TIE_WEIGHT


def test_selection_metric_on_an_engine():
    logits = torch.tensor([[2.0, -2.0], [-1.0, 1.0], [0.5, -0.5], [-3.0, 3.0]])
    labels = torch.tensor([0, 1, 0, 1])

    def step(engine, i):
        probs = torch.softmax(logits[i : i + 1], 1)
        onehot = torch.nn.functional.one_hot(labels[i : i + 1], 2)
        return {"pred": probs, "label": onehot, "logits": logits[i : i + 1], "y": labels[i : i + 1]}

    engine = Engine(step)
    auc = ROCAUC(output_transform=lambda o: (o["pred"], o["label"]))
    loss = Loss(torch.nn.CrossEntropyLoss(), output_transform=lambda o: (o["logits"], o["y"]))
    selection_metric(auc, loss).attach(engine, "val_score")
    engine.run(range(4))
    expected_loss = float(torch.nn.functional.cross_entropy(logits, labels))
    assert engine.state.metrics["val_score"] == pytest.approx(selection_score(1.0, expected_loss))


@pytest.mark.parametrize("epochs", [5, 20])
def test_cosine_schedule_warms_up_then_decays_per_epoch(epochs):
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = lr_schedule("cosine", optimizer, epochs=epochs, warmup_epochs=2)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] < rates[2] == pytest.approx(1e-3, rel=0.05)
    assert all(a >= b for a, b in itertools.pairwise(rates[2:])) and rates[-1] < 0.3e-3


def test_tutorial_schedule_and_unknown_names():
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-4)
    scheduler = lr_schedule("tutorial", optimizer, epochs=10, decay_steps=30, decay_rate=0.96)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.96e-4)
    with pytest.raises(ValueError, match="cosine"):
        lr_schedule("plateau", optimizer, epochs=10)


def test_multitask_selection_weighs_the_involvement_error():
    assert selection_score(0.98, 0.2, involvement_error=0.05) == pytest.approx(
        (0.98 + 0.95) / 2 - TIE_WEIGHT * 0.2 / 1.2
    )
    # a later epoch of equal AUC whose lesion map is closer wins; no known involvement: AUC alone
    assert selection_score(0.97, 0.3, 0.04) > selection_score(0.97, 0.2, 0.10)
    assert selection_score(0.97, 0.3, float("nan")) == selection_score(0.97, 0.3) == selection_score(0.97, 0.3, None)


def test_involvement_error_skips_unknown_truth():
    metric = InvolvementError()
    metric.reset()
    assert math.isnan(metric.compute())
    metric.update(
        [{"involvement": 0.3, "involvement_true": 0.1}, {"involvement": 0.5, "involvement_true": float("nan")}]
    )
    metric.update([{"involvement": 0.0, "involvement_true": 0.0}, {"pred": 1}])
    assert metric.compute() == pytest.approx(0.1)
